"""The derived tables the views read: ``latest_scorings`` and ``hourly_counts`` (migration 0005).

The rule: the scoring that counts for a frame is, among the ``images`` rows of its
``path_key``, the one with the latest ``scored_at``, then the highest ``id`` (a rescoring by
any model replaces the earlier one; a backfill by an older model, scored later, counts).
``latest_scorings`` holds that row per path_key, with the columns the views filter and count
on; ``hourly_counts`` sums it per (UTC hour, camera, local day, zone, model version).

Database triggers (created by migration 0005) keep both right inside every writer's own
transaction: inserts, deletes and updates of ``images``. Two helpers serve bulk loads
(benchmarks, imports), which are faster without per-statement trigger work:

- :func:`triggers_disabled`: a block in which those triggers do not fire;
- :func:`fill_confidence_extremes`: the images' confidence extremes (migration 0006) from
  their faces, for rows written without them;
- :func:`rebuild`: recompute both tables from ``images`` with set-based SQL.

Example:
    >>> with engine.begin() as conn, triggers_disabled(conn):   # doctest: +SKIP
    ...     conn.execute(sa.insert(Image), many_rows)
    ...     conn.execute(sa.insert(Face), their_faces)
    ...     fill_confidence_extremes(conn)
    ...     rebuild(conn)
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import sqlalchemy as sa
from sqlalchemy.engine import Connection

__all__ = ["TRIGGER_PREFIX", "fill_confidence_extremes", "rebuild", "triggers_disabled"]

TRIGGER_PREFIX = "maskjob_derived_"

_LATEST_COLUMNS = ("path_key", "image_id", "model_version_id", "camera_id", "captured_at", "scored_at", "timezone",
                   "local_day", "hour_utc", "status", "n_faces", "n_with_mask", "n_without_mask", "n_partial_mask",
                   "top_violation_confidence", "min_confidence", "max_confidence")
_HOURLY_KEY = "hour_utc, camera_id, local_day, timezone, model_version_id"

# captured_at floored to the UTC hour, in the column's format on each database.
_HOUR_UTC = {
    "postgresql": "date_trunc('hour', r.captured_at AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'",
    "sqlite": "strftime('%Y-%m-%d %H:00:00.000000+00:00', r.captured_at)",
}


def _latest_from_images(dialect: str) -> str:
    values = ", ".join("r.id" if c == "image_id" else _HOUR_UTC[dialect] if c == "hour_utc" else f"r.{c}"
                       for c in _LATEST_COLUMNS)
    return (f"INSERT INTO latest_scorings ({', '.join(_LATEST_COLUMNS)}) SELECT {values} FROM ("
            "SELECT i.*, ROW_NUMBER() OVER (PARTITION BY i.path_key ORDER BY i.scored_at DESC, i.id DESC) AS rank_ "
            "FROM images AS i) AS r WHERE r.rank_ = 1")


_HOURLY_FROM_LATEST = f"""
INSERT INTO hourly_counts ({_HOURLY_KEY}, images, ok, no_face, unreadable, faces, with_mask, without_mask,
                           partial_mask, compliant)
SELECT {_HOURLY_KEY}, COUNT(*),
       SUM(CASE WHEN status = 'ok' THEN 1 ELSE 0 END),
       SUM(CASE WHEN status = 'no_face' THEN 1 ELSE 0 END),
       SUM(CASE WHEN status = 'unreadable' THEN 1 ELSE 0 END),
       SUM(n_faces), SUM(n_with_mask), SUM(n_without_mask), SUM(n_partial_mask),
       SUM(CASE WHEN status = 'ok' AND n_faces > 0 AND n_with_mask = n_faces THEN 1 ELSE 0 END)
FROM latest_scorings
GROUP BY {_HOURLY_KEY}
"""


_FILL_EXTREMES = """
UPDATE images SET top_violation_confidence = fc.top_violation, min_confidence = fc.lowest,
                  max_confidence = fc.highest
FROM (SELECT image_id,
             MAX(CASE WHEN label IN ('without_mask', 'partial_mask') THEN confidence END) AS top_violation,
             MIN(confidence) AS lowest, MAX(confidence) AS highest
      FROM faces GROUP BY image_id) AS fc
