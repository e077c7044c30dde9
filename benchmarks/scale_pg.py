"""The scale benchmark's throwaway PostgreSQL 15 cluster, tuned for a bulk load.

The cluster lives in one folder (``data/``, ``server.log``, the socket) so that a finished
load can be reused by later runs (``scale.py --reuse DIR``). It runs as OS user ``postgres``
(``initdb`` refuses root), as the tests' cluster does (``tests/fixtures/postgres.py``).
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from sqlalchemy.engine import Connection

from maskjob.errors import MaskjobError
from tests.fixtures.net import free_port

__all__ = ["BULK_SETTINGS", "PG_BIN", "changed_settings", "cluster", "indexes_set_aside"]

logger = logging.getLogger(__name__)

PG_BIN = Path(os.environ.get("MASKJOB_TEST_PG_BIN", "/usr/lib/postgresql/15/bin"))
PG_OS_USER = "postgres"
START_ATTEMPTS = 3

# Bulk-load settings. fsync and synchronous_commit only change what a crash would lose; the
# memory settings are what a dedicated 8-16 GB database host would be given.
BULK_SETTINGS = {
    "fsync": "off",
    "synchronous_commit": "off",
    "maintenance_work_mem": "1GB",
    "max_wal_size": "8GB",
    "shared_buffers": "2GB",
    "work_mem": "64MB",
}


def _as_postgres(*argv: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["runuser", "-u", PG_OS_USER, "--", *map(str, argv)],
                          capture_output=True, text=True, timeout=600)


def _check_can_start() -> None:
    if not (PG_BIN / "initdb").is_file():
        raise MaskjobError(f"PostgreSQL server binaries not found in {PG_BIN}: install postgresql-15 "
                           "(scripts/setup.sh --test) or set MASKJOB_TEST_PG_BIN.")
    if os.geteuid() != 0 or shutil.which("runuser") is None:
        raise MaskjobError("the scale benchmark starts its PostgreSQL cluster as OS user 'postgres' via runuser, "
                           "which needs root; run it as root (as in CI).")


def _init(base: Path) -> None:
    base.mkdir(parents=True, exist_ok=True)
    (base / "sock").mkdir(exist_ok=True)
    for path in (base, base / "sock"):
        shutil.chown(path, PG_OS_USER, PG_OS_USER)
    init = _as_postgres(PG_BIN / "initdb", "-D", base / "data", "-A", "trust", "-U", PG_OS_USER,
                        "--no-sync", "-E", "UTF8", "--locale", "C")
    if init.returncode != 0:
        raise MaskjobError(f"initdb failed in {base}:\n{init.stdout}\n{init.stderr}")


def _start(base: Path) -> int:
    settings = " ".join(f"-c {name}={value}" for name, value in BULK_SETTINGS.items())
    for _ in range(START_ATTEMPTS):
        port = free_port()  # another process may take it before the server binds: retry
        options = f"-p {port} -k {base / 'sock'} -c listen_addresses=127.0.0.1 {settings}"
        started = _as_postgres(PG_BIN / "pg_ctl", "-D", base / "data", "-l", base / "server.log",
                               "-o", options, "-w", "start")
        if started.returncode == 0:
            return port
    log = (base / "server.log").read_text(errors="replace") if (base / "server.log").exists() else ""
    raise MaskjobError(f"pg_ctl start failed in {base}:\n{started.stdout}\n{started.stderr}\n{log[-3000:]}")


@contextmanager
def cluster(base: Path) -> Iterator[str]:
    """A running cluster in ``base`` (created when ``base/data`` is absent), stopped at the end.

    Yields:
        The server's base URL, ``postgresql+psycopg://postgres@127.0.0.1:PORT``.
    """
    _check_can_start()
    if not (base / "data" / "PG_VERSION").exists():
        _init(base)
    port = _start(base)
    logger.info("PostgreSQL cluster %s listening on 127.0.0.1:%d", base, port)
    try:
        yield f"postgresql+psycopg://{PG_OS_USER}@127.0.0.1:{port}"
    finally:
        _as_postgres(PG_BIN / "pg_ctl", "-D", base / "data", "-m", "fast", "-w", "stop")


def changed_settings(conn: Connection) -> list[tuple[str, str, str]]:
    """(name, value, default) of every :data:`BULK_SETTINGS` entry, as the server reports them."""
    rows = conn.exec_driver_sql(
        "SELECT name, current_setting(name), boot_val, unit FROM pg_settings WHERE name = ANY(%(names)s) "
        "ORDER BY name", {"names": list(BULK_SETTINGS)}).all()
    return [(name, value, _with_unit(boot, unit)) for name, value, boot, unit in rows]


def _with_unit(boot: str, unit: str | None) -> str:
    """A boot value such as ``16384`` with unit ``8kB`` as ``128MB``."""
    if unit in ("8kB", "kB", "MB") and boot.isdigit():
        kib = int(boot) * {"8kB": 8, "kB": 1, "MB": 1024}[unit]
        return f"{kib // 1024}MB" if kib % 1024 == 0 and kib >= 1024 else f"{kib}kB"
    return boot


def _constraints(conn: Connection, tables: tuple[str, ...]) -> list[tuple[str, str, str, str]]:
    """(table, name, kind, definition) of the primary, unique and foreign keys on or into ``tables``."""
    return [tuple(row) for row in conn.exec_driver_sql(
        "SELECT c.conrelid::regclass::text, c.conname, c.contype, pg_get_constraintdef(c.oid) "
        "FROM pg_constraint c WHERE c.contype IN ('p', 'u', 'f') "
        "AND (c.conrelid::regclass::text = ANY(%(t)s) "
        "     OR (c.contype = 'f' AND c.confrelid::regclass::text = ANY(%(t)s)))",
        {"t": list(tables)}).all()]


@contextmanager
def indexes_set_aside(conn: Connection, tables: tuple[str, ...]) -> Iterator[None]:
    """Drop the indexes and keys of ``tables`` (and foreign keys into them), recreate them at the end.

    Bulk loading into unindexed tables and building each index once, sorted, is several
    times faster than maintaining seven indexes (three of them on random hashes) row by row.
    The recreated objects have the same names and definitions as the migrations made them.
    """
    keys = _constraints(conn, tables)
    key_names = {name for _, name, _, _ in keys}
    indexes = [tuple(row) for row in conn.exec_driver_sql(
        "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = 'public' AND tablename = ANY(%(t)s)",
        {"t": list(tables)}).all() if row[0] not in key_names]
    order = {"f": 0, "u": 1, "p": 2}
    for table, name, _kind, _ in sorted(keys, key=lambda k: order[k[2]]):
        conn.exec_driver_sql(f'ALTER TABLE {table} DROP CONSTRAINT "{name}"')
    for name, _ in indexes:
        conn.exec_driver_sql(f'DROP INDEX "{name}"')
    yield
    for table, name, kind, definition in sorted(keys, key=lambda k: -order[k[2]]):
        if kind != "f":
            logger.info("building %s", name)
            conn.exec_driver_sql(f'ALTER TABLE {table} ADD CONSTRAINT "{name}" {definition}')
    for name, definition in indexes:
        logger.info("building %s", name)
        conn.exec_driver_sql(definition)
    for table, name, kind, definition in keys:
        if kind == "f":
            logger.info("checking %s", name)
            conn.exec_driver_sql(f'ALTER TABLE {table} ADD CONSTRAINT "{name}" {definition}')
