"""No database password or connection extra ever reaches a message, a log line or the CLI's output."""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from maskjob.config import SecretFilter, load_settings, redact
from maskjob.errors import MaskjobError
from maskjob.storage import database
from tests.fixtures.paths import REPO_ROOT

PASSWORD = "Hunter2-s3cret"
EXTRA = "Xtra-k3y-value"
SECRETS = (PASSWORD, EXTRA, "Hunter2", "s3cret", "k3y")

# URLs that cannot be parsed or used, each holding the password (and some a secret extra).
BAD_URLS = [
    f"not a url {PASSWORD}",
    f"postgresql://alice:{PASSWORD}@db.example:notaport/maskjob",
    f"postgresql://alice:{PASSWORD}@[::1/maskjob",
    f"postgresql://alice:{PASSWORD}@@db.example/maskjob",
    "postgresql://alice:Hunter2@s3cret@db.example/maskjob",  # unencoded @ in the password
    f"mysql://alice:{PASSWORD}@db.example/maskjob?ssl_key={EXTRA}",
    f"postgresql+nosuchdriver://alice:{PASSWORD}@db.example/maskjob",
    f"://alice:{PASSWORD}@",
]
# A well-formed URL to a port where nothing listens.
UNREACHABLE = f"postgresql+psycopg://alice:{PASSWORD}@127.0.0.1:1/maskjob?sslpassword={EXTRA}&connect_timeout=5"
UNREACHABLE_URLS = [
    UNREACHABLE,
    f"postgresql://alice:{PASSWORD}@127.0.0.1:1/maskjob",
    f"postgresql+psycopg://alice:{PASSWORD}@127.0.0.1:99999999/maskjob",
    f"postgresql+psycopg://alice:{PASSWORD}@127.0.0.1:1/maskjob?bogus_option={EXTRA}",
]

ACTIONS = {
    "make_engine": database.make_engine,
    "current": database.current,
    "upgrade": database.upgrade,
    "downgrade": lambda url: database.downgrade(url, "base"),
    "open_database": database.open_database,
}


def assert_no_secret(text: str) -> None:
    for secret in SECRETS:
        assert secret not in text, f"{secret!r} leaked in: {text}"


@pytest.fixture
def all_logs(caplog):
    """Every record at DEBUG, through the filter the CLI's console handler carries."""
    caplog.set_level(logging.DEBUG)
    for name in ("maskjob", "sqlalchemy", "alembic", "psycopg"):
        caplog.set_level(logging.DEBUG, logger=name)
    secret_filter = SecretFilter()
    caplog.handler.addFilter(secret_filter)
    yield caplog
    caplog.handler.removeFilter(secret_filter)


def _error_of(action, url: str) -> MaskjobError:
    with pytest.raises(MaskjobError) as info:
        action(url)
    assert info.value.__cause__ is None  # nothing (e.g. SQLAlchemy's own error) chained to print
    return info.value


@pytest.mark.parametrize("url", BAD_URLS)
@pytest.mark.parametrize("action", list(ACTIONS))
def test_bad_url_never_shows_the_password(url, action, all_logs):
    message = str(_error_of(ACTIONS[action], url))
    assert "database URL" in message
    assert_no_secret(message)
    assert_no_secret(all_logs.text)


def test_bad_url_message_says_what_to_do():
    message = str(_error_of(database.make_engine, BAD_URLS[1]))
    assert "cannot be parsed" in message and "postgresql+psycopg://user:password@host:5432/dbname" in message
    assert message.startswith("bad database URL <unparseable postgresql:// URL, not shown>")
    assert "unencoded" not in message
    at_message = str(_error_of(database.make_engine, BAD_URLS[4]))
    assert "its host contains '@'" in at_message and "@ as %40" in at_message


@pytest.mark.parametrize("url", UNREACHABLE_URLS)
@pytest.mark.parametrize("action", ["current", "upgrade", "downgrade", "open_database"])
def test_unreachable_postgres_never_shows_the_password(url, action, all_logs):
    message = str(_error_of(ACTIONS[action], url))
    assert re.match(r"cannot (open|upgrade|downgrade) database postgresql(\+psycopg)?://alice:\*\*\*@127\.0\.0\.1:",
                    message), message
    assert_no_secret(message)
    assert_no_secret(all_logs.text)


def test_unreachable_message_names_the_server_and_masks_the_extras():
    message = str(_error_of(database.current, UNREACHABLE))
    assert "connect_timeout=***&sslpassword=***" in message and "port 1 failed" in message
    assert "Check the server is running" in message


@pytest.mark.postgres
def test_real_server_errors_never_show_the_password(pg_server, all_logs):
    base = pg_server.replace("postgres@", f"postgres:{PASSWORD}@")
    for url in (f"{base}/no_such_database", f"{base}/postgres?options=-c%20statement_timeout%3D{EXTRA}"):
        for action in ("current", "upgrade", "open_database"):
            message = str(_error_of(ACTIONS[action], url))
            assert message.startswith("cannot open database postgresql+psycopg://postgres:***@127.0.0.1:")
            assert_no_secret(message)
    assert_no_secret(all_logs.text)