WHERE images.id = fc.image_id
"""


def fill_confidence_extremes(conn: Connection) -> int:
    """Set every image's ``top_violation_confidence``, ``min_confidence`` and ``max_confidence`` from its faces
    (set-based, in the caller's transaction); images without faces keep NULL. For bulk loads
    that wrote faces without the writer; run it inside :func:`triggers_disabled`, before
    :func:`rebuild`. Returns the images updated."""
    return conn.exec_driver_sql(_FILL_EXTREMES).rowcount


def rebuild(conn: Connection) -> tuple[int, int]:
    """Recompute ``latest_scorings`` and ``hourly_counts`` from ``images`` (set-based SQL),
    inside the caller's transaction; the triggers are off meanwhile (:func:`triggers_disabled`).

    Returns:
        (rows in latest_scorings, rows in hourly_counts).
    """
    dialect = conn.dialect.name
    with triggers_disabled(conn):
        if dialect == "postgresql":
            conn.exec_driver_sql("TRUNCATE hourly_counts, latest_scorings")
        else:
            conn.exec_driver_sql("DELETE FROM hourly_counts")
            conn.exec_driver_sql("DELETE FROM latest_scorings")
        n_latest = conn.exec_driver_sql(_latest_from_images(dialect)).rowcount
        n_hourly = conn.exec_driver_sql(_HOURLY_FROM_LATEST).rowcount
    return n_latest, n_hourly


def _enabled_triggers(conn: Connection) -> list[tuple[str, str]]:
    """The derived-state triggers now firing: (name, table) on PostgreSQL, (name, CREATE sql) on SQLite."""
    if conn.dialect.name == "postgresql":
        rows = conn.execute(sa.text(
            "SELECT t.tgname, c.relname FROM pg_trigger AS t JOIN pg_class AS c ON c.oid = t.tgrelid "
            "WHERE NOT t.tgisinternal AND t.tgenabled <> 'D' AND starts_with(t.tgname, :prefix) "
            "AND t.tgrelid IN ('images'::regclass, 'latest_scorings'::regclass) ORDER BY t.tgname"),
            {"prefix": TRIGGER_PREFIX})
    else:
        rows = conn.execute(sa.text(
            "SELECT name, sql FROM sqlite_master WHERE type = 'trigger' AND substr(name, 1, :n) = :prefix "
            "ORDER BY name"), {"n": len(TRIGGER_PREFIX), "prefix": TRIGGER_PREFIX})
    return [(name, detail) for name, detail in rows]


@contextmanager
def triggers_disabled(conn: Connection) -> Iterator[None]:
    """A block of ``conn``'s transaction in which the derived-state triggers do not fire.

    PostgreSQL: ``ALTER TABLE ... DISABLE TRIGGER <name>`` for maskjob's triggers only (not
    ``DISABLE TRIGGER USER``, which would also stop other users' triggers, nor
    ``session_replication_role``, which needs a superuser and also skips foreign-key checks).
    It locks ``images`` and ``latest_scorings`` against other writers until the transaction
    ends. SQLite has no way to disable a trigger: they are dropped and created again from
    their stored SQL (``sqlite_master``), which is transactional too.

    The block runs in a savepoint: if it raises, its writes and the disabling are undone
    together. Nested blocks are allowed (the inner one finds nothing to disable). Call
    :func:`rebuild` before the block ends if it changed ``images``.
    """
    with conn.begin_nested():
        triggers = _enabled_triggers(conn)
        for name, detail in triggers:
            if conn.dialect.name == "postgresql":
                conn.exec_driver_sql(f'ALTER TABLE "{detail}" DISABLE TRIGGER "{name}"')
            else:
                conn.exec_driver_sql(f'DROP TRIGGER "{name}"')
        yield
        for name, detail in triggers:
            if conn.dialect.name == "postgresql":
                conn.exec_driver_sql(f'ALTER TABLE "{detail}" ENABLE TRIGGER "{name}"')
            else:
                conn.exec_driver_sql(detail)
