"""The scoring that counts, kept by the database: latest_scorings, hourly_counts, triggers.

- ``images`` gains ``n_with_mask``, ``n_without_mask``, ``n_partial_mask`` (the writer fills
  them from the face labels; existing rows are counted from ``faces``, and ``n_faces`` is
  recounted there too, as the views always counted faces) and the index
  ``ix_images_model_version_id_captured_at``.
- ``latest_scorings``: one row per ``path_key``, the image the views show: the latest
  ``scored_at``, then the highest ``id``, among that path's images (the rule the views' window
  function applied before). It copies the columns the views filter and count on.
- ``hourly_counts``: per (UTC hour, camera, local day, zone, model version) sums over
  ``latest_scorings``; a row whose ``images`` fell to 0 may remain (readers filter ``images > 0``).
- Triggers keep both in the writer's own transaction: an inserted image becomes latest when
  it is newer; deleting the latest image promotes the best remaining one of its path (or
  removes the path); an update re-derives its paths; every change of ``latest_scorings``
  adds its new contribution to ``hourly_counts`` and subtracts its old one. PostgreSQL runs
  plpgsql functions (statement-level with transition tables for the inserts, the hot path;
  row-level for deletes, which must repoint ``latest_scorings`` BEFORE the image goes, as its
  foreign key forbids a dangling row); SQLite runs trigger bodies (UPSERT works inside them).
- The views read ``latest_scorings`` (``face_predictions``, ``image_predictions``) and
  ``hourly_counts`` (``daily_compliance``, which gains ``compliant_frames``): the same
  columns and rows as in 0004, without ranking every image ever scored.
- ``model_versions.metrics`` becomes ``jsonb`` on PostgreSQL.

Every row is kept; no table is rebuilt (``ALTER TABLE ADD/DROP COLUMN`` on both databases).
The downgrade restores 0004's schema and views. The SQL is copied here, not imported from
``maskjob.storage`` (``maskjob.storage.derived`` holds the same rule for rebuilds).

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType
from typing import Any, Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | Sequence[str] | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

LABEL_COLUMNS = ("n_with_mask", "n_without_mask", "n_partial_mask")
COUNT_COLUMNS = ("n_faces", *LABEL_COLUMNS)
LATEST_COLUMNS = ("path_key", "image_id", "model_version_id", "camera_id", "captured_at", "scored_at", "timezone",
                  "local_day", "hour_utc", "status", *COUNT_COLUMNS)
HOURLY_KEY = ("hour_utc", "camera_id", "local_day", "timezone", "model_version_id")
HOURLY_SUMS = ("images", "ok", "no_face", "unreadable", "faces", "with_mask", "without_mask", "partial_mask",
               "compliant")
# images columns an UPDATE must re-derive latest_scorings for.
DERIVED_FROM = ("path_key", "model_version_id", "camera_id", "captured_at", "scored_at", "timezone", "local_day",
                "status", *COUNT_COLUMNS)
PREFIX = "maskjob_derived_"

# captured_at floored to the UTC hour, in the column's own format on each database.
HOUR_UTC = {
    "postgresql": "date_trunc('hour', {p}captured_at AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'",
    "sqlite": "strftime('%Y-%m-%d %H:00:00.000000+00:00', {p}captured_at)",
}


def _image_values(dialect: str, p: str, latest: Sequence[str] = LATEST_COLUMNS) -> str:
    """latest_scorings' columns computed from an images row named by prefix ``p`` (``NEW.``, ``r.``)."""
    values = [f"{p}id" if c == "image_id" else HOUR_UTC[dialect].format(p=p) if c == "hour_utc" else f"{p}{c}"
              for c in latest]
    return ", ".join(values)


def _best_images(dialect: str, where: str, latest: Sequence[str] = LATEST_COLUMNS) -> str:
    """INSERT into latest_scorings of the best image of each path_key among images matching ``where``."""
    return (f"INSERT INTO latest_scorings ({', '.join(latest)}) "
            f"SELECT {_image_values(dialect, 'r.', latest)} FROM ("
            "SELECT i.*, ROW_NUMBER() OVER (PARTITION BY i.path_key ORDER BY i.scored_at DESC, i.id DESC) AS rank_ "
            f"FROM images AS i WHERE {where}) AS r WHERE r.rank_ = 1")


