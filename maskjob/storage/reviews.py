"""Reviews of faces (migration 0007): the queue, decisions and undo, and what they feed.

A reviewer's decision is a ``face_reviews`` row (append-only; an undo marks it). A face's
latest review that is not undone gives ``faces.reviewed_label`` and ``faces.review_id``; the
final label is ``COALESCE(reviewed_label, label)``. Each write recomputes its image's summary
columns from the final labels (:func:`maskjob.storage.derived.refresh_summaries`) in the same
transaction, and the database's triggers carry them to ``latest_scorings``, ``hourly_counts``
and so to every view and report.

The queue serves unreviewed faces of the scorings that count, in three strata: ``uncertain``
(confidence below ``review_threshold``, least confident first), ``violation`` (a confident
``without_mask``/``partial_mask``, least confident first), ``sample`` (a deterministic
``review_sample_rate`` share of the other, confident ``with_mask`` faces, chosen from the face
id in SQL, so that the agreement measured on it is an unbiased estimate for them).

Example:
    >>> items = review_queue(engine, settings, limit=5)                  # doctest: +SKIP
    >>> review_id = record_review(engine, items[0].face_id, "ana", "without_mask",
    ...                           stratum=items[0].stratum)              # doctest: +SKIP
    >>> undo_review(engine, review_id, "ana")                            # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any, Sequence

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from maskjob.config import Settings
from maskjob.errors import MaskjobError
from maskjob.storage import derived
from maskjob.storage.schema import (
    REVIEW_STRATA, SAMPLE_BUCKETS, Face, FaceReview, Image, LatestScoring, ModelVersion, sample_hash,
    violation_label,
)
from maskjob.timeutil import to_utc, utcnow
from maskjob.vocab import NOT_A_FACE, REVIEW_LABELS

__all__ = [
    "QUEUE_STRATA", "CameraReviewStats", "QueueItem", "ReviewRecord", "StratumStats", "queue_counts", "record_review",
    "review_queue", "review_stats", "reviews_for_export", "undo_review",
]

_faces = Face.__table__
_images = Image.__table__
_latest = LatestScoring.__table__
_versions = ModelVersion.__table__
_reviews = FaceReview.__table__

# The queue's three strata, in the order it serves them.
QUEUE_STRATA = ("uncertain", "violation", "sample")
# Written as migration 0007's indexes write them, so that the planners use those.
_SAMPLE_HASH = sa.literal_column(sample_hash("faces.id"))
_VIOLATION = sa.text(violation_label("faces.label"))
_NOT_VIOLATION = sa.text(f"NOT ({violation_label('faces.label')})")


@dataclass(frozen=True)
class QueueItem:
    """An unreviewed face to show: where it is, what the model said, and why it is queued."""

    face_id: int
    image_id: int
    image_path: str
    camera_id: str
    captured_at: datetime  # aware UTC
    timezone: str
    local_day: date
    x1: int
    y1: int
    x2: int
    y2: int
    label: str
    p_with_mask: float
    p_without_mask: float
    p_partial_mask: float
    confidence: float
    model_version: str
    stratum: str
    image_width: int | None
    image_height: int | None


@dataclass(frozen=True)
class ReviewRecord:
    """A face's latest live review, with what a training export needs (the box and provenance)."""

    review_id: int
    face_id: int | None  # None once the face was deleted; the copied facts remain
    image_id: int | None
    reviewer: str
    label: str
    model_label: str
    model_confidence: float
    model_version_id: int
    image_path: str
    camera_id: str
    captured_at: datetime  # aware UTC
    local_day: date
    x1: int
    y1: int
    x2: int
    y2: int
    reviewed_at: datetime  # aware UTC
    stratum: str
    note: str | None


@dataclass(frozen=True)
class StratumStats:
    """Faces of one queue stratum reviewed, and how many of them the model got right."""

    reviewed: int
    agreed: int


@dataclass(frozen=True)
class CameraReviewStats:
    """One camera's reviews over a window: faces reviewed, changed (``not_a_face`` included),
    marked ``not_a_face``, agreed with the model, and the same per stratum (``strata`` has a
    key only for strata with reviews)."""

    camera_id: str
    reviewed: int
    changed: int
    not_face: int
    agreed: int
    strata: dict[str, StratumStats] = field(default_factory=dict)


