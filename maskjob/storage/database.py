"""Engines, sessions and Alembic migrations for SQLite and PostgreSQL.

Example:
    >>> upgrade("sqlite:///data/maskjob.db")           # doctest: +SKIP
    '0002'
    >>> with database("sqlite:///data/maskjob.db") as engine, session(engine) as s:  # doctest: +SKIP
    ...     s.scalars(select(ModelVersion)).all()
"""

from __future__ import annotations

import logging
import re
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import URL, Connection, Engine
from sqlalchemy.orm import Session, sessionmaker

from maskjob.config import register_secrets
from maskjob.errors import MaskjobError
from maskjob.resources import migrations_dir

__all__ = [
    "database", "engine_for", "make_engine", "open_database", "session", "upgrade", "downgrade", "current",
    "head_revision", "parse_url", "safe_url", "scrub",
]

logger = logging.getLogger(__name__)


SQLITE_BUSY_TIMEOUT_MS = 30_000


URL_HELP = ("Use sqlite:///path/to/maskjob.db or postgresql+psycopg://user:password@host:5432/dbname "
            "(setting database_url; URL-encode special characters in the password, e.g. @ as %40).")
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]{0,40}://")
_MASK = "***"
_EXTRA_PARTS = re.compile(r"[\s=,;:&]+")


def _make_url(url: str | URL) -> URL:
    """``sa.make_url`` that raises only ``ValueError`` (bad port, bad syntax, wrong type)."""
    try:
        return url if isinstance(url, URL) else sa.make_url(url)
    except (sa.exc.ArgumentError, TypeError, ValueError, AttributeError) as exc:
        raise ValueError(type(exc).__name__) from None


def safe_url(url: str | URL) -> str:
    """The URL as text for messages and logs: the password and every query value (connection
    extras such as ``sslpassword``) masked; an unparseable URL shows only its scheme."""
    try:
        parsed = _make_url(url)
    except ValueError:
        scheme = _SCHEME.match(url) if isinstance(url, str) else None
        return f"<unparseable {scheme.group(0) + ' ' if scheme else ''}URL, not shown>"
    if parsed.host and "@" in parsed.host:  # an unencoded @ in the password: part of it parsed as host
        parsed = parsed.set(host=parsed.host.rsplit("@", 1)[1], password=parsed.password or _MASK)
    text = parsed.set(query={}).render_as_string(hide_password=True)
    if parsed.query:
        text += "?" + "&".join(f"{key}={_MASK}" for key in sorted(parsed.query))
    return text


def _secrets(url: str | URL) -> list[str]:
    """The parts of ``url`` that must never be shown: password, query values (raw and parsed)."""
    found: list[str] = []
    try:
        parsed = _make_url(url)
    except ValueError:
        parsed = None
    if parsed is not None:
        if parsed.password:
            found.append(str(parsed.password))
        if parsed.host and "@" in parsed.host:
            found.append(parsed.host.rsplit("@", 1)[0])
        for value in parsed.query.values():
            for text in [value] if isinstance(value, str) else list(value):
                # a server may echo one part of an extra (``options=-c key=VALUE``): each part too
                found += [text, *(part for part in _EXTRA_PARTS.split(text) if len(part) >= 4)]
    if isinstance(url, str):
        match = re.match(r"[^:/]*://[^:/@]*:(.*)@", url)  # the raw (maybe encoded) password
        if match:
            found.append(match.group(1))
    return sorted({s for s in found if s}, key=len, reverse=True)


def scrub(text: str, url: str | URL) -> str:
    """``text`` (e.g. a driver's error message) with every secret of ``url`` replaced by ``***``."""
    for secret in _secrets(url):
        text = text.replace(secret, _MASK)
    return text


def _parse_url(url: str | URL) -> URL:
    # For log handlers with maskjob.config.SecretFilter (shorter strings would redact ordinary words).
    register_secrets(s for s in _secrets(url) if len(s) >= 3)
    try:
        parsed = _make_url(url)
    except ValueError:
        raise MaskjobError(f"bad database URL {safe_url(url)}: it cannot be parsed (the URL is not shown, "
                           f"it may hold a password). {URL_HELP}") from None
    if parsed.host and "@" in parsed.host:
        raise MaskjobError(f"bad database URL {safe_url(parsed)}: its host contains '@'. {URL_HELP}")
    backend = parsed.get_backend_name()
    if backend not in {"sqlite", "postgresql"}:
        raise MaskjobError(f"database URL {safe_url(parsed)} uses {backend}; maskjob supports sqlite and postgresql.")
    if parsed.drivername == "postgresql":
        parsed = parsed.set(drivername="postgresql+psycopg")  # psycopg 3 is the installed driver
    return parsed


