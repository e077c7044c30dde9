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

:func:`refresh_summaries` recomputes images' summary columns from their faces' final labels
(migration 0007: a review's label where there is one, ``not_a_face`` left out, a reviewed face
at confidence 1.0); the review writes call it, and the triggers carry the result on.

Example:
    >>> with engine.begin() as conn, triggers_disabled(conn):   # doctest: +SKIP
    ...     conn.execute(sa.insert(Image), many_rows)
    ...     conn.execute(sa.insert(Face), their_faces)
    ...     fill_confidence_extremes(conn)
    ...     rebuild(conn)
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Sequence

import sqlalchemy as sa
from sqlalchemy.engine import Connection

__all__ = ["TRIGGER_PREFIX", "fill_confidence_extremes", "rebuild", "refresh_summaries", "triggers_disabled"]

TRIGGER_PREFIX = "maskjob_derived_"

_LATEST_COLUMNS = ("path_key", "image_id", "model_version_id", "camera_id", "captured_at", "scored_at", "timezone",
                   "local_day", "hour_utc", "status", "n_faces", "n_with_mask", "n_without_mask", "n_partial_mask",
                   "top_violation_confidence", "min_confidence", "max_confidence", "n_reviewed", "n_changed",
                   "n_not_face")
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
                           partial_mask, compliant, reviewed, changed, not_face)
SELECT {_HOURLY_KEY}, COUNT(*),
       SUM(CASE WHEN status = 'ok' THEN 1 ELSE 0 END),
       SUM(CASE WHEN status = 'no_face' THEN 1 ELSE 0 END),
       SUM(CASE WHEN status = 'unreadable' THEN 1 ELSE 0 END),
       SUM(n_faces), SUM(n_with_mask), SUM(n_without_mask), SUM(n_partial_mask),
       SUM(CASE WHEN status = 'ok' AND n_faces > 0 AND n_with_mask = n_faces THEN 1 ELSE 0 END),
       SUM(n_reviewed), SUM(n_changed), SUM(n_not_face)
FROM latest_scorings
GROUP BY {_HOURLY_KEY}
"""


# Per image with faces, the summary of its final faces: a face's final label is its review's
# where it has one (a reviewed face counts at confidence 1.0: a person decided), and a face
# reviewed as not_a_face drops out. {where} filters faces (e.g. to some image ids).
_FINAL_SUMMARY = """
SELECT image_id, COUNT(*) AS n_detected,
       SUM(CASE WHEN final = 'with_mask' THEN 1 ELSE 0 END) AS n_with_mask,
       SUM(CASE WHEN final = 'without_mask' THEN 1 ELSE 0 END) AS n_without_mask,
       SUM(CASE WHEN final = 'partial_mask' THEN 1 ELSE 0 END) AS n_partial_mask,
       MAX(CASE WHEN final IN ('without_mask', 'partial_mask') THEN final_confidence END) AS top_violation,
       MIN(CASE WHEN final <> 'not_a_face' THEN final_confidence END) AS lowest,
       MAX(CASE WHEN final <> 'not_a_face' THEN final_confidence END) AS highest,
       SUM(CASE WHEN reviewed_label IS NOT NULL THEN 1 ELSE 0 END) AS n_reviewed,
       SUM(CASE WHEN reviewed_label IS NOT NULL AND reviewed_label <> label THEN 1 ELSE 0 END) AS n_changed,
       SUM(CASE WHEN final = 'not_a_face' THEN 1 ELSE 0 END) AS n_not_face
FROM (SELECT image_id, label, reviewed_label, COALESCE(reviewed_label, label) AS final,
             CASE WHEN reviewed_label IS NULL THEN confidence ELSE 1.0 END AS final_confidence
      FROM faces WHERE {where}) AS ff
GROUP BY image_id
"""

_FILL_EXTREMES = f"""
UPDATE images SET top_violation_confidence = fc.top_violation, min_confidence = fc.lowest,
                  max_confidence = fc.highest
FROM ({_FINAL_SUMMARY.format(where="1 = 1")}) AS fc
WHERE images.id = fc.image_id
"""

# An image whose every face is not_a_face has none left: status no_face; any left: ok.
_REFRESH = """
UPDATE images SET n_faces = fc.n_detected - fc.n_not_face, n_with_mask = fc.n_with_mask,
                  n_without_mask = fc.n_without_mask, n_partial_mask = fc.n_partial_mask,
                  top_violation_confidence = fc.top_violation, min_confidence = fc.lowest,
                  max_confidence = fc.highest, n_reviewed = fc.n_reviewed, n_changed = fc.n_changed,
                  n_not_face = fc.n_not_face,
                  status = CASE WHEN fc.n_detected = fc.n_not_face THEN 'no_face' ELSE 'ok' END
FROM ({summary}) AS fc
WHERE images.id = fc.image_id
"""


def fill_confidence_extremes(conn: Connection) -> int:
    """Set every image's ``top_violation_confidence``, ``min_confidence`` and ``max_confidence`` from its faces
    (set-based, in the caller's transaction; over final labels, as :func:`refresh_summaries`);
    images without faces keep NULL. For bulk loads that wrote faces without the writer; run it
    inside :func:`triggers_disabled`, before :func:`rebuild`. Returns the images updated."""
    return conn.exec_driver_sql(_FILL_EXTREMES).rowcount


def refresh_summaries(conn: Connection, image_ids: Sequence[int]) -> int:
    """Recompute the summary columns of the images ``image_ids`` from their faces' final labels.

    ``n_faces`` and ``n_<label>`` count final faces (``not_a_face`` left out), the confidence
    extremes are over them (a reviewed face at 1.0), ``n_reviewed``/``n_changed``/``n_not_face``
    count the reviews, and ``status`` is ``no_face`` when no face is left, else ``ok``.
    Images without faces are left as they are. Runs in the caller's transaction; the triggers
    carry the change to ``latest_scorings`` and ``hourly_counts``. Returns the images updated.

    Example:
        >>> refresh_summaries(conn, [image_id])   # doctest: +SKIP
        1
    """
    if not image_ids:
        return 0
    summary = _FINAL_SUMMARY.format(where="image_id IN :image_ids")
    stmt = sa.text(_REFRESH.format(summary=summary)).bindparams(sa.bindparam("image_ids", expanding=True))
    return conn.execute(stmt, {"image_ids": list(image_ids)}).rowcount


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