def _contributions(p: str, sign: str = "") -> list[str]:
    """One latest_scorings row's (prefix ``p``) terms of hourly_counts' sums, in HOURLY_SUMS order."""
    flag = "CASE WHEN {} THEN {}1 ELSE 0 END"
    return [f"{sign}1",
            *(flag.format(f"{p}status = '{s}'", sign) for s in ("ok", "no_face", "unreadable")),
            *(f"{sign}{p}{c}" for c in COUNT_COLUMNS),
            flag.format(f"{p}status = 'ok' AND {p}n_faces > 0 AND {p}n_with_mask = {p}n_faces", sign)]


def _hourly_upsert(values: str) -> str:
    """INSERT of ``values`` (key then sums) into hourly_counts, adding to an existing row's sums."""
    sums = ", ".join(f"{c} = hourly_counts.{c} + excluded.{c}" for c in HOURLY_SUMS)
    return (f"INSERT INTO hourly_counts ({', '.join(HOURLY_KEY + HOURLY_SUMS)}) {values} "
            f"ON CONFLICT ({', '.join(HOURLY_KEY)}) DO UPDATE SET {sums}")


HOURLY_FROM_LATEST = (f"INSERT INTO hourly_counts ({', '.join(HOURLY_KEY + HOURLY_SUMS)}) "
                      f"SELECT {', '.join(HOURLY_KEY)}, "
                      + ", ".join(f"SUM({term})" for term in _contributions("")) +
                      f" FROM latest_scorings GROUP BY {', '.join(HOURLY_KEY)}")

NEWER = ("(excluded.scored_at > latest_scorings.scored_at OR (excluded.scored_at = latest_scorings.scored_at "
         "AND excluded.image_id > latest_scorings.image_id))")


def _upsert_latest(latest: Sequence[str]) -> str:
    return ("ON CONFLICT (path_key) DO UPDATE SET "
            + ", ".join(f"{c} = excluded.{c}" for c in latest if c != "path_key") + f" WHERE {NEWER}")


# The trigger builders take latest_scorings' columns and the images columns an UPDATE must
# re-derive, so that a later revision adding columns rebuilds the same triggers over its own.
def _sqlite_triggers(latest: Sequence[str] = LATEST_COLUMNS, derived_from: Sequence[str] = DERIVED_FROM) -> list[str]:
    key = ", ".join(f"{{p}}{c}" for c in HOURLY_KEY)
    add = "VALUES (" + key.format(p="NEW.") + ", " + ", ".join(_contributions("NEW.")) + ")"
    sub = "VALUES (" + key.format(p="OLD.") + ", " + ", ".join(_contributions("OLD.", "-")) + ")"
    return [
        f"""CREATE TRIGGER {PREFIX}images_insert AFTER INSERT ON images BEGIN
    INSERT INTO latest_scorings ({', '.join(latest)}) VALUES ({_image_values('sqlite', 'NEW.', latest)})
    {_upsert_latest(latest)};
END""",
        f"""CREATE TRIGGER {PREFIX}images_delete BEFORE DELETE ON images
WHEN OLD.id = (SELECT image_id FROM latest_scorings WHERE path_key = OLD.path_key) BEGIN
    DELETE FROM latest_scorings WHERE path_key = OLD.path_key;
    {_best_images('sqlite', 'i.path_key = OLD.path_key AND i.id <> OLD.id', latest)};
END""",
        f"""CREATE TRIGGER {PREFIX}images_update AFTER UPDATE OF {', '.join(derived_from)} ON images BEGIN
    DELETE FROM latest_scorings WHERE path_key IN (OLD.path_key, NEW.path_key);
    {_best_images('sqlite', 'i.path_key IN (OLD.path_key, NEW.path_key)', latest)};
END""",
        f"""CREATE TRIGGER {PREFIX}latest_insert AFTER INSERT ON latest_scorings BEGIN
    {_hourly_upsert(add)};
END""",
        f"""CREATE TRIGGER {PREFIX}latest_delete AFTER DELETE ON latest_scorings BEGIN
    {_hourly_upsert(sub)};
END""",
        f"""CREATE TRIGGER {PREFIX}latest_update AFTER UPDATE ON latest_scorings BEGIN
    {_hourly_upsert(sub)};
    {_hourly_upsert(add)};
END""",
    ]