def _queue_base(camera: str | None, exclude_face_ids: Sequence[int]) -> sa.Select[Any]:
    """Unreviewed faces of the scorings that count, with what a QueueItem shows."""
    stmt = (sa.select(_faces.c.id.label("face_id"), _faces.c.image_id, _images.c.path.label("image_path"),
                      _latest.c.camera_id, _latest.c.captured_at, _latest.c.timezone, _latest.c.local_day,
                      _faces.c.x1, _faces.c.y1, _faces.c.x2, _faces.c.y2, _faces.c.label, _faces.c.p_with_mask,
                      _faces.c.p_without_mask, _faces.c.p_partial_mask, _faces.c.confidence,
                      _versions.c.version.label("model_version"), _images.c.width.label("image_width"),
                      _images.c.height.label("image_height"))
            .select_from(_faces.join(_latest, _latest.c.image_id == _faces.c.image_id)
                         .join(_images, _images.c.id == _faces.c.image_id)
                         .join(_versions, _versions.c.id == _faces.c.model_version_id))
            .where(_faces.c.reviewed_label.is_(None)))
    if camera is not None:
        stmt = stmt.where(_latest.c.camera_id == camera)
    if exclude_face_ids:
        stmt = stmt.where(_faces.c.id.not_in(list(exclude_face_ids)))
    return stmt


def _sample_cut(settings: Settings) -> int:
    """The sample hash bound: faces hashing below it are sampled (the rate, in steps of 1/SAMPLE_BUCKETS)."""
    return round(settings.review_sample_rate * SAMPLE_BUCKETS)


def _stratum_filters(settings: Settings) -> dict[str, tuple[list[Any], list[Any]]]:
    """Per queue stratum, its conditions on unreviewed faces and its order."""
    threshold = settings.review_threshold
    confident = _faces.c.confidence >= threshold
    by_confidence = [_faces.c.confidence, _faces.c.id]
    return {
        "uncertain": ([_faces.c.confidence < threshold], by_confidence),
        "violation": ([confident, _VIOLATION], by_confidence),
        "sample": ([confident, _NOT_VIOLATION, _SAMPLE_HASH < _sample_cut(settings)],
                   [_SAMPLE_HASH, _faces.c.id]),
    }


def review_queue(engine: Engine, settings: Settings, *, limit: int = 20, camera: str | None = None,
                 exclude_face_ids: Sequence[int] = ()) -> list[QueueItem]:
    """Up to ``limit`` unreviewed faces of the scorings that count, in queue order: every
    ``uncertain`` face (least confident first), then ``violation``, then ``sample`` (by hash).

    Args:
        engine: the prediction database.
        settings: ``review_threshold`` and ``review_sample_rate`` are read.
        limit: the most faces returned.
        camera: only this camera's faces.
        exclude_face_ids: faces not to serve (skipped, or already on the reviewer's page).

    Returns:
        The faces, each with its stratum.
    """
    items: list[QueueItem] = []
    with engine.connect() as conn:
        for stratum, (conditions, order) in _stratum_filters(settings).items():
            if len(items) >= limit:
                break
            stmt = _queue_base(camera, exclude_face_ids).where(*conditions).order_by(*order).limit(limit - len(items))
            items += [QueueItem(**row._mapping, stratum=stratum) for row in conn.execute(stmt)]
    return items


def queue_counts(engine: Engine, settings: Settings, *, camera: str | None = None) -> dict[str, int]:
    """Unreviewed faces of the scorings that count, per queue stratum (``uncertain``,
    ``violation``, ``sample``; confident ``with_mask`` faces outside the sample are not queued)."""
    filters = _stratum_filters(settings)
    sums = [sa.func.coalesce(sa.func.sum(sa.case((sa.and_(*filters[s][0]), 1), else_=0)), 0).label(s)
            for s in QUEUE_STRATA]
    stmt = (sa.select(*sums).select_from(_faces.join(_latest, _latest.c.image_id == _faces.c.image_id))
            .where(_faces.c.reviewed_label.is_(None)))
    if camera is not None:
        stmt = stmt.where(_latest.c.camera_id == camera)
    with engine.connect() as conn:
        row = conn.execute(stmt).one()
    return {s: int(row._mapping[s]) for s in QUEUE_STRATA}


def _check(label: str, stratum: str, reviewer: str) -> None:
    if label not in REVIEW_LABELS:
        raise MaskjobError(f"unknown review label {label!r}: use one of {', '.join(REVIEW_LABELS)}.")
    if stratum not in REVIEW_STRATA:
        raise MaskjobError(f"unknown review stratum {stratum!r}: use one of {', '.join(REVIEW_STRATA)}.")
    if not reviewer or not reviewer.strip():
        raise MaskjobError("a review needs the reviewer's user name: log in (or pass the reviewer).")