def parse_url(url: str | URL) -> URL:
    """``url`` parsed and checked (sqlite or postgresql; ``postgresql://`` gets psycopg 3).

    Raises:
        MaskjobError: unparseable or unsupported URL; the message never shows the password.
    """
    return _parse_url(url)


def _sqlite_on_connect(dbapi_connection: Any, _record: Any) -> None:
    # Let SQLAlchemy's "begin" event issue BEGIN (pysqlite's own handling breaks
    # transactional DDL and lock upgrades).
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA foreign_keys = ON")
    cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
    cursor.execute("PRAGMA journal_mode = WAL")
    cursor.execute("PRAGMA synchronous = NORMAL")
    cursor.close()


def _postgres_on_connect(dbapi_connection: Any, _record: Any) -> None:
    # Session zone UTC (a user's `options` extra stays as it is): a naive time a query binds
    # then means UTC, and timestamptz values and casts to date are UTC.
    with dbapi_connection.cursor() as cursor:
        cursor.execute("SET TIME ZONE 'UTC'")
    dbapi_connection.commit()


def _sqlite_on_begin(conn: Connection) -> None:
    # Take the write lock up front: concurrent shard writers then queue on busy_timeout
    # instead of failing with "database is locked" when a read upgrades to a write.
    conn.exec_driver_sql("BEGIN IMMEDIATE")


def make_engine(url: str | URL) -> Engine:
    """An engine for ``url``; SQLite gets foreign keys, WAL, a busy timeout and its parent dir.

    ``postgresql://`` URLs use the psycopg 3 driver.
    """
    parsed = _parse_url(url)
    try:
        if parsed.get_backend_name() == "sqlite":
            if parsed.database and parsed.database != ":memory:" and not parsed.database.startswith("file:"):
                Path(parsed.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
            engine = sa.create_engine(parsed)
            event.listen(engine, "connect", _sqlite_on_connect)
            event.listen(engine, "begin", _sqlite_on_begin)
            return engine
        engine = sa.create_engine(parsed, pool_pre_ping=True)
        event.listen(engine, "connect", _postgres_on_connect)
        return engine
    except OSError as exc:
        raise MaskjobError(f"cannot create the folder for database {safe_url(parsed)} "
                           f"({exc.strerror or type(exc).__name__}). Check database_url and permissions.") from None
    except (sa.exc.ArgumentError, TypeError, ValueError) as exc:  # unknown driver, bad connect option
        raise MaskjobError(f"cannot use database URL {safe_url(parsed)}: "
                           f"{scrub(_first_line(exc), parsed)}. {URL_HELP}") from None


@contextmanager
def session(engine: Engine) -> Iterator[Session]:
    """A session that commits on success and rolls back on error; objects stay usable after."""
    factory = sessionmaker(engine, expire_on_commit=False)
    with factory() as s, s.begin():
        yield s


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0][:300] if lines else type(exc).__name__


def _unreachable(url: str | URL, exc: Exception) -> MaskjobError:
    """The error for a database that cannot be reached or used; no password or extra in it."""
    detail = scrub(_first_line(getattr(exc, "orig", None) or exc), url)
    return MaskjobError(
        f"cannot open database {safe_url(url)}: {detail}. Check the server is running and "
        "database_url (MASKJOB_DATABASE_URL) is right."
    )


def _alembic_config(connection: Connection | None = None, settings: Any = None) -> Any:
    from alembic.config import Config

    cfg = Config()
    # The migrations ship as package data (maskjob.migrations, alembic/ in the repository).
    cfg.set_main_option("script_location", str(migrations_dir()))
    cfg.attributes["connection"] = connection
    cfg.attributes["settings"] = settings  # site defaults for migration 0004 (None: load them)
    return cfg


