"""The prediction database's schema: typed ORM tables and the analysts' views.

The schema is created and changed only by the Alembic migrations (``alembic/`` in the
repository, ``maskjob/migrations`` in the wheel); the ORM classes here mirror them (a test
compares the two). Times are naive UTC.
"""

from __future__ import annotations

import hashlib
from datetime import datetime
from typing import Any, Sequence

import sqlalchemy as sa
from sqlalchemy import ForeignKey, Index, MetaData, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

import maskjob
from maskjob.vocab import IMAGE_STATUSES, MODEL_STATUSES, RUN_STATUSES

__all__ = [
    "Base", "ModelVersion", "PromotionDecision", "ScoringRun", "Image", "Face", "VIEW_NAMES",
    "face_predictions", "image_predictions", "daily_compliance", "path_key", "raw_text_bytes",
]

VIEW_NAMES = ("face_predictions", "image_predictions", "daily_compliance")


# Explicit constraint names keep migrations, batch mode on SQLite and downgrades stable.
NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def _in(column: str, values: Sequence[str]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


def raw_text_bytes(text: str) -> bytes:
    """``text`` as the bytes it stands for: UTF-8, with the lone surrogates Python uses for
    undecodable file-name bytes turned back into those bytes (``os.fsencode`` on Linux)."""
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        try:
            return text.encode("utf-8", "surrogateescape")
        except UnicodeEncodeError:
            return text.encode("utf-8", "surrogatepass")


def path_key(path: str) -> str:
    """``images.path_key``: the sha256 (hex) of the path's bytes, ``sha256(path.encode())``
    for any path that is valid UTF-8 (migration 0003 computes it that way in SQL)."""
    return hashlib.sha256(raw_text_bytes(path)).hexdigest()


def _path_key_default(context: Any) -> str:
    return path_key(context.get_current_parameters()["path"])


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class ModelVersion(Base):
    """A registered checkpoint and where it stands in champion/challenger promotion."""

    __tablename__ = "model_versions"
    __table_args__ = (
        sa.CheckConstraint(_in("status", MODEL_STATUSES), name="status"),
        # At most one champion, enforced by the database even under concurrent promotions.
        Index("uq_model_versions_one_champion", "status", unique=True,
              sqlite_where=sa.text("status = 'champion'"), postgresql_where=sa.text("status = 'champion'")),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    version: Mapped[str] = mapped_column(sa.String(128), unique=True)
    arch: Mapped[str] = mapped_column(sa.String(64))
    checkpoint_path: Mapped[str] = mapped_column(sa.Text)
    checkpoint_sha256: Mapped[str] = mapped_column(sa.String(64), unique=True)
    dataset_fingerprint: Mapped[str | None] = mapped_column(sa.String(64))
    metrics: Mapped[dict[str, Any]] = mapped_column(sa.JSON, default=dict)
    test_macro_f1: Mapped[float | None] = mapped_column(sa.Float)
    diverged: Mapped[bool] = mapped_column(sa.Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(sa.DateTime)
    status: Mapped[str] = mapped_column(sa.String(16), default="candidate")
    decision_reason: Mapped[str | None] = mapped_column(sa.Text)
    promoted_at: Mapped[datetime | None] = mapped_column(sa.DateTime)


class PromotionDecision(Base):
    """One promotion verdict on a candidate, with the numbers it was based on."""

    __tablename__ = "promotion_decisions"

    id: Mapped[int] = mapped_column(primary_key=True)
    decided_at: Mapped[datetime] = mapped_column(sa.DateTime)
    candidate_id: Mapped[int] = mapped_column(ForeignKey("model_versions.id"))
    champion_before_id: Mapped[int | None] = mapped_column(ForeignKey("model_versions.id"))
    promoted: Mapped[bool] = mapped_column(sa.Boolean)
    candidate_macro_f1: Mapped[float | None] = mapped_column(sa.Float)
    champion_macro_f1: Mapped[float | None] = mapped_column(sa.Float)
    reason: Mapped[str] = mapped_column(sa.Text)

    candidate: Mapped[ModelVersion] = relationship(foreign_keys=[candidate_id])


class ScoringRun(Base):
    """One shard of one scoring interval.

    A ``running`` row is a lease on its (model, shard, interval): its process refreshes
    ``heartbeat_at`` (database clock, naive UTC) every few seconds, and another run may close
    it as failed only once the heartbeat is older than ``lease_s`` seconds.
    """

    __tablename__ = "scoring_runs"
    __table_args__ = (sa.CheckConstraint(_in("status", RUN_STATUSES), name="status"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    interval_start: Mapped[datetime | None] = mapped_column(sa.DateTime)
    interval_end: Mapped[datetime | None] = mapped_column(sa.DateTime)
    shard_index: Mapped[int] = mapped_column(default=0)
    shard_count: Mapped[int] = mapped_column(default=1)
    model_version_id: Mapped[int] = mapped_column(ForeignKey("model_versions.id"))
    started_at: Mapped[datetime] = mapped_column(sa.DateTime)
    finished_at: Mapped[datetime | None] = mapped_column(sa.DateTime)
    n_frames: Mapped[int] = mapped_column(default=0)
    n_faces: Mapped[int] = mapped_column(default=0)
    n_no_face: Mapped[int] = mapped_column(default=0)
    n_unreadable: Mapped[int] = mapped_column(default=0)
    n_skipped: Mapped[int] = mapped_column(default=0)
    status: Mapped[str] = mapped_column(sa.String(16), default="running")
    error: Mapped[str | None] = mapped_column(sa.Text)
    heartbeat_at: Mapped[datetime | None] = mapped_column(sa.DateTime)
    lease_s: Mapped[float | None] = mapped_column(sa.Float)
    pid: Mapped[int | None]
    hostname: Mapped[str | None] = mapped_column(sa.Text)


class Image(Base):
    """One CCTV frame as scored by one model version (``path`` is relative to the inbox).

    ``path`` and ``camera_id`` are TEXT: a path of any length is stored in full. The unique key
    is ``(path_key, model_version_id)`` with ``path_key`` = :func:`path_key` (a PostgreSQL
    btree entry holds at most 2704 bytes, a path can be longer); ``ix_images_path`` serves
    lookups by path (a hash index on PostgreSQL, so of any length; a btree on SQLite).
    """

    __tablename__ = "images"
    __table_args__ = (
        UniqueConstraint("path_key", "model_version_id"),
        sa.CheckConstraint(_in("status", IMAGE_STATUSES), name="status"),
        Index("ix_images_captured_at", "captured_at"),
        Index("ix_images_camera_id_captured_at", "camera_id", "captured_at"),
        # Serves the views' "latest scoring per path" window.
        Index("ix_images_path_key_scored_at_id", "path_key", "scored_at", "id"),
        Index("ix_images_path", "path", postgresql_using="hash"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    path: Mapped[str] = mapped_column(sa.Text)
    path_key: Mapped[str] = mapped_column(sa.String(64), default=_path_key_default)
    content_sha256: Mapped[str | None] = mapped_column(sa.String(64))
    camera_id: Mapped[str] = mapped_column(sa.Text)
    captured_at: Mapped[datetime] = mapped_column(sa.DateTime)
    width: Mapped[int | None]
    height: Mapped[int | None]
    status: Mapped[str] = mapped_column(sa.String(16))
    reason: Mapped[str | None] = mapped_column(sa.Text)
    n_faces: Mapped[int] = mapped_column(default=0)
    model_version_id: Mapped[int] = mapped_column(ForeignKey("model_versions.id"))
    scoring_run_id: Mapped[int | None] = mapped_column(ForeignKey("scoring_runs.id", ondelete="SET NULL"))
    scored_at: Mapped[datetime] = mapped_column(sa.DateTime)

    faces: Mapped[list[Face]] = relationship(back_populates="image", cascade="all, delete-orphan",
                                             order_by="Face.face_index")


class Face(Base):
    """One detected face: pixel box, detector score, predicted label and class probabilities."""

    __tablename__ = "faces"
    __table_args__ = (
        # Leading image_id: this unique index is also the faces(image_id) access path.
        UniqueConstraint("image_id", "face_index"),
        sa.CheckConstraint(_in("label", maskjob.CLASSES), name="label"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"))
    face_index: Mapped[int]
    x1: Mapped[int]
    y1: Mapped[int]
    x2: Mapped[int]
    y2: Mapped[int]
    detector_score: Mapped[float] = mapped_column(sa.Float)
    label: Mapped[str] = mapped_column(sa.String(16))
    p_with_mask: Mapped[float] = mapped_column(sa.Float)
    p_without_mask: Mapped[float] = mapped_column(sa.Float)
    p_partial_mask: Mapped[float] = mapped_column(sa.Float)
    confidence: Mapped[float] = mapped_column(sa.Float)
    model_version_id: Mapped[int] = mapped_column(ForeignKey("model_versions.id"))

    image: Mapped[Image] = relationship(back_populates="faces")


# The analysts' views, created by migration 0002 (ranked per path_key since 0003). Declared
# here (outside Base.metadata, so never created as tables) for typed Core queries: ``day``
# reads as a date on both databases.
_views = MetaData()


face_predictions = sa.Table(
    "face_predictions", _views,
    sa.Column("image_id", sa.Integer), sa.Column("image_path", sa.String),
    sa.Column("camera_id", sa.String), sa.Column("captured_at", sa.DateTime),
    sa.Column("face_index", sa.Integer),
    *(sa.Column(name, sa.Integer) for name in ("x1", "y1", "x2", "y2")),
    sa.Column("detector_score", sa.Float), sa.Column("label", sa.String),
    *(sa.Column(f"p_{name}", sa.Float) for name in maskjob.CLASSES),
    sa.Column("confidence", sa.Float), sa.Column("model_version", sa.String),
    sa.Column("scored_at", sa.DateTime),
)


image_predictions = sa.Table(
    "image_predictions", _views,
    sa.Column("image_id", sa.Integer), sa.Column("image_path", sa.String),
    sa.Column("camera_id", sa.String), sa.Column("captured_at", sa.DateTime),
    sa.Column("status", sa.String), sa.Column("reason", sa.String),
    sa.Column("width", sa.Integer), sa.Column("height", sa.Integer),
    sa.Column("n_faces", sa.Integer),
    *(sa.Column(f"n_{name}", sa.Integer) for name in maskjob.CLASSES),
    sa.Column("compliant", sa.Integer), sa.Column("model_version", sa.String),
    sa.Column("scored_at", sa.DateTime),
)


daily_compliance = sa.Table(
    "daily_compliance", _views,
    sa.Column("day", sa.Date), sa.Column("camera_id", sa.String),
    *(sa.Column(name, sa.Integer) for name in ("images", "no_face", "unreadable", "faces", *maskjob.CLASSES)),
    sa.Column("compliance_rate", sa.Float),
)
