"""The prediction database's schema: typed ORM tables and the analysts' views.

The schema is created and changed only by the Alembic migrations (``alembic/`` in the
repository, ``maskjob/migrations`` in the wheel); the ORM classes here mirror them (a test
compares the two). Every time column is :class:`UtcDateTime`: ``timestamptz`` on PostgreSQL,
text with an explicit ``+00:00`` on SQLite, aware UTC in Python. Images also store their
camera-local facts (zone name, UTC offset, local day) because SQLite has no zone database.
"""

from __future__ import annotations

import hashlib
import re
from datetime import UTC, date, datetime
from typing import Any, Sequence

import sqlalchemy as sa
from sqlalchemy import ForeignKey, Index, MetaData, UniqueConstraint
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

import maskjob
from maskjob.vocab import IMAGE_STATUSES, MODEL_STATUSES, REVIEW_LABELS, REVIEW_ROLES, RUN_STATUSES, VIOLATIONS

__all__ = [
    "Base", "Camera", "ModelVersion", "UtcDateTime", "PromotionDecision", "ScoringRun", "Image", "Face",
    "LatestScoring", "HourlyCount", "FaceReview", "ReviewUser", "REVIEW_STRATA", "SAMPLE_BUCKETS", "VIEW_NAMES",
    "face_predictions", "image_predictions", "daily_compliance", "face_summary", "path_key", "raw_text_bytes",
    "sample_hash", "violation_label",
]

VIEW_NAMES = ("face_predictions", "image_predictions", "daily_compliance")

# Where the review queue served a face (face_reviews.stratum): below the review threshold,
# a confident violation, the random sample of confident faces, or elsewhere (a page of one image).
REVIEW_STRATA: tuple[str, ...] = ("uncertain", "violation", "sample", "other")
# The queue's deterministic sample: Knuth's multiplicative hash of a face id (mod 2**32), in
# [0, SAMPLE_BUCKETS); a face is sampled when it is below review_sample_rate * SAMPLE_BUCKETS.
SAMPLE_BUCKETS = 10000
_UNREVIEWED = "reviewed_label IS NULL"


def violation_label(label_column: str = "label") -> str:
    """The SQL "``label_column`` is a violation", with the labels as literals: as migration 0007's
    partial index writes it (a planner proves a partial index applies only from the same terms)."""
    return f"{label_column} IN ({', '.join(repr(v) for v in VIOLATIONS)})"


def sample_hash(id_column: str = "id") -> str:
    """The SQL of the sample hash of ``id_column``: literal constants, the same text as in
    migration 0007's index (a planner uses an expression index only for the same expression;
    written without inner parentheses, as PostgreSQL reflects it, so that alembic's comparison
    of schema and migrations sees the same index)."""
    return f"({id_column} * 2654435761 % 4294967296 % {SAMPLE_BUCKETS})"


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


# SQLite: "2026-11-24 07:15:00.000000+00:00"; rows written before migration 0004 (no offset,
# maybe no fraction) still parse. SQLite's date functions read the suffix as UTC.
SQLITE_UTC_FORMAT = "%(year)04d-%(month)02d-%(day)02d %(hour)02d:%(minute)02d:%(second)02d.%(microsecond)06d+00:00"
_SQLITE_UTC_READ = re.compile(r"(\d+)-(\d+)-(\d+)[ T](\d+):(\d+):(\d+)(?:\.(\d{6}))?(?:\+00:00|Z)?$")