def _settle_face(conn: Connection, face_id: int) -> None:
    """faces.reviewed_label/review_id from the face's latest review not undone (or NULL)."""
    latest = conn.execute(
        sa.select(_reviews.c.id, _reviews.c.label)
        .where(_reviews.c.face_id == face_id, _reviews.c.undone_at.is_(None))
        .order_by(_reviews.c.reviewed_at.desc(), _reviews.c.id.desc()).limit(1)).first()
    conn.execute(sa.update(_faces).where(_faces.c.id == face_id).values(
        reviewed_label=None if latest is None else latest.label, review_id=None if latest is None else latest.id))


def record_review(engine: Engine, face_id: int, reviewer: str, label: str, *, note: str | None = None,
                  stratum: str = "other", now: datetime | None = None) -> int:
    """Record ``reviewer``'s decision ``label`` (a class or ``not_a_face``) on a face, in one transaction.

    Appends the ``face_reviews`` row (the face's box, image and the model's label, confidence
    and version copied), sets the face's ``reviewed_label``/``review_id`` to its latest live
    review (this one, unless a later ``reviewed_at`` exists), and recomputes its image's
    summary; the triggers update the derived tables. A face may be reviewed again: the latest
    review wins and the history stays.

    Args:
        stratum: where the queue served the face (:data:`~maskjob.storage.schema.REVIEW_STRATA`).
        now: the review time (default: now), aware or naive UTC.

    Returns:
        The review's id.

    Raises:
        MaskjobError: an unknown face, label or stratum, or no reviewer.
    """
    _check(label, stratum, reviewer)
    reviewed_at = to_utc(now) if now is not None else utcnow()
    with engine.begin() as conn:
        # The image row is locked (PostgreSQL; SQLite writers take the database lock at
        # BEGIN): concurrent reviews of one frame's faces recompute its summary in turn.
        face = conn.execute(
            sa.select(_faces.c.id, _faces.c.image_id, _faces.c.x1, _faces.c.y1, _faces.c.x2, _faces.c.y2,
                      _faces.c.label, _faces.c.confidence, _faces.c.model_version_id, _images.c.path,
                      _images.c.camera_id, _images.c.captured_at, _images.c.local_day)
            .select_from(_faces.join(_images, _images.c.id == _faces.c.image_id))
            .where(_faces.c.id == face_id).with_for_update(of=_images)).first()
        if face is None:
            raise MaskjobError(f"no face with id {face_id}: it was deleted or never existed. Reload the review "
                               "queue and review a face it shows.")
        review_id = conn.execute(sa.insert(_reviews).returning(_reviews.c.id), {
            "face_id": face.id, "image_id": face.image_id, "image_path": face.path, "camera_id": face.camera_id,
            "captured_at": face.captured_at, "local_day": face.local_day, "x1": face.x1, "y1": face.y1,
            "x2": face.x2, "y2": face.y2, "reviewer": reviewer, "label": label, "model_label": face.label,
            "model_confidence": face.confidence, "model_version_id": face.model_version_id, "stratum": stratum,
            "reviewed_at": reviewed_at, "note": note}).scalar_one()
        _settle_face(conn, face.id)
        derived.refresh_summaries(conn, [face.image_id])
    return review_id


def undo_review(engine: Engine, review_id: int, reviewer: str, *, now: datetime | None = None) -> None:
    """Undo a review: marks it undone (by ``reviewer``, at ``now``; the row stays), the face
    falls back to its previous live review (or to unreviewed), and its image's summary is
    recomputed, in one transaction.

    Raises:
        MaskjobError: an unknown review, one already undone, or no reviewer.
    """
    if not reviewer or not reviewer.strip():
        raise MaskjobError("undoing a review needs the reviewer's user name: log in (or pass the reviewer).")
    undone_at = to_utc(now) if now is not None else utcnow()
    with engine.begin() as conn:
        review = conn.execute(sa.select(_reviews.c.face_id, _reviews.c.image_id, _reviews.c.undone_at)
                              .where(_reviews.c.id == review_id).with_for_update()).first()
        if review is None:
            raise MaskjobError(f"no review with id {review_id}: nothing to undo.")
        if review.image_id is not None:  # lock the frame before reading its faces (as record_review)
            conn.execute(sa.select(_images.c.id).where(_images.c.id == review.image_id).with_for_update())
        if review.undone_at is not None:
            raise MaskjobError(f"review {review_id} was already undone at {review.undone_at:%Y-%m-%d %H:%M} UTC.")
        conn.execute(sa.update(_reviews).where(_reviews.c.id == review_id).values(undone_at=undone_at,
                                                                                  undone_by=reviewer))
        if review.face_id is not None:
            _settle_face(conn, review.face_id)
            derived.refresh_summaries(conn, [review.image_id])