# The schema revision this code reads and writes: the newest migration. Kept equal to
# alembic's head by tests/storage/test_db.py, so that opening a database needs neither alembic
# nor the migration files (importing and parsing them is 0.2-0.5 s of every CLI command).
SCHEMA_REVISION = "0007"


def head_revision() -> str:
    """The newest migration this code knows (read from the migration files)."""
    from alembic.script import ScriptDirectory

    head = ScriptDirectory.from_config(_alembic_config()).get_current_head()
    assert head is not None, f"no migrations under {migrations_dir()}"
    return head


def _run_migration(url: str | URL, action: str, rev: str, settings: Any = None) -> str | None:
    from alembic import command
    from alembic.util import CommandError

    try:
        with engine_for(url) as engine, engine.begin() as conn:
            getattr(command, action)(_alembic_config(conn, settings), rev)
    except CommandError as exc:
        raise MaskjobError(f"cannot {action} database {safe_url(url)} to {rev!r}: {scrub(str(exc), url)}. "
                           "Use a revision from `maskjob db current` / alembic/versions, or 'head'/'base'.") from None
    except (sa.exc.OperationalError, sa.exc.InterfaceError) as exc:
        raise _unreachable(url, exc) from None
    except sa.exc.DBAPIError as exc:  # e.g. a bad connection option, or a migration statement refused
        detail = scrub(_first_line(getattr(exc, "orig", None) or exc), url)
        raise MaskjobError(f"cannot {action} database {safe_url(url)}: {detail}. "
                           "Check database_url (MASKJOB_DATABASE_URL) and the database's state.") from None
    return current(url)


def upgrade(url: str | URL, rev: str = "head", *, settings: Any = None) -> str | None:
    """Migrate the database up to ``rev`` (one transaction); returns the new revision.

    ``settings`` gives migration 0004 the site zone and camera defaults (default: loaded
    from ``MASKJOB_*`` and ``maskjob.toml``).
    """
    new = _run_migration(url, "upgrade", rev, settings)
    logger.info("database %s is at revision %s", safe_url(url), new)
    return new


def downgrade(url: str | URL, rev: str) -> str | None:
    """Migrate the database down to ``rev`` (``"base"`` drops everything); returns the new revision."""
    new = _run_migration(url, "downgrade", rev)
    logger.info("database %s is at revision %s", safe_url(url), new)
    return new


def _current(conn: Connection) -> str | None:
    """The revision stamped in ``alembic_version`` (``None``: never migrated), read without
    importing alembic."""
    if not sa.inspect(conn).has_table("alembic_version"):
        return None
    return conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalar()


def current(url: str | URL) -> str | None:
    """The database's migration revision, or ``None`` when it has never been migrated."""
    try:
        with engine_for(url) as engine, engine.connect() as conn:
            return _current(conn)
    except sa.exc.DBAPIError as exc:
        raise _unreachable(url, exc) from None


def open_database(url: str | URL) -> Engine:
    """An engine for a reachable database whose schema is at the code's head revision.

    Raises:
        MaskjobError: unreachable server, or a schema that is missing or out of date
            (the message says to run ``maskjob db upgrade``).
    """
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            rev = _current(conn)
    except sa.exc.DBAPIError as exc:
        engine.dispose()
        raise _unreachable(url, exc) from None
    head = SCHEMA_REVISION
    if rev != head:
        engine.dispose()
        state = "has no maskjob schema" if rev is None else f"is at schema revision {rev}, this maskjob needs {head}"
        raise MaskjobError(f"database {safe_url(url)} {state}. Run `maskjob db upgrade` first.")
    return engine


@contextmanager
def database(url: str | URL) -> Iterator[Engine]:
    """:func:`open_database` for a ``with`` block; the engine's connections close at its end.

    Example:
        >>> with database(settings.database_url) as engine:   # doctest: +SKIP
        ...     champion(engine)
    """
    engine = open_database(url)
    try:
        yield engine
    finally:
        engine.dispose()


@contextmanager
def engine_for(url: str | URL) -> Iterator[Engine]:
    """:func:`make_engine` (no schema check) for a ``with`` block; disposed at its end."""
    engine = make_engine(url)
    try:
        yield engine
    finally:
        engine.dispose()