def test_successful_migration_logs_the_url_without_extras(tmp_path, all_logs):
    url = f"sqlite:///{tmp_path / 'ok.db'}"
    assert database.upgrade(url) == database.current(url)
    assert f"database {url} is at revision" in all_logs.text
    assert database.safe_url(f"{url}?secret_extra={EXTRA}") == f"{url}?secret_extra=***"


@pytest.mark.parametrize(("url", "shown"), [
    (f"postgresql+psycopg://alice:{PASSWORD}@db:5432/mj", "postgresql+psycopg://alice:***@db:5432/mj"),
    (f"postgresql://alice:{PASSWORD}@db/mj?sslpassword={EXTRA}&sslmode=require",
     "postgresql://alice:***@db/mj?sslmode=***&sslpassword=***"),
    (f"postgresql://:{PASSWORD}@db/mj", "postgresql://:***@db/mj"),
    ("postgresql://alice:Hunter2@s3cret@db/mj", "postgresql://alice:***@db/mj"),
    ("postgresql://alice:Hunter2%40s3cret@db/mj", "postgresql://alice:***@db/mj"),
    ("sqlite:////var/maskjob.db", "sqlite:////var/maskjob.db"),
    (f"postgresql://alice:{PASSWORD}@db:port/mj", "<unparseable postgresql:// URL, not shown>"),
    (f"garbage {PASSWORD}", "<unparseable URL, not shown>"),
])
def test_safe_url(url, shown):
    assert database.safe_url(url) == shown


def test_scrub_removes_password_and_extras_from_driver_text():
    url = f"postgresql://alice:{PASSWORD}@db/mj?sslpassword={EXTRA}"
    text = f"password={PASSWORD} sslpassword={EXTRA} Hunter2%2Ds3cret"
    assert_no_secret(database.scrub(text, url).replace("Hunter2%2Ds3cret", ""))
    assert database.scrub("host=db user=alice", url) == "host=db user=alice"
    options = f"postgresql://alice@db/mj?options=-c%20statement_timeout%3D{EXTRA}"
    assert database.scrub(f'invalid value for parameter "statement_timeout": "{EXTRA}"', options) == \
        'invalid value for parameter "***": "***"'  # a part of an extra echoed by the server
    raw = "postgresql://alice:Hunter2%2Ds3cret@db/mj"
    assert database.scrub("dsn has Hunter2%2Ds3cret and Hunter2-s3cret", raw) == "dsn has *** and ***"


def test_secret_filter_redacts_messages_arguments_and_tracebacks(tmp_path):
    database.parse_url(f"postgresql://alice:{PASSWORD}@db/mj?options=-c%20x%3D{EXTRA}")  # registers both
    assert redact(f"a {PASSWORD} b {EXTRA}") == "a *** b ***"
    stream = tmp_path / "log.txt"
    handler = logging.FileHandler(stream)
    handler.addFilter(SecretFilter())
    log = logging.getLogger("tests.secrets")
    log.addHandler(handler)
    try:
        log.warning("server said %s", f'bad value "{EXTRA}"')
        try:
            raise RuntimeError(f"dsn password={PASSWORD}")
        except RuntimeError:
            log.exception("connect failed for %s", PASSWORD)
    finally:
        log.removeHandler(handler)
        handler.close()
    text = stream.read_text()
    assert "server said bad value" in text and "RuntimeError: dsn password=***" in text
    assert_no_secret(text)


def test_settings_error_for_a_non_string_url_shows_no_value(tmp_path):
    cfg = tmp_path / "m.toml"
    cfg.write_text(f"database_url = {{ url = 'postgresql://alice:{PASSWORD}@db/mj' }}\n")
    with pytest.raises(MaskjobError, match="database_url") as info:
        load_settings(cfg, environ={})
    assert_no_secret(str(info.value))


# --- through the command line --------------------------------------------------------------

def _cli(*argv: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("MASKJOB_")}
    environ.update(env or {})
    return subprocess.run([sys.executable, "-m", "maskjob", *argv], capture_output=True, text=True,
                          timeout=120, env=environ, cwd=cwd or REPO_ROOT)


@pytest.mark.parametrize("url", [BAD_URLS[1], BAD_URLS[4], UNREACHABLE])
@pytest.mark.parametrize("command", [["db", "current"], ["-vv", "db", "upgrade"], ["models"]])
def test_cli_never_prints_the_password(url, command, tmp_path):
    done = _cli(*command, "--database-url", url, cwd=tmp_path)
    output = done.stdout + done.stderr
    assert done.returncode == 2, output
    assert "maskjob: error:" in done.stderr and "Traceback" not in output
    assert_no_secret(output)


def test_cli_url_from_env_and_config_file(tmp_path):
    done = _cli("db", "current", env={"MASKJOB_DATABASE_URL": UNREACHABLE}, cwd=tmp_path)
    assert done.returncode == 2 and "cannot open database" in done.stderr
    assert_no_secret(done.stdout + done.stderr)
    cfg = tmp_path / "maskjob.toml"
    cfg.write_text(f"database_url = '{BAD_URLS[1]}'\n")
    done = _cli("-v", "db", "current", cwd=tmp_path)
    assert done.returncode == 2 and "bad database URL" in done.stderr
    assert_no_secret(done.stdout + done.stderr)
