"""The predictions database named by an Airflow connection: connection fields -> SQLAlchemy URL.

A DAG run names its database by connection id (``database_conn_id``), never by a URL with a
password in its conf or params: the password stays in Airflow's secrets (connection table,
``AIRFLOW_CONN_*`` env, a secrets backend). The connection's extras are honoured: for
PostgreSQL the libpq parameters in :data:`POSTGRES_EXTRAS` (``sslmode``, ``sslrootcert``,
``connect_timeout``, ``application_name``, ``options``, ...) go into the URL's query, which
psycopg passes to libpq. An unknown extra is refused rather than dropped: a misspelt
``sslmod`` silently ignored would connect without TLS.

Example:
    >>> url = url_from_connection("postgres", host="db", schema="maskjob", login="maskjob",
    ...                           password="s3cret", port=5432, extra={"sslmode": "require"})
    >>> url.render_as_string(hide_password=True)
    'postgresql+psycopg://maskjob:***@db:5432/maskjob?sslmode=require'
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

from maskjob.config import register_secrets
from maskjob.errors import MaskjobError
from maskjob.storage.database import safe_url

__all__ = [
    "POSTGRES_EXTRAS",
    "POSTGRES_SECRET_EXTRAS",
    "SSLMODES",
    "check_no_password_url",
    "url_from_airflow_connection",
    "url_from_connection",
]

POSTGRES_TYPES = frozenset({"postgres", "postgresql"})
# libpq connection parameters a connection's extras may set (psycopg passes the URL query on).
POSTGRES_EXTRAS = frozenset({
    "sslmode", "sslrootcert", "sslcert", "sslkey", "sslpassword", "sslcrl", "sslcompression",
    "sslnegotiation", "gssencmode", "channel_binding", "require_auth", "target_session_attrs",
    "connect_timeout", "application_name", "options", "client_encoding",
    "keepalives", "keepalives_idle", "keepalives_interval", "keepalives_count", "tcp_user_timeout",
})
# Extras whose values are secrets: never shown, registered for log redaction.
POSTGRES_SECRET_EXTRAS = frozenset({"sslpassword"})
SSLMODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")
# Query keys that carry a password when a URL is given directly.
_PASSWORD_KEYS = frozenset({"password", "sslpassword"})
_CONN_HELP = "name the database by an Airflow connection id (database_conn_id) instead"


def _extras(extra: Mapping[str, Any] | str | None) -> dict[str, Any]:
    """The extras as a dict; a JSON string is parsed (never shown: it may hold secrets)."""
    if extra is None or extra == "":
        return {}
    if isinstance(extra, str):
        try:
            extra = json.loads(extra)
        except json.JSONDecodeError:
            raise MaskjobError("the connection's extra is not valid JSON (not shown, it may hold secrets); "
                               'write it as a JSON object, e.g. {"sslmode": "require"}.') from None
    if not isinstance(extra, Mapping):
        raise MaskjobError('the connection\'s extra must be a JSON object, e.g. {"sslmode": "require"}.')
    return dict(extra)


def _postgres_query(extras: dict[str, Any]) -> dict[str, str]:
    """Extras checked against :data:`POSTGRES_EXTRAS` as URL query values (text)."""
    unknown = sorted(set(extras) - POSTGRES_EXTRAS)
    if unknown:
        raise MaskjobError(f"the connection has extras maskjob does not know: {', '.join(map(repr, unknown))}; "
                           f"remove them or use libpq parameters: {', '.join(sorted(POSTGRES_EXTRAS))}.")
    query: dict[str, str] = {}
    for key, value in sorted(extras.items()):
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise MaskjobError(f"the connection's extra {key!r} must be a string or a number.")
        query[key] = str(value)
    register_secrets(query[k] for k in POSTGRES_SECRET_EXTRAS if k in query)
    if "sslmode" in query and query["sslmode"] not in SSLMODES:
        raise MaskjobError(f"the connection's extra sslmode={query['sslmode']!r} is not one of "
                           f"{', '.join(SSLMODES)}.")
    return query


def url_from_connection(
    conn_type: str | None,
    *,
    host: str | None = None,
    schema: str | None = None,
    login: str | None = None,
    password: str | None = None,
    port: int | str | None = None,
    extra: Mapping[str, Any] | str | None = None,
) -> URL:
    """A SQLAlchemy URL from an Airflow connection's fields.

    Args:
        conn_type: ``postgres`` (or ``postgresql``) or ``sqlite``.
        host, schema, login, password, port: the connection's fields. For ``sqlite`` the
            database file is ``host`` (as Airflow's SqliteHook reads it), else ``schema``.
        extra: the connection's extras (dict or JSON text). PostgreSQL: libpq parameters
            from :data:`POSTGRES_EXTRAS`; sqlite: none.

    Returns:
        The URL (``postgresql+psycopg`` or ``sqlite``); render it with
        ``render_as_string(hide_password=False)`` only to hand it to an engine.

    Raises:
        MaskjobError: unsupported type, missing file path, unknown or malformed extras.
    """
    kind = (conn_type or "").lower()
    extras = _extras(extra)
    if kind in POSTGRES_TYPES:
        if password:
            register_secrets([password])
        try:
            port_number = int(port) if port not in (None, "") else None
        except (TypeError, ValueError):
            raise MaskjobError(f"the connection's port {port!r} is not a number.") from None
        return URL.create("postgresql+psycopg", username=login or None, password=password or None,
                          host=host or None, port=port_number, database=schema or None,
                          query=_postgres_query(extras))
    if kind == "sqlite":
        path = host or schema
        if not path:
            raise MaskjobError("the sqlite connection names no database file; set its host to the database file path.")
        if extras:
            raise MaskjobError(f"a sqlite connection takes no extras (got {', '.join(map(repr, sorted(extras)))}); "
                               "remove them.")
        return URL.create("sqlite", database=str(Path(path).expanduser().resolve()))
    raise MaskjobError(f"connection type {conn_type!r} is not supported for the predictions database; "
                       "use a postgres or sqlite connection.")


def url_from_airflow_connection(conn: Any) -> URL:
    """:func:`url_from_connection` for an Airflow ``Connection`` object (``airflow.sdk`` or models)."""
    return url_from_connection(conn.conn_type, host=conn.host, schema=conn.schema, login=conn.login,
                               password=conn.password, port=conn.port, extra=conn.extra_dejson)


def check_no_password_url(url: str | URL | None) -> None:
    """Refuse a ``database_url`` (run conf, DAG param) that carries a password.

    Run conf and params are stored in Airflow's metadata and shown in its UI; a password
    there leaks. A URL without one (``sqlite:///...``, PostgreSQL with peer or certificate
    authentication, a password in ``~/.pgpass``) is fine; an unparseable one is left to
    :func:`maskjob.storage.database.parse_url`, which explains it.

    Raises:
        MaskjobError: the URL has a password (or a ``password``/``sslpassword`` query value).
    """
    if not url:
        return
    try:
        parsed = url if isinstance(url, URL) else make_url(url)
    except (ArgumentError, TypeError, ValueError, AttributeError):
        return
    has_secret = bool(parsed.password) or bool(_PASSWORD_KEYS & {k.lower() for k in parsed.query})
    if parsed.host and "@" in parsed.host:  # an unencoded @ in the password: part of it parsed as host
        has_secret = True
    if has_secret:
        register_secrets(s for s in [str(parsed.password or "")] if len(s) >= 3)
        raise MaskjobError(f"database_url {safe_url(parsed)} carries a password, which the run's conf and "
                           f"params would store and show; {_CONN_HELP}.")