class UtcDateTime(sa.types.TypeDecorator[datetime]):
    """An instant stored as UTC: ``timestamptz`` on PostgreSQL, ``...+00:00`` text on SQLite.

    Binds aware times (converted to UTC) and naive ones (taken as UTC); reads aware UTC.
    """

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def load_dialect_impl(self, dialect: sa.Dialect) -> sa.types.TypeEngine[Any]:
        if dialect.name == "sqlite":
            return dialect.type_descriptor(sqlite.DATETIME(storage_format=SQLITE_UTC_FORMAT, regexp=_SQLITE_UTC_READ))
        return dialect.type_descriptor(sa.DateTime(timezone=True))

    def process_bind_param(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        aware = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
        return aware.replace(tzinfo=None) if dialect.name == "sqlite" else aware

    def process_result_value(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _path_key_default(context: Any) -> str:
    return path_key(context.get_current_parameters()["path"])


def _local_default(context: Any) -> tuple[date, int]:
    from maskjob.timeutil import local_facts, zone

    params = context.get_current_parameters()
    return local_facts(params["captured_at"], zone(params.get("timezone") or "UTC"))


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
    metrics: Mapped[dict[str, Any]] = mapped_column(sa.JSON().with_variant(postgresql.JSONB(), "postgresql"),
                                                    default=dict)
    test_macro_f1: Mapped[float | None] = mapped_column(sa.Float)
    diverged: Mapped[bool] = mapped_column(sa.Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)
    status: Mapped[str] = mapped_column(sa.String(16), default="candidate")
    decision_reason: Mapped[str | None] = mapped_column(sa.Text)
    promoted_at: Mapped[datetime | None] = mapped_column(UtcDateTime)


class PromotionDecision(Base):
    """One promotion verdict on a candidate, with the numbers it was based on."""

    __tablename__ = "promotion_decisions"

    id: Mapped[int] = mapped_column(primary_key=True)
    decided_at: Mapped[datetime] = mapped_column(UtcDateTime)
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
    interval_start: Mapped[datetime | None] = mapped_column(UtcDateTime)
    interval_end: Mapped[datetime | None] = mapped_column(UtcDateTime)
    shard_index: Mapped[int] = mapped_column(default=0)
    shard_count: Mapped[int] = mapped_column(default=1)
    model_version_id: Mapped[int] = mapped_column(ForeignKey("model_versions.id"))
    started_at: Mapped[datetime] = mapped_column(UtcDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    n_frames: Mapped[int] = mapped_column(default=0)
    n_faces: Mapped[int] = mapped_column(default=0)
    n_no_face: Mapped[int] = mapped_column(default=0)
    n_unreadable: Mapped[int] = mapped_column(default=0)
    n_skipped: Mapped[int] = mapped_column(default=0)
    status: Mapped[str] = mapped_column(sa.String(16), default="running")
    error: Mapped[str | None] = mapped_column(sa.Text)
    heartbeat_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
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
        Index("ix_images_model_version_id_captured_at", "model_version_id", "captured_at"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    path: Mapped[str] = mapped_column(sa.Text)
    path_key: Mapped[str] = mapped_column(sa.String(64), default=_path_key_default)
    content_sha256: Mapped[str | None] = mapped_column(sa.String(64))
    camera_id: Mapped[str] = mapped_column(sa.Text)
    captured_at: Mapped[datetime] = mapped_column(UtcDateTime)
    width: Mapped[int | None]
    height: Mapped[int | None]
    status: Mapped[str] = mapped_column(sa.String(16))
    reason: Mapped[str | None] = mapped_column(sa.Text)
    n_faces: Mapped[int] = mapped_column(default=0)
    # Face counts by label, written with the faces (migration 0005): what latest_scorings copies.
    n_with_mask: Mapped[int] = mapped_column(default=0, server_default=sa.text("0"))
    n_without_mask: Mapped[int] = mapped_column(default=0, server_default=sa.text("0"))
    n_partial_mask: Mapped[int] = mapped_column(default=0, server_default=sa.text("0"))
    # Reviews (migration 0007): faces reviewed, reviewed to another label than the model's
    # (not_a_face included), and reviewed as not_a_face. Once an image has a review, n_faces,
    # the n_<label> counts, the confidence extremes and status are over its final faces
    # (maskjob.storage.derived.refresh_summaries). No Python default: the writer's PostgreSQL
    # fast path needs every defaulted column in its rows.
    n_reviewed: Mapped[int] = mapped_column(server_default=sa.text("0"))
    n_changed: Mapped[int] = mapped_column(server_default=sa.text("0"))
    n_not_face: Mapped[int] = mapped_column(server_default=sa.text("0"))
    # The faces' confidence extremes (migration 0006), written with them; NULL without faces
    # (top_violation_confidence: without a without_mask or partial_mask face). The report
    # ranks and counts frames on them (latest_scorings copies them).
    top_violation_confidence: Mapped[float | None] = mapped_column(sa.Float)
    min_confidence: Mapped[float | None] = mapped_column(sa.Float)
    max_confidence: Mapped[float | None] = mapped_column(sa.Float)
    model_version_id: Mapped[int] = mapped_column(ForeignKey("model_versions.id"))
    scoring_run_id: Mapped[int | None] = mapped_column(ForeignKey("scoring_runs.id", ondelete="SET NULL"))
    scored_at: Mapped[datetime] = mapped_column(UtcDateTime)
    # Camera-local facts at capture, fixed at write time (migration 0004); a row inserted
    # without them is taken as UTC (the scorer always writes the camera's zone).
    timezone: Mapped[str] = mapped_column(sa.Text, default="UTC")
    utc_offset_s: Mapped[int] = mapped_column(default=lambda ctx: _local_default(ctx)[1])
    local_day: Mapped[date] = mapped_column(sa.Date, default=lambda ctx: _local_default(ctx)[0])

    faces: Mapped[list[Face]] = relationship(back_populates="image", cascade="all, delete-orphan",
                                             order_by="Face.face_index")


class Camera(Base):
    """A camera: its zone, site, and what is expected of it (``maskjob cameras``, migration 0004)."""

    __tablename__ = "cameras"
    __table_args__ = (
        sa.CheckConstraint("compliance_target >= 0 AND compliance_target <= 1", name="compliance_target"),
        sa.CheckConstraint("expected_frames_per_hour IS NULL OR expected_frames_per_hour >= 0",
                           name="expected_frames_per_hour"),
    )

    camera_id: Mapped[str] = mapped_column(sa.Text, primary_key=True)
    display_name: Mapped[str | None] = mapped_column(sa.Text)
    site: Mapped[str | None] = mapped_column(sa.Text)
    timezone: Mapped[str] = mapped_column(sa.Text)
    expected_frames_per_hour: Mapped[float | None] = mapped_column(sa.Float)
    compliance_target: Mapped[float] = mapped_column(sa.Float)
    auto_registered: Mapped[bool] = mapped_column(sa.Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime)


class Face(Base):
    """One detected face: pixel box, detector score, predicted label and class probabilities."""

    __tablename__ = "faces"
    __table_args__ = (
        # Leading image_id: this unique index is also the faces(image_id) access path.
        UniqueConstraint("image_id", "face_index"),
        sa.CheckConstraint(_in("label", maskjob.CLASSES), name="label"),
        # The review queue's access paths (migration 0007): unreviewed faces by confidence,
        # unreviewed violations by confidence, the other unreviewed faces by sample hash.
        Index("ix_faces_unreviewed_confidence", "confidence", "id",
              sqlite_where=sa.text(_UNREVIEWED), postgresql_where=sa.text(_UNREVIEWED)),
        Index("ix_faces_unreviewed_violation", "confidence", "id",
              sqlite_where=sa.text(f"{_UNREVIEWED} AND {violation_label()}"),
              postgresql_where=sa.text(f"{_UNREVIEWED} AND {violation_label()}")),
        Index("ix_faces_unreviewed_sample", sa.text(sample_hash()), "id",
              sqlite_where=sa.text(f"{_UNREVIEWED} AND NOT ({violation_label()})"),
              postgresql_where=sa.text(f"{_UNREVIEWED} AND NOT ({violation_label()})")),
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
    # The label of the face's latest review not undone, and that review (migration 0007);
    # NULL: unreviewed. The final label is COALESCE(reviewed_label, label).
    reviewed_label: Mapped[str | None] = mapped_column(sa.String(16))
    review_id: Mapped[int | None]

    image: Mapped[Image] = relationship(back_populates="faces")


class FaceReview(Base):
    """One reviewer's decision on a face (migration 0007): the append-only audit trail.

    The face's image, path, camera, capture time, local day and box are copied, so the row
    outlives a rescoring or a deleted face (``face_id``/``image_id`` then NULL). An undo sets
    ``undone_at``/``undone_by`` and keeps the row. A face's latest review that is not undone
    gives its ``reviewed_label``.
    """

    __tablename__ = "face_reviews"
    __table_args__ = (
        sa.CheckConstraint(_in("label", REVIEW_LABELS), name="label"),
        sa.CheckConstraint(_in("stratum", REVIEW_STRATA), name="stratum"),
        Index("ix_face_reviews_face_id_reviewed_at_id", "face_id", "reviewed_at", "id"),
        Index("ix_face_reviews_reviewed_at", "reviewed_at"),
        Index("ix_face_reviews_camera_id_local_day", "camera_id", "local_day"),
        # The report's review statistics start from the window's reviews.
        Index("ix_face_reviews_captured_at", "captured_at"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    face_id: Mapped[int | None] = mapped_column(ForeignKey("faces.id", ondelete="SET NULL"))
    image_id: Mapped[int | None] = mapped_column(ForeignKey("images.id", ondelete="SET NULL"))
    image_path: Mapped[str] = mapped_column(sa.Text)
    camera_id: Mapped[str] = mapped_column(sa.Text)
    captured_at: Mapped[datetime] = mapped_column(UtcDateTime)
    local_day: Mapped[date] = mapped_column(sa.Date)
    x1: Mapped[int]
    y1: Mapped[int]
    x2: Mapped[int]
    y2: Mapped[int]
    reviewer: Mapped[str] = mapped_column(sa.Text)
    label: Mapped[str] = mapped_column(sa.String(16))
    model_label: Mapped[str] = mapped_column(sa.String(16))
    model_confidence: Mapped[float] = mapped_column(sa.Float)
    model_version_id: Mapped[int]
    stratum: Mapped[str] = mapped_column(sa.String(16))
    reviewed_at: Mapped[datetime] = mapped_column(UtcDateTime)
    note: Mapped[str | None] = mapped_column(sa.Text)
    undone_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    undone_by: Mapped[str | None] = mapped_column(sa.Text)


class ReviewUser(Base):
    """An account of the review page (migration 0007): a password hash and a role of
    :data:`maskjob.vocab.REVIEW_ROLES`; a disabled account cannot log in."""

    __tablename__ = "review_users"
    __table_args__ = (sa.CheckConstraint(_in("role", REVIEW_ROLES), name="role"),)

    username: Mapped[str] = mapped_column(sa.Text, primary_key=True)
    password_hash: Mapped[str] = mapped_column(sa.Text)
    role: Mapped[str] = mapped_column(sa.String(16))
    disabled: Mapped[bool] = mapped_column(sa.Boolean, default=False, server_default=sa.false())
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=lambda: datetime.now(UTC))
    password_changed_at: Mapped[datetime] = mapped_column(UtcDateTime, default=lambda: datetime.now(UTC))


class LatestScoring(Base):
    """The scoring that counts for one path (migration 0005): its image and the columns the
    views filter and count on, copied from it.

    The rule: among the images of a ``path_key``, the latest ``scored_at``, then the highest
    ``id``. Database triggers keep this table (and :class:`HourlyCount`) right in the
    transaction of every write to ``images``; :func:`maskjob.storage.derived.rebuild`
    recomputes both from scratch.
    """

    __tablename__ = "latest_scorings"
    __table_args__ = (
        # Covering (migration 0006): the week queries and the report read the entries only.
        Index("ix_latest_scorings_captured_at", "captured_at", "camera_id", "status", "n_faces", "n_with_mask",
              "n_without_mask", "n_partial_mask", "min_confidence", "max_confidence", "image_id"),
        Index("ix_latest_scorings_camera_id_captured_at", "camera_id", "captured_at", "status", "n_faces",
              "n_with_mask", "n_without_mask", "n_partial_mask", "top_violation_confidence", "min_confidence",
              "max_confidence", "image_id"),
        Index("ix_latest_scorings_local_day_camera_id", "local_day", "camera_id"),
        Index("ix_latest_scorings_status_captured_at", "status", "captured_at"),
    )

    path_key: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id"), unique=True)
    model_version_id: Mapped[int]
    camera_id: Mapped[str] = mapped_column(sa.Text)
    captured_at: Mapped[datetime] = mapped_column(UtcDateTime)
    scored_at: Mapped[datetime] = mapped_column(UtcDateTime)
    timezone: Mapped[str] = mapped_column(sa.Text)
    local_day: Mapped[date] = mapped_column(sa.Date)
    hour_utc: Mapped[datetime] = mapped_column(UtcDateTime)  # captured_at floored to the UTC hour
    status: Mapped[str] = mapped_column(sa.String(16))
    n_faces: Mapped[int]
    n_with_mask: Mapped[int]
    n_without_mask: Mapped[int]
    n_partial_mask: Mapped[int]
    top_violation_confidence: Mapped[float | None] = mapped_column(sa.Float)
    min_confidence: Mapped[float | None] = mapped_column(sa.Float)
    max_confidence: Mapped[float | None] = mapped_column(sa.Float)
    # The image's review counts (migration 0007); its n_* and extremes above are already final.
    n_reviewed: Mapped[int] = mapped_column(server_default=sa.text("0"))
    n_changed: Mapped[int] = mapped_column(server_default=sa.text("0"))
    n_not_face: Mapped[int] = mapped_column(server_default=sa.text("0"))


class HourlyCount(Base):
    """Sums over :class:`LatestScoring` per UTC hour, camera, local day, zone and model version.

    ``compliant`` counts frames with status ``ok``, faces, and every face ``with_mask``. A row
    whose ``images`` fell to 0 (its frames were rescored into another key) may remain:
    readers filter ``images > 0``.
    """

    __tablename__ = "hourly_counts"
    __table_args__ = (
        Index("ix_hourly_counts_camera_id_hour_utc", "camera_id", "hour_utc"),
        Index("ix_hourly_counts_local_day_camera_id", "local_day", "camera_id"),
    )

    hour_utc: Mapped[datetime] = mapped_column(UtcDateTime, primary_key=True)
    camera_id: Mapped[str] = mapped_column(sa.Text, primary_key=True)
    local_day: Mapped[date] = mapped_column(sa.Date, primary_key=True)
    timezone: Mapped[str] = mapped_column(sa.Text, primary_key=True)
    model_version_id: Mapped[int] = mapped_column(primary_key=True)
    images: Mapped[int]
    ok: Mapped[int]
    no_face: Mapped[int]
    unreadable: Mapped[int]
    faces: Mapped[int]
    with_mask: Mapped[int]
    without_mask: Mapped[int]
    partial_mask: Mapped[int]
    compliant: Mapped[int]
    # Sums of latest_scorings' n_reviewed, n_changed, n_not_face (migration 0007).
    reviewed: Mapped[int] = mapped_column(server_default=sa.text("0"))
    changed: Mapped[int] = mapped_column(server_default=sa.text("0"))
    not_face: Mapped[int] = mapped_column(server_default=sa.text("0"))


# The analysts' views, created by migration 0002 (ranked per path_key since 0003, local time
# since 0004, reading latest_scorings and hourly_counts since 0005, final labels since 0007:
# face_predictions leaves out not_a_face faces, and every count is over final labels). Declared here (outside
# Base.metadata, so never created as tables) for typed Core queries: ``day``/``local_day`` read
# as dates on both databases. ``captured_local`` is the camera's wall time: a timestamp on
# PostgreSQL, text with its offset on SQLite.
_views = MetaData()


face_predictions = sa.Table(
    "face_predictions", _views,
    sa.Column("image_id", sa.Integer), sa.Column("image_path", sa.String),
    sa.Column("camera_id", sa.String), sa.Column("captured_at", UtcDateTime),
    sa.Column("face_index", sa.Integer),
    *(sa.Column(name, sa.Integer) for name in ("x1", "y1", "x2", "y2")),
    sa.Column("detector_score", sa.Float), sa.Column("label", sa.String),
    *(sa.Column(f"p_{name}", sa.Float) for name in maskjob.CLASSES),
    sa.Column("confidence", sa.Float), sa.Column("model_version", sa.String),
    sa.Column("scored_at", UtcDateTime),
    sa.Column("captured_local", sa.String), sa.Column("timezone", sa.String), sa.Column("local_day", sa.Date),
    sa.Column("face_id", sa.Integer), sa.Column("reviewed_label", sa.String), sa.Column("final_label", sa.String),
)


image_predictions = sa.Table(
    "image_predictions", _views,
    sa.Column("image_id", sa.Integer), sa.Column("image_path", sa.String),
    sa.Column("camera_id", sa.String), sa.Column("captured_at", UtcDateTime),
    sa.Column("status", sa.String), sa.Column("reason", sa.String),
    sa.Column("width", sa.Integer), sa.Column("height", sa.Integer),
    sa.Column("n_faces", sa.Integer),
    *(sa.Column(f"n_{name}", sa.Integer) for name in maskjob.CLASSES),
    sa.Column("compliant", sa.Integer), sa.Column("model_version", sa.String),
    sa.Column("scored_at", UtcDateTime),
    sa.Column("captured_local", sa.String), sa.Column("timezone", sa.String), sa.Column("local_day", sa.Date),
    sa.Column("n_reviewed", sa.Integer), sa.Column("n_changed", sa.Integer),
)


daily_compliance = sa.Table(
    "daily_compliance", _views,
    sa.Column("day", sa.Date), sa.Column("camera_id", sa.String),
    *(sa.Column(name, sa.Integer) for name in ("images", "no_face", "unreadable", "faces", *maskjob.CLASSES)),
    sa.Column("compliance_rate", sa.Float), sa.Column("timezone", sa.String),
    sa.Column("compliant_frames", sa.Integer),
    sa.Column("reviewed_faces", sa.Integer), sa.Column("changed_faces", sa.Integer),
)


def face_summary(faces: Sequence[tuple[str, float]]) -> dict[str, Any]:
    """The images columns summarising a frame's faces, given as ``(label, confidence)`` pairs:
    ``n_faces``, ``n_<label>`` per class, ``top_violation_confidence``, ``min_confidence`` and ``max_confidence``."""
    labels = [label for label, _ in faces]
    violations = [confidence for label, confidence in faces if label in VIOLATIONS]
    return {"n_faces": len(faces), **{f"n_{label}": labels.count(label) for label in maskjob.CLASSES},
            "top_violation_confidence": max(violations, default=None),
            "min_confidence": min((confidence for _, confidence in faces), default=None),
            "max_confidence": max((confidence for _, confidence in faces), default=None)}


@sa.event.listens_for(Image, "before_insert")
def _summary_from_faces(mapper: Any, connection: Any, target: Image) -> None:
    """An image written through the ORM with its faces gets the per-label counts and confidence
    extremes that :func:`maskjob.storage.writes.insert_scored_images` fills in."""
    if target.faces:
        summary = face_summary([(face.label, face.confidence) for face in target.faces])
        del summary["n_faces"]
        for column, value in summary.items():
            setattr(target, column, value)
