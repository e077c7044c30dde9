"""Local time: aware UTC times, camera-local facts on images, the cameras table.

- Every time column stores aware UTC: ``timestamptz`` on PostgreSQL (existing values were
  naive UTC, converted ``AT TIME ZONE 'UTC'``), text with an explicit ``+00:00`` on SQLite.
- ``images`` gains ``timezone`` (IANA name), ``utc_offset_s`` and ``local_day``: the
  camera-local facts at capture, fixed at write time (SQLite has no zone database). Existing
  rows get the site zone (setting ``site_timezone``).
- ``cameras`` (id, display name, site, zone, expected frames per hour, compliance target);
  every camera already in ``images`` is registered with the site defaults (``auto_registered``).
- The views gain ``captured_local`` (wall time; on SQLite text ending in its offset, e.g.
  ``2026-11-24 08:15:00+01:00``), ``timezone`` and ``local_day``; ``daily_compliance.day`` is
  each camera's local day. Ranking and counts are unchanged.

Every row is kept. The site defaults come from ``config.attributes["settings"]`` (what
``maskjob db upgrade`` passes), else from maskjob's settings (``MASKJOB_*``, ``maskjob.toml``).

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02
"""

from __future__ import annotations

import importlib.util
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType
from typing import Any, Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TIME_COLUMNS = {
    "model_versions": ("created_at", "promoted_at"),
    "promotion_decisions": ("decided_at",),
    "scoring_runs": ("interval_start", "interval_end", "started_at", "finished_at", "heartbeat_at"),
    "images": ("captured_at", "scored_at"),
}

LATEST_IMAGES = """
    SELECT i.id, i.path, i.camera_id, i.captured_at, i.width, i.height, i.status, i.reason,
           i.model_version_id, i.scored_at, i.timezone, i.utc_offset_s, i.local_day,
           ROW_NUMBER() OVER (PARTITION BY i.path_key ORDER BY i.scored_at DESC, i.id DESC) AS scoring_rank
    FROM images AS i
"""

# The camera's wall time: a timestamp on PostgreSQL; on SQLite text ending in the offset.
CAPTURED_LOCAL = {
    "postgresql": "(li.captured_at AT TIME ZONE 'UTC') + li.utc_offset_s * INTERVAL '1 second'",
    "sqlite": ("datetime(li.captured_at, printf('%+d seconds', li.utc_offset_s)) || "
               "CASE WHEN li.utc_offset_s < 0 THEN '-' ELSE '+' END || "
               "printf('%02d:%02d', abs(li.utc_offset_s) / 3600, (abs(li.utc_offset_s) % 3600) / 60)"),
}

LOCAL_COLUMNS = "{captured_local} AS captured_local, li.timezone, li.local_day"

FACE_PREDICTIONS = f"""
CREATE VIEW face_predictions AS
SELECT li.id AS image_id, li.path AS image_path, li.camera_id, li.captured_at,
       f.face_index, f.x1, f.y1, f.x2, f.y2, f.detector_score, f.label,
       f.p_with_mask, f.p_without_mask, f.p_partial_mask, f.confidence,
       mv.version AS model_version, li.scored_at, {LOCAL_COLUMNS}
FROM ({LATEST_IMAGES}) AS li
JOIN faces AS f ON f.image_id = li.id
JOIN model_versions AS mv ON mv.id = li.model_version_id
WHERE li.scoring_rank = 1
"""

IMAGE_PREDICTIONS = f"""
CREATE VIEW image_predictions AS
SELECT li.id AS image_id, li.path AS image_path, li.camera_id, li.captured_at,
       li.status, li.reason, li.width, li.height,
       COALESCE(fc.n_faces, 0) AS n_faces,
       COALESCE(fc.n_with_mask, 0) AS n_with_mask,
       COALESCE(fc.n_without_mask, 0) AS n_without_mask,
       COALESCE(fc.n_partial_mask, 0) AS n_partial_mask,
       CASE WHEN li.status <> 'ok' OR fc.n_faces IS NULL THEN NULL
            WHEN fc.n_with_mask = fc.n_faces THEN 1
            ELSE 0 END AS compliant,
       mv.version AS model_version, li.scored_at, {LOCAL_COLUMNS}
FROM ({LATEST_IMAGES}) AS li
LEFT JOIN (
    SELECT image_id, COUNT(*) AS n_faces,
           SUM(CASE WHEN label = 'with_mask' THEN 1 ELSE 0 END) AS n_with_mask,
           SUM(CASE WHEN label = 'without_mask' THEN 1 ELSE 0 END) AS n_without_mask,
           SUM(CASE WHEN label = 'partial_mask' THEN 1 ELSE 0 END) AS n_partial_mask
    FROM faces
    GROUP BY image_id
) AS fc ON fc.image_id = li.id
JOIN model_versions AS mv ON mv.id = li.model_version_id
WHERE li.scoring_rank = 1
"""