def _pg_hourly_delta(sources: Sequence[tuple[str, str]]) -> str:
    """hourly_counts += the contributions of transition tables, ``(table, sign)`` each."""
    parts = [f"SELECT {', '.join(HOURLY_KEY)}, "
             + ", ".join(f"{term} AS {c}" for term, c in zip(_contributions("", sign), HOURLY_SUMS))
             + f" FROM {table}" for table, sign in sources]
    grouped = (f"SELECT {', '.join(HOURLY_KEY)}, {', '.join(f'SUM({c})' for c in HOURLY_SUMS)} "
               f"FROM ({' UNION ALL '.join(parts)}) AS d GROUP BY {', '.join(HOURLY_KEY)} "
               f"ORDER BY {', '.join(HOURLY_KEY)}")
    return _hourly_upsert(grouped)


# (trigger, table, timing and events, FOR EACH ..., function body)
def _pg_triggers(latest: Sequence[str] = LATEST_COLUMNS,
                 derived_from: Sequence[str] = DERIVED_FROM) -> list[tuple[str, str, str, str, str]]:
    return [
        (f"{PREFIX}images_insert", "images", "AFTER INSERT", "REFERENCING NEW TABLE AS inserted FOR EACH STATEMENT",
         f"""INSERT INTO latest_scorings ({', '.join(latest)})
    SELECT DISTINCT ON (n.path_key) {_image_values('postgresql', 'n.', latest)} FROM inserted AS n
    ORDER BY n.path_key, n.scored_at DESC, n.id DESC
    {_upsert_latest(latest)};
    RETURN NULL;"""),
        (f"{PREFIX}images_delete", "images", "BEFORE DELETE", "FOR EACH ROW",
         f"""IF EXISTS (SELECT 1 FROM latest_scorings WHERE path_key = OLD.path_key AND image_id = OLD.id) THEN
        DELETE FROM latest_scorings WHERE path_key = OLD.path_key;
        {_best_images('postgresql', 'i.path_key = OLD.path_key AND i.id <> OLD.id', latest)};
    END IF;
    RETURN OLD;"""),
        (f"{PREFIX}images_update", "images", f"AFTER UPDATE OF {', '.join(derived_from)}", "FOR EACH ROW",
         f"""DELETE FROM latest_scorings WHERE path_key IN (OLD.path_key, NEW.path_key);
    {_best_images('postgresql', 'i.path_key IN (OLD.path_key, NEW.path_key)', latest)};
    RETURN NULL;"""),
        (f"{PREFIX}latest_insert", "latest_scorings", "AFTER INSERT",
         "REFERENCING NEW TABLE AS added FOR EACH STATEMENT",
         f"{_pg_hourly_delta([('added', '')])};\n    RETURN NULL;"),
        (f"{PREFIX}latest_delete", "latest_scorings", "AFTER DELETE",
         "REFERENCING OLD TABLE AS removed FOR EACH STATEMENT",
         f"{_pg_hourly_delta([('removed', '-')])};\n    RETURN NULL;"),
        (f"{PREFIX}latest_update", "latest_scorings", "AFTER UPDATE",
         "REFERENCING OLD TABLE AS removed NEW TABLE AS added FOR EACH STATEMENT",
         f"{_pg_hourly_delta([('added', ''), ('removed', '-')])};\n    RETURN NULL;"),
    ]


def _create_triggers(latest: Sequence[str] = LATEST_COLUMNS, derived_from: Sequence[str] = DERIVED_FROM) -> None:
    if op.get_context().dialect.name == "sqlite":
        for sql in _sqlite_triggers(latest, derived_from):
            op.execute(sql)
        return
    for name, table, when, each, body in _pg_triggers(latest, derived_from):
        op.execute(f"CREATE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql AS $body$\n"
                   f"BEGIN\n    {body}\nEND\n$body$")
        op.execute(f"CREATE TRIGGER {name} {when} ON {table} {each} EXECUTE FUNCTION {name}()")


def _drop_triggers() -> None:
    sqlite = op.get_context().dialect.name == "sqlite"
    for name, table, *_ in _pg_triggers():
        if sqlite:
            op.execute(f"DROP TRIGGER {name}")
        else:
            op.execute(f"DROP TRIGGER {name} ON {table}")
            op.execute(f"DROP FUNCTION {name}()")


