"""Each frame's confidence extremes, for a report whose gallery and review queue cost the window.

- ``images`` and ``latest_scorings`` gain ``top_violation_confidence`` (the highest confidence
  among the frame's faces labelled ``without_mask`` or ``partial_mask``; NULL when it has none),
  ``min_confidence`` and ``max_confidence`` (the lowest and highest confidence among its faces;
  NULL when it has none). The writer fills them from the faces it writes (as it fills
  ``n_with_mask``); rows written before this revision are computed from ``faces`` here.
- The report's gallery (a camera's most confident violations) and review queue (the least
  confident faces) then rank frames on these columns and read ``faces`` only for the few
  frames kept: the ``cap`` best faces lie within the ``cap`` best frames. The review queue's
  count of faces below a threshold needs ``faces`` only for frames of 3 or more faces whose
  extremes straddle it (below ``min``: none; above ``max``: all; 1 or 2 faces: one).
- ``ix_latest_scorings_captured_at`` and ``ix_latest_scorings_camera_id_captured_at`` become
  covering: the columns the report's ranking and the analysts' week queries read follow the
  key, so both read the window's index entries only (an index-only scan on PostgreSQL, a
  covering index on SQLite) instead of one table page per frame. Both carry the same columns
  because the planners pick either for a week grouped by camera (SQLite skip-scans the
  camera index to avoid a sort).
- The triggers of 0005 are created again over the longer column list (same rule, same
  names); the views are unchanged.

Every row is kept (``ALTER TABLE ADD/DROP COLUMN``, no table rebuilt). The downgrade restores
0005's indexes and triggers and drops the columns.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType
from typing import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | Sequence[str] | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

CONFIDENCE_COLUMNS = ("top_violation_confidence", "min_confidence", "max_confidence")
COUNT_COLUMNS = ("n_faces", "n_with_mask", "n_without_mask", "n_partial_mask")

# (name, columns at 0005, columns from 0006): the key first, then what readers take from the entry.
INDEXES = (
    ("ix_latest_scorings_captured_at", ("captured_at",),
     ("captured_at", "camera_id", "status", *COUNT_COLUMNS, "min_confidence", "max_confidence", "image_id")),
    ("ix_latest_scorings_camera_id_captured_at", ("camera_id", "captured_at"),
     ("camera_id", "captured_at", "status", *COUNT_COLUMNS, "top_violation_confidence", "min_confidence",
      "max_confidence", "image_id")),
)

FILL_IMAGES = (
    "UPDATE images SET top_violation_confidence = fc.top_violation, min_confidence = fc.lowest, "
    "max_confidence = fc.highest "
    "FROM (SELECT image_id, "
    "MAX(CASE WHEN label IN ('without_mask', 'partial_mask') THEN confidence END) AS top_violation, "
    "MIN(confidence) AS lowest, MAX(confidence) AS highest FROM faces GROUP BY image_id) AS fc "
    "WHERE images.id = fc.image_id")
FILL_LATEST = ("UPDATE latest_scorings SET "
               + ", ".join(f"{c} = i.{c}" for c in CONFIDENCE_COLUMNS) +
               " FROM images AS i WHERE i.id = latest_scorings.image_id AND i.min_confidence IS NOT NULL")


def _m0005() -> ModuleType:
    """Migration 0005's module (its trigger builders), loaded from the file next to this one."""
    spec = importlib.util.spec_from_file_location("maskjob_migration_0005",
                                                  Path(__file__).with_name("0005_latest_scorings.py"))
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _drop_indexes() -> None:
    for name, *_ in INDEXES:
        op.drop_index(name, table_name="latest_scorings")


def _create_indexes(position: int) -> None:
    for name, *definitions in INDEXES:
        op.create_index(name, "latest_scorings", list(definitions[position]))


def upgrade() -> None:
    m0005 = _m0005()
    # Off while the new columns are filled: 0005's update trigger would re-derive every path.
    m0005._drop_triggers()
    for table in ("images", "latest_scorings"):
        for column in CONFIDENCE_COLUMNS:
            op.add_column(table, sa.Column(column, sa.Float, nullable=True))
    _drop_indexes()  # rebuilt after the fill rather than updated row by row during it
    op.execute(FILL_IMAGES)
    op.execute(FILL_LATEST)
    _create_indexes(1)
    m0005._create_triggers((*m0005.LATEST_COLUMNS, *CONFIDENCE_COLUMNS),
                           (*m0005.DERIVED_FROM, *CONFIDENCE_COLUMNS))


def downgrade() -> None:
    m0005 = _m0005()
    m0005._drop_triggers()
    _drop_indexes()
    _create_indexes(0)
    # ALTER TABLE .. DROP COLUMN on both (SQLite >= 3.35): no rebuild.
    for table in ("latest_scorings", "images"):
        for column in reversed(CONFIDENCE_COLUMNS):
            op.execute(f"ALTER TABLE {table} DROP COLUMN {column}")
    m0005._create_triggers()
