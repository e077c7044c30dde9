"""Values of any length in images; scoring runs hold a lease.

- ``images.path`` and ``images.camera_id`` become TEXT (were VARCHAR(1024)/VARCHAR(128): on
  PostgreSQL one longer camera folder or path failed its whole batch, on every rerun).
- ``images.path_key`` (sha256 hex of the path) replaces ``path`` in the unique key
  ``(path_key, model_version_id)`` and in the views' ranking index: a PostgreSQL btree entry
  holds at most 2704 bytes, and a path can be longer. ``ix_images_path`` keeps lookups by
  path fast: a hash index on PostgreSQL (any length), a btree on SQLite (no entry limit).
- ``scoring_runs`` gets ``heartbeat_at``, ``lease_s``, ``pid``, ``hostname``: a ``running`` row is
  a lease another run may break only once the heartbeat is older than ``lease_s``.
- The views are recreated unchanged except that they rank per ``path_key``.

Every row is kept. On SQLite, changing ``images`` means rebuilding the table (batch mode), and
with foreign keys on (they are, on every maskjob connection, and cannot be switched off
inside the migration's transaction) dropping the old table would cascade-delete every face:
the faces are copied aside and put back within the same transaction.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02
"""

from __future__ import annotations

import hashlib
import importlib.util
from pathlib import Path
from types import ModuleType
from typing import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None



def _run_columns() -> list[sa.Column]:
    return [sa.Column("heartbeat_at", sa.DateTime), sa.Column("lease_s", sa.Float),
            sa.Column("pid", sa.Integer), sa.Column("hostname", sa.Text)]


# sha256 of the path's UTF-8 bytes, as maskjob.storage.schema.path_key computes it.
PG_PATH_KEY = "encode(sha256(convert_to(path, 'UTF8')), 'hex')"

FACES_ASIDE = "maskjob_0003_faces"


def _views_0002() -> ModuleType:
    """Migration 0002's module (its view SQL), loaded from the file next to this one."""
    spec = importlib.util.spec_from_file_location("maskjob_migration_0002", Path(__file__).with_name("0002_views.py"))
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _create_views(rank_by: str) -> None:
    views = _views_0002()
    ranked = "PARTITION BY i.path ORDER BY"
    assert ranked in views.LATEST_IMAGES, "0002's view SQL changed; update 0003"
    dialect = op.get_context().dialect.name
    for sql in (views.FACE_PREDICTIONS, views.IMAGE_PREDICTIONS, views.DAILY_COMPLIANCE.format(day=views.DAY_EXPRESSION[dialect])):
        op.execute(sql.replace(ranked, f"PARTITION BY i.{rank_by} ORDER BY"))


def _drop_views() -> None:
    for name in ("daily_compliance", "image_predictions", "face_predictions"):
        op.execute(f"DROP VIEW {name}")


def _set_faces_aside() -> None:
    if op.get_context().dialect.name == "sqlite":
        op.execute(f"CREATE TEMP TABLE {FACES_ASIDE} AS SELECT * FROM faces")


def _put_faces_back() -> None:
    if op.get_context().dialect.name == "sqlite":
        op.execute(f"INSERT INTO faces SELECT * FROM {FACES_ASIDE} WHERE id NOT IN (SELECT id FROM faces)")
        op.execute(f"DROP TABLE {FACES_ASIDE}")


def _sqlite_sha256_hex(text: str | None) -> str | None:
    return None if text is None else hashlib.sha256(text.encode("utf-8")).hexdigest()


def _fill_path_key() -> None:
    bind = op.get_bind()
    if bind.dialect.name == "postgresql":
        op.execute(f"UPDATE images SET path_key = {PG_PATH_KEY}")
        return
    bind.connection.driver_connection.create_function("maskjob_sha256_hex", 1, _sqlite_sha256_hex, deterministic=True)
    op.execute("UPDATE images SET path_key = maskjob_sha256_hex(path)")


def upgrade() -> None:
    _drop_views()
    op.drop_index("ix_images_path_scored_at_id", table_name="images")
    op.add_column("images", sa.Column("path_key", sa.String(64)))
    _fill_path_key()
    _set_faces_aside()
    with op.batch_alter_table("images") as batch:
        batch.drop_constraint("uq_images_path_model_version_id", type_="unique")
        batch.alter_column("path", type_=sa.Text, existing_type=sa.String(1024), existing_nullable=False)
        batch.alter_column("camera_id", type_=sa.Text, existing_type=sa.String(128), existing_nullable=False)
        batch.alter_column("path_key", nullable=False, existing_type=sa.String(64))
        batch.create_unique_constraint("uq_images_path_key_model_version_id", ["path_key", "model_version_id"])
    _put_faces_back()
    op.create_index("ix_images_path_key_scored_at_id", "images", ["path_key", "scored_at", "id"])
    op.create_index("ix_images_path", "images", ["path"], postgresql_using="hash")
    for column in _run_columns():  # plain ADD COLUMN on both: no rebuild of scoring_runs
        op.add_column("scoring_runs", column)
    _create_views("path_key")


def downgrade() -> None:
    too_long = op.get_bind().execute(sa.text(
        "SELECT COUNT(*) FROM images WHERE LENGTH(path) > 1024 OR LENGTH(camera_id) > 128")).scalar_one()
    if too_long:
        raise RuntimeError(f"cannot downgrade below 0003: {too_long} image rows have a path longer than 1024 "
                           "or a camera_id longer than 128 characters, which revision 0002 cannot hold")
    _drop_views()
    # ALTER TABLE .. DROP COLUMN on both (SQLite >= 3.35): rebuilding scoring_runs on SQLite
    # would set every images.scoring_run_id to NULL (ON DELETE SET NULL).
    for column in _run_columns():
        op.execute(f"ALTER TABLE scoring_runs DROP COLUMN {column.name}")
    op.drop_index("ix_images_path", table_name="images")
    op.drop_index("ix_images_path_key_scored_at_id", table_name="images")
    _set_faces_aside()
    with op.batch_alter_table("images") as batch:
        batch.drop_constraint("uq_images_path_key_model_version_id", type_="unique")
        batch.drop_column("path_key")
        batch.alter_column("path", type_=sa.String(1024), existing_type=sa.Text, existing_nullable=False)
        batch.alter_column("camera_id", type_=sa.String(128), existing_type=sa.Text, existing_nullable=False)
        batch.create_unique_constraint("uq_images_path_model_version_id", ["path", "model_version_id"])
    _put_faces_back()
    op.create_index("ix_images_path_scored_at_id", "images", ["path", "scored_at", "id"])
    _create_views("path")