# The camera's wall time, as in 0004: a timestamp on PostgreSQL; on SQLite text ending in the offset.
CAPTURED_LOCAL = {
    "postgresql": "(ls.captured_at AT TIME ZONE 'UTC') + i.utc_offset_s * INTERVAL '1 second'",
    "sqlite": ("datetime(ls.captured_at, printf('%+d seconds', i.utc_offset_s)) || "
               "CASE WHEN i.utc_offset_s < 0 THEN '-' ELSE '+' END || "
               "printf('%02d:%02d', abs(i.utc_offset_s) / 3600, (abs(i.utc_offset_s) % 3600) / 60)"),
}

# LEFT JOINs on unique keys that always match (foreign keys): a query that reads no column
# of images or model_versions does not join them (PostgreSQL and SQLite remove such joins).
FACE_PREDICTIONS = """
CREATE VIEW face_predictions AS
SELECT ls.image_id, i.path AS image_path, ls.camera_id, ls.captured_at,
       f.face_index, f.x1, f.y1, f.x2, f.y2, f.detector_score, f.label,
       f.p_with_mask, f.p_without_mask, f.p_partial_mask, f.confidence,
       mv.version AS model_version, ls.scored_at,
       {captured_local} AS captured_local, ls.timezone, ls.local_day
FROM latest_scorings AS ls
JOIN faces AS f ON f.image_id = ls.image_id
LEFT JOIN images AS i ON i.id = ls.image_id
LEFT JOIN model_versions AS mv ON mv.id = ls.model_version_id
"""

IMAGE_PREDICTIONS = """
CREATE VIEW image_predictions AS
SELECT ls.image_id, i.path AS image_path, ls.camera_id, ls.captured_at,
       ls.status, i.reason, i.width, i.height,
       ls.n_faces, ls.n_with_mask, ls.n_without_mask, ls.n_partial_mask,
       CASE WHEN ls.status <> 'ok' OR ls.n_faces = 0 THEN NULL
            WHEN ls.n_with_mask = ls.n_faces THEN 1
            ELSE 0 END AS compliant,
       mv.version AS model_version, ls.scored_at,
       {captured_local} AS captured_local, ls.timezone, ls.local_day
FROM latest_scorings AS ls
LEFT JOIN images AS i ON i.id = ls.image_id
LEFT JOIN model_versions AS mv ON mv.id = ls.model_version_id
"""

# A camera whose zone changed within a day keeps one row per local day: MAX names one zone.
DAILY_COMPLIANCE = """
CREATE VIEW daily_compliance AS
SELECT local_day AS day, camera_id,
       SUM(images) AS images,
       SUM(no_face) AS no_face,
       SUM(unreadable) AS unreadable,
       SUM(faces) AS faces,
       SUM(with_mask) AS with_mask,
       SUM(without_mask) AS without_mask,
       SUM(partial_mask) AS partial_mask,
       CAST(SUM(with_mask) AS DOUBLE PRECISION) / NULLIF(SUM(faces), 0) AS compliance_rate,
       MAX(CASE WHEN images > 0 THEN timezone END) AS timezone,
       SUM(compliant) AS compliant_frames
FROM hourly_counts
GROUP BY local_day, camera_id
HAVING SUM(images) > 0
"""

# Counted from faces for rows written before this revision (UPDATE ... FROM: SQLite >= 3.33).
FILL_COUNTS = ("UPDATE images SET n_faces = fc.n_faces, "
               + ", ".join(f"{c} = fc.{c}" for c in LABEL_COLUMNS) +
               " FROM (SELECT image_id, COUNT(*) AS n_faces, "
               + ", ".join(f"SUM(CASE WHEN label = '{c[2:]}' THEN 1 ELSE 0 END) AS {c}" for c in LABEL_COLUMNS) +
               " FROM faces GROUP BY image_id) AS fc WHERE images.id = fc.image_id")
ZERO_FACES = ("UPDATE images SET n_faces = 0 "
              "WHERE n_faces <> 0 AND NOT EXISTS (SELECT 1 FROM faces WHERE image_id = images.id)")


