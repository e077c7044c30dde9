"""Tables: model versions, promotion decisions, scoring runs, images, faces.

Revision ID: 0001
Revises:
Create Date: 2026-11-25
"""

from __future__ import annotations

from typing import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

CLASSES = ("with_mask", "without_mask", "partial_mask")


def _in(column: str, values: Sequence[str]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


def upgrade() -> None:
    op.create_table(
        "model_versions",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("version", sa.String(128), nullable=False),
        sa.Column("arch", sa.String(64), nullable=False),
        sa.Column("checkpoint_path", sa.Text, nullable=False),
        sa.Column("checkpoint_sha256", sa.String(64), nullable=False),
        sa.Column("dataset_fingerprint", sa.String(64)),
        sa.Column("metrics", sa.JSON, nullable=False),
        sa.Column("test_macro_f1", sa.Float),
        sa.Column("diverged", sa.Boolean, nullable=False),
        sa.Column("created_at", sa.DateTime, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("decision_reason", sa.Text),
        sa.Column("promoted_at", sa.DateTime),
        sa.PrimaryKeyConstraint("id", name="pk_model_versions"),
        sa.UniqueConstraint("version", name="uq_model_versions_version"),
        sa.UniqueConstraint("checkpoint_sha256", name="uq_model_versions_checkpoint_sha256"),
        sa.CheckConstraint(_in("status", ("candidate", "champion", "retired", "rejected")),
                           name="ck_model_versions_status"),
    )
    op.create_index("uq_model_versions_one_champion", "model_versions", ["status"], unique=True,
                    sqlite_where=sa.text("status = 'champion'"),
                    postgresql_where=sa.text("status = 'champion'"))
    op.create_table(
        "promotion_decisions",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("decided_at", sa.DateTime, nullable=False),
        sa.Column("candidate_id", sa.Integer, nullable=False),
        sa.Column("champion_before_id", sa.Integer),
        sa.Column("promoted", sa.Boolean, nullable=False),
        sa.Column("candidate_macro_f1", sa.Float),
        sa.Column("champion_macro_f1", sa.Float),
        sa.Column("reason", sa.Text, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_promotion_decisions"),
        sa.ForeignKeyConstraint(["candidate_id"], ["model_versions.id"],
                                name="fk_promotion_decisions_candidate_id_model_versions"),
        sa.ForeignKeyConstraint(["champion_before_id"], ["model_versions.id"],
                                name="fk_promotion_decisions_champion_before_id_model_versions"),
    )
    op.create_table(
        "scoring_runs",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("interval_start", sa.DateTime),
        sa.Column("interval_end", sa.DateTime),
        sa.Column("shard_index", sa.Integer, nullable=False),
        sa.Column("shard_count", sa.Integer, nullable=False),
        sa.Column("model_version_id", sa.Integer, nullable=False),
        sa.Column("started_at", sa.DateTime, nullable=False),
        sa.Column("finished_at", sa.DateTime),
        *(sa.Column(name, sa.Integer, nullable=False)
          for name in ("n_frames", "n_faces", "n_no_face", "n_unreadable", "n_skipped")),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("error", sa.Text),
        sa.PrimaryKeyConstraint("id", name="pk_scoring_runs"),
        sa.ForeignKeyConstraint(["model_version_id"], ["model_versions.id"],
                                name="fk_scoring_runs_model_version_id_model_versions"),
        sa.CheckConstraint(_in("status", ("running", "succeeded", "failed")), name="ck_scoring_runs_status"),
    )
    op.create_table(
        "images",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("path", sa.String(1024), nullable=False),
        sa.Column("content_sha256", sa.String(64)),
        sa.Column("camera_id", sa.String(128), nullable=False),
        sa.Column("captured_at", sa.DateTime, nullable=False),
        sa.Column("width", sa.Integer),
        sa.Column("height", sa.Integer),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("reason", sa.Text),
        sa.Column("n_faces", sa.Integer, nullable=False),
        sa.Column("model_version_id", sa.Integer, nullable=False),
        sa.Column("scoring_run_id", sa.Integer),
        sa.Column("scored_at", sa.DateTime, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_images"),
        sa.UniqueConstraint("path", "model_version_id", name="uq_images_path_model_version_id"),
        sa.ForeignKeyConstraint(["model_version_id"], ["model_versions.id"],
                                name="fk_images_model_version_id_model_versions"),
        sa.ForeignKeyConstraint(["scoring_run_id"], ["scoring_runs.id"], ondelete="SET NULL",
                                name="fk_images_scoring_run_id_scoring_runs"),
        sa.CheckConstraint(_in("status", ("ok", "no_face", "unreadable")), name="ck_images_status"),
    )
    op.create_index("ix_images_captured_at", "images", ["captured_at"])
    op.create_index("ix_images_camera_id_captured_at", "images", ["camera_id", "captured_at"])
    op.create_index("ix_images_path_scored_at_id", "images", ["path", "scored_at", "id"])
    op.create_table(
        "faces",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("image_id", sa.Integer, nullable=False),
        sa.Column("face_index", sa.Integer, nullable=False),
        *(sa.Column(name, sa.Integer, nullable=False) for name in ("x1", "y1", "x2", "y2")),
        sa.Column("detector_score", sa.Float, nullable=False),
        sa.Column("label", sa.String(16), nullable=False),
        *(sa.Column(f"p_{name}", sa.Float, nullable=False) for name in CLASSES),
        sa.Column("confidence", sa.Float, nullable=False),
        sa.Column("model_version_id", sa.Integer, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_faces"),
        sa.UniqueConstraint("image_id", "face_index", name="uq_faces_image_id_face_index"),
        sa.ForeignKeyConstraint(["image_id"], ["images.id"], ondelete="CASCADE",
                                name="fk_faces_image_id_images"),
        sa.ForeignKeyConstraint(["model_version_id"], ["model_versions.id"],
                                name="fk_faces_model_version_id_model_versions"),
        sa.CheckConstraint(_in("label", CLASSES), name="ck_faces_label"),
    )


def downgrade() -> None:
    op.drop_table("faces")
    op.drop_table("images")
    op.drop_table("scoring_runs")
    op.drop_table("promotion_decisions")
    op.drop_index("uq_model_versions_one_champion", table_name="model_versions")
    op.drop_table("model_versions")
