"""The predictions database named by an Airflow connection: fields and extras -> URL, extras
honoured by a real PostgreSQL server, and a ``database_url`` carrying a password refused."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest
import sqlalchemy as sa

from maskjob.config import redact
from maskjob.errors import MaskjobError
from maskjob.storage import database
from maskjob.storage.connections import (
    POSTGRES_EXTRAS,
    check_no_password_url,
    url_from_airflow_connection,
    url_from_connection,
)

pytestmark = pytest.mark.timeout(120)

PASSWORD = "Sw0rdf1sh-pw"


def test_postgres_fields_and_extras_become_the_url_and_its_query():
    url = url_from_connection("postgres", host="db.example", schema="maskjob", login="alice", password=PASSWORD,
                              port="6432", extra={"sslmode": "verify-full", "sslrootcert": "/etc/ca.pem",
                                                  "connect_timeout": 7, "application_name": "maskjob"})
    assert url.drivername == "postgresql+psycopg"
    assert (url.host, url.port, url.database, url.username, url.password) == (
        "db.example", 6432, "maskjob", "alice", PASSWORD)
    assert dict(url.query) == {"sslmode": "verify-full", "sslrootcert": "/etc/ca.pem", "connect_timeout": "7",
                               "application_name": "maskjob"}
    assert PASSWORD not in redact(f"connecting with {PASSWORD}")  # registered for log redaction
    bare = url_from_connection("postgresql", host="db", schema="m", extra="")
    assert bare.render_as_string() == "postgresql+psycopg://db/m"


def test_extras_given_as_json_text_like_airflow_stores_them():
    url = url_from_connection("postgres", host="db", schema="m", extra='{"sslmode": "require"}')
    assert dict(url.query) == {"sslmode": "require"}


@pytest.mark.parametrize(("extra", "message"), [
    ({"sslmod": "require"}, "extras maskjob does not know: 'sslmod'"),
    ({"cursor": "dictcursor"}, "extras maskjob does not know: 'cursor'"),
    ({"sslmode": "sometimes"}, "sslmode='sometimes' is not one of disable"),
    ({"connect_timeout": True}, "'connect_timeout' must be a string or a number"),
    ({"options": ["-c", "x"]}, "'options' must be a string or a number"),
    ('{"sslpassword": "Sw0rdf1sh-pw"', "not valid JSON"),
    ('["sslmode"]', "must be a JSON object"),
])
def test_unknown_or_malformed_extras_are_refused_with_what_to_do(extra, message):
    with pytest.raises(MaskjobError, match=message) as caught:
        url_from_connection("postgres", host="db", schema="m", extra=extra)
    assert PASSWORD not in str(caught.value)


def test_the_allowed_extras_are_libpq_parameters_psycopg_accepts():
    from psycopg import conninfo

    # libpq rejects an unknown keyword: every name we allow must parse as a conninfo key.
    text = " ".join(f"{key}=1" for key in sorted(POSTGRES_EXTRAS))
    assert set(conninfo.conninfo_to_dict(text)) == POSTGRES_EXTRAS


def test_sqlite_connection_is_its_file_path(tmp_path: Path):
    by_host = url_from_connection("sqlite", host=str(tmp_path / "m.db"))
    by_schema = url_from_connection("sqlite", schema=str(tmp_path / "m.db"))
    assert by_host == by_schema and by_host.render_as_string() == f"sqlite:///{tmp_path / 'm.db'}"
    with pytest.raises(MaskjobError, match="names no database file"):
        url_from_connection("sqlite")
    with pytest.raises(MaskjobError, match="takes no extras"):
        url_from_connection("sqlite", host="m.db", extra={"sslmode": "disable"})


@pytest.mark.parametrize("conn_type", ["mysql", "http", None])
def test_unsupported_connection_types_are_refused(conn_type):
    with pytest.raises(MaskjobError, match="use a postgres or sqlite connection"):
        url_from_connection(conn_type, host="db", schema="m")


def test_bad_port_is_refused():
    with pytest.raises(MaskjobError, match="port 'fivefour' is not a number"):
        url_from_connection("postgres", host="db", port="fivefour")


def test_an_airflow_connection_from_the_env_json_form():
    from airflow.models.connection import Connection

    conn = Connection.from_json(json.dumps({
        "conn_type": "postgres", "host": "db", "schema": "maskjob", "login": "alice", "password": PASSWORD,
        "port": 5432, "extra": {"sslmode": "disable", "application_name": "maskjob-dag"},
    }), conn_id="maskjob_db")
    url = url_from_airflow_connection(conn)
    assert url.password == PASSWORD and dict(url.query) == {"sslmode": "disable", "application_name": "maskjob-dag"}


@pytest.mark.parametrize("url", [
    f"postgresql+psycopg://alice:{PASSWORD}@db/maskjob",
    f"postgresql://alice:{PASSWORD}@db:5432/maskjob?sslmode=require",
    f"postgresql://alice@db/maskjob?password={PASSWORD}",
    f"postgresql://alice@db/maskjob?sslpassword={PASSWORD}",
    "postgresql://alice:Sw0rd@f1sh@db/maskjob",
])
def test_a_database_url_with_a_password_is_refused(url):
    with pytest.raises(MaskjobError, match=r"by an Airflow connection id \(database_conn_id\)") as caught:
        check_no_password_url(url)
    assert "Sw0rd" not in str(caught.value) and "f1sh" not in str(caught.value)


@pytest.mark.parametrize("url", [
    None, "", "sqlite:///data/maskjob.db", "postgresql+psycopg://alice@db/maskjob?sslmode=verify-full",
    "postgresql:///maskjob?host=/var/run/postgresql", "not a url",
])
def test_a_database_url_without_a_password_passes(url):
    check_no_password_url(url)


@pytest.mark.postgres
def test_extras_reach_a_real_server(pg_url: str):
    """``application_name`` shows in ``pg_stat_activity``, ``options`` sets a session
    setting, and ``sslmode=require`` against a server without TLS fails: libpq got them."""
    base = sa.make_url(pg_url)
    role = f"maskjob_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(pg_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        # DDL takes no bound parameters; both names are this test's constants.
        conn.execute(sa.text(f"CREATE ROLE \"{role}\" LOGIN PASSWORD '{PASSWORD}'"))
    app_name = f"maskjob-{uuid.uuid4().hex[:8]}"

    def connect(**extra: str) -> sa.Engine:
        return database.make_engine(url_from_connection(
            "postgres", host=base.host, port=base.port, schema=base.database, login=role, password=PASSWORD,
            extra={"sslmode": "disable", "application_name": app_name, **extra}))

    engine = connect(options="-c statement_timeout=4321")
    try:
        with engine.connect() as conn:
            seen = conn.execute(sa.text(
                "SELECT application_name, usename FROM pg_stat_activity WHERE pid = pg_backend_pid()")).one()
            timeout = conn.execute(sa.text("SHOW statement_timeout")).scalar_one()
        assert tuple(seen) == (app_name, role)
        assert timeout == "4321ms"
    finally:
        engine.dispose()
    refusing = connect(sslmode="require", connect_timeout="5")
    try:
        with pytest.raises(sa.exc.OperationalError, match="server does not support SSL"):
            with refusing.connect():
                pass
    finally:
        refusing.dispose()
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP OWNED BY "{role}"'))
            conn.execute(sa.text(f'DROP ROLE "{role}"'))
        admin.dispose()