def _m0004() -> ModuleType:
    """Migration 0004's module (its views), loaded from the file next to this one."""
    spec = importlib.util.spec_from_file_location("maskjob_migration_0004",
                                                  Path(__file__).with_name("0004_local_time_and_cameras.py"))
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _utc_type() -> Any:
    from maskjob.storage.schema import UtcDateTime

    return UtcDateTime()


def _create_tables() -> None:
    utc = _utc_type()
    counts = [sa.Column(c, sa.Integer, nullable=False) for c in COUNT_COLUMNS]
    op.create_table(
        "latest_scorings",
        sa.Column("path_key", sa.String(64), nullable=False),
        sa.Column("image_id", sa.Integer, nullable=False),
        sa.Column("model_version_id", sa.Integer, nullable=False),
        sa.Column("camera_id", sa.Text, nullable=False),
        sa.Column("captured_at", utc, nullable=False),
        sa.Column("scored_at", utc, nullable=False),
        sa.Column("timezone", sa.Text, nullable=False),
        sa.Column("local_day", sa.Date, nullable=False),
        sa.Column("hour_utc", utc, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        *counts,
        sa.PrimaryKeyConstraint("path_key", name="pk_latest_scorings"),
        sa.UniqueConstraint("image_id", name="uq_latest_scorings_image_id"),
        sa.ForeignKeyConstraint(["image_id"], ["images.id"], name="fk_latest_scorings_image_id_images"),
    )
    for columns in (("captured_at",), ("camera_id", "captured_at"), ("local_day", "camera_id"),
                    ("status", "captured_at")):
        op.create_index(f"ix_latest_scorings_{'_'.join(columns)}", "latest_scorings", list(columns))
    op.create_table(
        "hourly_counts",
        sa.Column("hour_utc", utc, nullable=False),
        sa.Column("camera_id", sa.Text, nullable=False),
        sa.Column("local_day", sa.Date, nullable=False),
        sa.Column("timezone", sa.Text, nullable=False),
        sa.Column("model_version_id", sa.Integer, nullable=False),
        *(sa.Column(c, sa.Integer, nullable=False) for c in HOURLY_SUMS),
        sa.PrimaryKeyConstraint(*HOURLY_KEY, name="pk_hourly_counts"),
    )
    op.create_index("ix_hourly_counts_camera_id_hour_utc", "hourly_counts", ["camera_id", "hour_utc"])
    op.create_index("ix_hourly_counts_local_day_camera_id", "hourly_counts", ["local_day", "camera_id"])


def _create_views() -> None:
    local = CAPTURED_LOCAL[op.get_context().dialect.name]
    for sql in (FACE_PREDICTIONS, IMAGE_PREDICTIONS):
        op.execute(sql.format(captured_local=local))
    op.execute(DAILY_COMPLIANCE)


def upgrade() -> None:
    dialect = op.get_context().dialect.name
    _m0004()._m0003()._drop_views()
    for column in LABEL_COLUMNS:  # ADD COLUMN with a constant default: no rebuild, existing rows get 0
        op.add_column("images", sa.Column(column, sa.Integer, nullable=False, server_default=sa.text("0")))
    op.execute(FILL_COUNTS)
    op.execute(ZERO_FACES)
    op.create_index("ix_images_model_version_id_captured_at", "images", ["model_version_id", "captured_at"])
    _create_tables()
    op.execute(_best_images(dialect, "1 = 1"))
    op.execute(HOURLY_FROM_LATEST)
    _create_triggers()
    if dialect == "postgresql":
        op.execute("ALTER TABLE model_versions ALTER COLUMN metrics TYPE JSONB USING metrics::jsonb")
    _create_views()


def downgrade() -> None:
    m0004 = _m0004()
    m0004._m0003()._drop_views()
    if op.get_context().dialect.name == "postgresql":
        op.execute("ALTER TABLE model_versions ALTER COLUMN metrics TYPE JSON USING metrics::json")
    _drop_triggers()
    op.drop_table("hourly_counts")
    op.drop_table("latest_scorings")
    op.drop_index("ix_images_model_version_id_captured_at", table_name="images")
    # ALTER TABLE .. DROP COLUMN on both (SQLite >= 3.35): no rebuild, faces untouched.
    for column in reversed(LABEL_COLUMNS):
        op.execute(f"ALTER TABLE images DROP COLUMN {column}")
    m0004._create_views()
