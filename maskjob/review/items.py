"""What the review page shows of a face: queue items as JSON-ready dicts, and the face a
reviewer's latest review was about (for undo)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from maskjob.storage import schema
from maskjob.timeutil import zone
from maskjob.vocab import CLASSES

__all__ = ["STRATA", "face_view", "item_view", "latest_live_review"]

# Where the queue served a face (face_reviews.stratum).
STRATA: tuple[str, ...] = schema.REVIEW_STRATA
_reviews = schema.FaceReview.__table__


def _local_time(captured_at: datetime, tz_name: str) -> str:
    aware = captured_at if captured_at.tzinfo else captured_at.replace(tzinfo=UTC)
    try:
        tz = zone(tz_name)
    except Exception:  # noqa: BLE001 - a zone this machine lacks shows the time in UTC
        tz = UTC
    return aware.astimezone(tz).strftime("%Y-%m-%d %H:%M:%S %Z")


def item_view(item: Any) -> dict[str, Any]:
    """A queue item (``maskjob.storage.reviews.QueueItem`` or the same fields) as the page's JSON."""
    probs = {c: round(float(getattr(item, f"p_{c}")), 4) for c in CLASSES}
    return {
        "face_id": int(item.face_id),
        "camera": item.camera_id,
        "time": _local_time(item.captured_at, item.timezone),
        "timezone": item.timezone,
        "image": item.image_path,
        "label": item.label,
        "probs": probs,
        "confidence": round(float(item.confidence), 4),
        "model_version": item.model_version,
        "stratum": item.stratum,
        "crop": f"/face/{int(item.face_id)}/crop.jpg",
        "context": f"/face/{int(item.face_id)}/context.jpg",
    }


def face_view(engine: Engine, face_id: int, stratum: str) -> dict[str, Any] | None:
    """The page's JSON for face ``face_id`` (any face, reviewed or not), or ``None``."""
    face, image, model = schema.Face.__table__, schema.Image.__table__, schema.ModelVersion.__table__
    query = (sa.select(face.c.id.label("face_id"), image.c.path.label("image_path"), image.c.camera_id,
                       image.c.captured_at, image.c.timezone, face.c.label, face.c.p_with_mask,
                       face.c.p_without_mask, face.c.p_partial_mask, face.c.confidence,
                       model.c.version.label("model_version"))
             .join(image, image.c.id == face.c.image_id).join(model, model.c.id == face.c.model_version_id)
             .where(face.c.id == face_id))
    with engine.connect() as conn:
        row = conn.execute(query).first()
    if row is None:
        return None
    values = row._asdict()
    values["stratum"] = stratum if stratum in STRATA else "other"
    return item_view(_Row(values))


class _Row:
    def __init__(self, values: dict[str, Any]) -> None:
        self.__dict__.update(values)


def latest_live_review(engine: Engine, reviewer: str) -> tuple[int, int, str] | None:
    """``(review id, face id, stratum)`` of ``reviewer``'s latest review that is not undone, or ``None``."""
    r = _reviews.c
    query = (sa.select(r.id, r.face_id, r.stratum).where(r.reviewer == reviewer, r.undone_at.is_(None))
             .order_by(r.reviewed_at.desc(), r.id.desc()).limit(1))
    with engine.connect() as conn:
        row = conn.execute(query).first()
    return None if row is None else (int(row.id), row.face_id, row.stratum or "other")
