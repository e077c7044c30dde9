"""Engines, sessions and Alembic migrations for SQLite and PostgreSQL.

Example:
    >>> upgrade("sqlite:///data/maskjob.db")           # doctest: +SKIP
    '0002'
    >>> with database("sqlite:///data/maskjob.db") as engine, session(engine) as s:  # doctest: +SKIP
    ...     s.scalars(select(ModelVersion)).all()
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import URL, Connection, Engine
from sqlalchemy.orm import Session, sessionmaker

import maskjob
from maskjob.errors import MaskjobError

__all__ = ["database", "engine_for", "make_engine", "open_database", "session", "upgrade", "downgrade", "current", "head_revision", "safe_url"]

logger = logging.getLogger(__name__)


SQLITE_BUSY_TIMEOUT_MS = 30_000


ALEMBIC_DIR = Path(maskjob.__file__).resolve().parents[1] / "alembic"


def safe_url(url: str | URL) -> str:
    """The URL as text with any password masked, for messages and logs."""
    try:
        return sa.make_url(url).render_as_string(hide_password=True)
    except sa.exc.ArgumentError:
        return "<unparseable URL>"


def _parse_url(url: str | URL) -> URL:
    try:
        parsed = sa.make_url(url)
    except sa.exc.ArgumentError:
        raise MaskjobError(
            f"bad database URL {url!r}. Use sqlite:///path/to/maskjob.db or "
            "postgresql+psycopg://user:password@host:5432/dbname (setting database_url)."
        ) from None
    backend = parsed.get_backend_name()
    if backend not in {"sqlite", "postgresql"}:
        raise MaskjobError(f"database URL {safe_url(parsed)} uses {backend}; maskjob supports sqlite and postgresql.")
    if parsed.drivername == "postgresql":
        parsed = parsed.set(drivername="postgresql+psycopg")  # psycopg 3 is the installed driver
    return parsed


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


def _sqlite_on_begin(conn: Connection) -> None:
    # Take the write lock up front: concurrent shard writers then queue on busy_timeout
    # instead of failing with "database is locked" when a read upgrades to a write.
    conn.exec_driver_sql("BEGIN IMMEDIATE")


def make_engine(url: str | URL) -> Engine:
    """An engine for ``url``; SQLite gets foreign keys, WAL, a busy timeout and its parent dir.

    ``postgresql://`` URLs use the psycopg 3 driver.
    """
    parsed = _parse_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:" and not parsed.database.startswith("file:"):
            Path(parsed.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
        engine = sa.create_engine(parsed)
        event.listen(engine, "connect", _sqlite_on_connect)
        event.listen(engine, "begin", _sqlite_on_begin)
        return engine
    return sa.create_engine(parsed, pool_pre_ping=True)


@contextmanager
def session(engine: Engine) -> Iterator[Session]:
    """A session that commits on success and rolls back on error; objects stay usable after."""
    factory = sessionmaker(engine, expire_on_commit=False)
    with factory() as s, s.begin():
        yield s


def _unreachable(url: str | URL, exc: Exception) -> MaskjobError:
    detail = str(getattr(exc, "orig", exc)).strip().splitlines()[0]
    return MaskjobError(
        f"cannot open database {safe_url(url)}: {detail}. Check the server is running and "
        "database_url (MASKJOB_DATABASE_URL) is right."
    )


def _alembic_config(connection: Connection | None = None) -> Any:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(ALEMBIC_DIR))
    cfg.attributes["connection"] = connection
    return cfg


def head_revision() -> str:
    """The newest migration this code knows."""
    from alembic.script import ScriptDirectory

    head = ScriptDirectory.from_config(_alembic_config()).get_current_head()
    assert head is not None, f"no migrations under {ALEMBIC_DIR}"
    return head


def _run_migration(url: str | URL, action: str, rev: str) -> str | None:
    from alembic import command
    from alembic.util import CommandError

    try:
        with engine_for(url) as engine, engine.begin() as conn:
            getattr(command, action)(_alembic_config(conn), rev)
    except CommandError as exc:
        raise MaskjobError(f"cannot {action} database {safe_url(url)} to {rev!r}: {exc}. "
                           "Use a revision from `maskjob db current` / alembic/versions, or 'head'/'base'.") from None
    except sa.exc.OperationalError as exc:
        raise _unreachable(url, exc) from None
    return current(url)


def upgrade(url: str | URL, rev: str = "head") -> str | None:
    """Migrate the database up to ``rev`` (one transaction); returns the new revision."""
    new = _run_migration(url, "upgrade", rev)
    logger.info("database %s is at revision %s", safe_url(url), new)
    return new


def downgrade(url: str | URL, rev: str) -> str | None:
    """Migrate the database down to ``rev`` (``"base"`` drops everything); returns the new revision."""
    new = _run_migration(url, "downgrade", rev)
    logger.info("database %s is at revision %s", safe_url(url), new)
    return new


def _current(conn: Connection) -> str | None:
    from alembic.runtime.migration import MigrationContext

    return MigrationContext.configure(conn).get_current_revision()


def current(url: str | URL) -> str | None:
    """The database's migration revision, or ``None`` when it has never been migrated."""
    try:
        with engine_for(url) as engine, engine.connect() as conn:
            return _current(conn)
    except sa.exc.OperationalError as exc:
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
    except sa.exc.OperationalError as exc:
        engine.dispose()
        raise _unreachable(url, exc) from None
    head = head_revision()
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