def reviews_for_export(engine: Engine, *, since: datetime | None = None) -> list[ReviewRecord]:
    """The latest live review of every face ever reviewed, without those whose latest review
    is ``not_a_face``; ``since``: only those reviewed at or after it. Ordered by review time, then id.

    A face is a box in a frame, ``(image_path, x1, y1, x2, y2)``: reviews of superseded
    scorings count (a rescoring does not unmake a person's decision), and a rescoring that
    finds the same box, reviewed again, gives one record, the latest; a deleted face's
    reviews still count (their facts are copied).
    """
    r = _reviews.c
    ranked = (sa.select(_reviews, sa.func.row_number().over(
        partition_by=[r.image_path, r.x1, r.y1, r.x2, r.y2],
        order_by=[r.reviewed_at.desc(), r.id.desc()]).label("rank_"))
        .where(r.undone_at.is_(None)).subquery())
    stmt = sa.select(ranked).where(ranked.c.rank_ == 1, ranked.c.label != NOT_A_FACE)
    if since is not None:
        stmt = stmt.where(ranked.c.reviewed_at >= to_utc(since))
    stmt = stmt.order_by(ranked.c.reviewed_at, ranked.c.id)
    with engine.connect() as conn:
        rows = conn.execute(stmt).all()
    return [ReviewRecord(review_id=row.id, face_id=row.face_id, image_id=row.image_id, reviewer=row.reviewer,
                         label=row.label, model_label=row.model_label, model_confidence=row.model_confidence,
                         model_version_id=row.model_version_id, image_path=row.image_path, camera_id=row.camera_id,
                         captured_at=row.captured_at, local_day=row.local_day, x1=row.x1, y1=row.y1, x2=row.x2,
                         y2=row.y2, reviewed_at=row.reviewed_at, stratum=row.stratum, note=row.note)
            for row in rows]


def review_stats(engine: Engine, start: datetime, end: datetime, *,
                 camera: str | None = None) -> list[CameraReviewStats]:
    """Per camera, the reviews of faces captured in ``[start, end)`` that count: each face's
    latest live review, for the scorings that count (so the totals match ``daily_compliance``'s
    ``reviewed_faces``/``changed_faces``). ``agreed``: the reviewer kept the model's label.
    Cameras without reviews are left out; ordered by camera."""
    r = _reviews.c
    agreed = sa.func.sum(sa.case((r.label == r.model_label, 1), else_=0))
    stmt = (sa.select(r.camera_id, r.stratum, sa.func.count().label("reviewed"), agreed.label("agreed"),
                      sa.func.sum(sa.case((r.label == NOT_A_FACE, 1), else_=0)).label("not_face"))
            .select_from(_reviews.join(_faces, sa.and_(_faces.c.id == r.face_id, _faces.c.review_id == r.id))
                         .join(_latest, _latest.c.image_id == _faces.c.image_id))
            .where(r.undone_at.is_(None), r.captured_at >= to_utc(start), r.captured_at < to_utc(end))
            .group_by(r.camera_id, r.stratum).order_by(r.camera_id, r.stratum))
    if camera is not None:
        stmt = stmt.where(r.camera_id == camera)
    with engine.connect() as conn:
        rows = conn.execute(stmt).all()
    stats: dict[str, CameraReviewStats] = {}
    for row in rows:
        reviewed, agreed_n, not_face = int(row.reviewed), int(row.agreed), int(row.not_face)
        before = stats.get(row.camera_id) or CameraReviewStats(row.camera_id, 0, 0, 0, 0)
        stats[row.camera_id] = CameraReviewStats(
            row.camera_id, before.reviewed + reviewed, before.changed + reviewed - agreed_n,
            before.not_face + not_face, before.agreed + agreed_n,
            {**before.strata, row.stratum: StratumStats(reviewed, agreed_n)})
    return list(stats.values())