# A camera whose zone changed within a day keeps one row per local day: MAX names one zone.
DAILY_COMPLIANCE = """
CREATE VIEW daily_compliance AS
SELECT local_day AS day, camera_id,
       COUNT(*) AS images,
       SUM(CASE WHEN status = 'no_face' THEN 1 ELSE 0 END) AS no_face,
       SUM(CASE WHEN status = 'unreadable' THEN 1 ELSE 0 END) AS unreadable,
       SUM(n_faces) AS faces,
       SUM(n_with_mask) AS with_mask,
       SUM(n_without_mask) AS without_mask,
       SUM(n_partial_mask) AS partial_mask,
       CAST(SUM(n_with_mask) AS DOUBLE PRECISION) / NULLIF(SUM(n_faces), 0) AS compliance_rate,
       MAX(timezone) AS timezone
FROM image_predictions
GROUP BY local_day, camera_id
"""


def _migration(name: str, file: str) -> ModuleType:
    """An earlier migration's module, loaded from the file next to this one."""
    spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name(file))
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _m0003() -> ModuleType:
    return _migration("maskjob_migration_0003", "0003_long_values_and_leases.py")


def _site_defaults() -> tuple[str, float, float | None]:
    """(site zone, compliance target, expected frames per hour or None) from the settings."""
    settings: Any = op.get_context().config.attributes.get("settings")
    if settings is None:
        from maskjob.config import load_settings

        settings = load_settings()
    from maskjob.timeutil import zone

    zone(settings.site_timezone)
    rate = settings.default_expected_frames_per_hour or None
    return settings.site_timezone, float(settings.default_compliance_target), rate


def _create_views() -> None:
    local = LOCAL_COLUMNS.format(captured_local=CAPTURED_LOCAL[op.get_context().dialect.name])
    for sql in (FACE_PREDICTIONS, IMAGE_PREDICTIONS):
        op.execute(sql.replace(LOCAL_COLUMNS, local))
    op.execute(DAILY_COMPLIANCE)


def _times_to_utc() -> None:
    """Naive-UTC columns become aware UTC (PostgreSQL) / text with ``+00:00`` (SQLite)."""
    sqlite = op.get_context().dialect.name == "sqlite"
    for table, columns in TIME_COLUMNS.items():
        for column in columns:
            if sqlite:
                op.execute(f"UPDATE {table} SET {column} = CASE WHEN {column} LIKE '%+00:00' THEN {column} "
                           f"WHEN length({column}) = 19 THEN {column} || '.000000+00:00' "
                           f"ELSE {column} || '+00:00' END WHERE {column} IS NOT NULL")
            else:
                op.execute(f"ALTER TABLE {table} ALTER COLUMN {column} TYPE TIMESTAMP WITH TIME ZONE "
                           f"USING {column} AT TIME ZONE 'UTC'")


def _times_to_naive() -> None:
    sqlite = op.get_context().dialect.name == "sqlite"
    for table, columns in TIME_COLUMNS.items():
        for column in columns:
            if sqlite:
                op.execute(f"UPDATE {table} SET {column} = substr({column}, 1, length({column}) - 6) "
                           f"WHERE {column} LIKE '%+00:00'")
            else:
                op.execute(f"ALTER TABLE {table} ALTER COLUMN {column} TYPE TIMESTAMP WITHOUT TIME ZONE "
                           f"USING {column} AT TIME ZONE 'UTC'")


def _sqlite_local(kind: str) -> Any:
    from maskjob.timeutil import local_facts, zone

    def facts(text: str | None, name: str) -> Any:
        if text is None:
            return None
        instant = datetime.fromisoformat(text.replace(" ", "T")).astimezone(UTC)
        day, offset = local_facts(instant, zone(name))
        return day.isoformat() if kind == "day" else offset

    return facts


def _fill_local_facts(site_zone: str) -> None:
    bind = op.get_bind()
    if bind.dialect.name == "postgresql":
        op.execute(sa.text(
            "UPDATE images SET timezone = :tz, local_day = CAST(captured_at AT TIME ZONE :tz AS DATE), "
            "utc_offset_s = CAST(EXTRACT(EPOCH FROM (captured_at AT TIME ZONE :tz) - "
            "(captured_at AT TIME ZONE 'UTC')) AS INTEGER)").bindparams(tz=site_zone))
        return
    raw = bind.connection.driver_connection
    raw.create_function("maskjob_local_day", 2, _sqlite_local("day"), deterministic=True)
    raw.create_function("maskjob_utc_offset_s", 2, _sqlite_local("offset"), deterministic=True)
    op.execute(sa.text("UPDATE images SET timezone = :tz, local_day = maskjob_local_day(captured_at, :tz), "
                       "utc_offset_s = maskjob_utc_offset_s(captured_at, :tz)").bindparams(tz=site_zone))


def _register_cameras(site_zone: str, target: float, rate: float | None) -> None:
    op.execute(sa.text(
        "INSERT INTO cameras (camera_id, display_name, site, timezone, expected_frames_per_hour, "
        "compliance_target, auto_registered, created_at, updated_at) "
        "SELECT DISTINCT camera_id, NULL, NULL, :tz, CAST(:rate AS DOUBLE PRECISION), "
        "CAST(:target AS DOUBLE PRECISION), :auto, :now, :now FROM images"
    ).bindparams(sa.bindparam("now", type_=_utc_type()), sa.bindparam("rate", type_=sa.Float),
                 sa.bindparam("target", type_=sa.Float), sa.bindparam("auto", type_=sa.Boolean),
                 tz=site_zone, rate=rate, target=target, auto=True, now=datetime.now(UTC)))


def _utc_type() -> Any:
    from maskjob.storage.schema import UtcDateTime

    return UtcDateTime()


def _cameras_table() -> None:
    utc = _utc_type()
    op.create_table(
        "cameras",
        sa.Column("camera_id", sa.Text, nullable=False),
        sa.Column("display_name", sa.Text),
        sa.Column("site", sa.Text),
        sa.Column("timezone", sa.Text, nullable=False),
        sa.Column("expected_frames_per_hour", sa.Float),
        sa.Column("compliance_target", sa.Float, nullable=False),
        sa.Column("auto_registered", sa.Boolean, nullable=False),
        sa.Column("created_at", utc, nullable=False),
        sa.Column("updated_at", utc, nullable=False),
        sa.PrimaryKeyConstraint("camera_id", name="pk_cameras"),
        sa.CheckConstraint("compliance_target >= 0 AND compliance_target <= 1",
                           name="ck_cameras_compliance_target"),
        sa.CheckConstraint("expected_frames_per_hour IS NULL OR expected_frames_per_hour >= 0",
                           name="ck_cameras_expected_frames_per_hour"),
    )


def upgrade() -> None:
    site_zone, target, rate = _site_defaults()
    m0003 = _m0003()
    m0003._drop_views()
    _times_to_utc()
    _cameras_table()
    for column in (sa.Column("timezone", sa.Text), sa.Column("utc_offset_s", sa.Integer),
                   sa.Column("local_day", sa.Date)):
        op.add_column("images", column)
    _fill_local_facts(site_zone)
    m0003._set_faces_aside()
    with op.batch_alter_table("images") as batch:
        batch.alter_column("timezone", nullable=False, existing_type=sa.Text)
        batch.alter_column("utc_offset_s", nullable=False, existing_type=sa.Integer)
        batch.alter_column("local_day", nullable=False, existing_type=sa.Date)
    m0003._put_faces_back()
    _register_cameras(site_zone, target, rate)
    _create_views()


def downgrade() -> None:
    m0003 = _m0003()
    m0003._drop_views()
    # ALTER TABLE .. DROP COLUMN on both (SQLite >= 3.35): no rebuild, faces untouched.
    for column in ("local_day", "utc_offset_s", "timezone"):
        op.execute(f"ALTER TABLE images DROP COLUMN {column}")
    op.drop_table("cameras")
    _times_to_naive()
    m0003._create_views("path_key")
