"""Per-camera face-size ranges: a fixed CCTV camera sees faces in a narrow, stable size range, so
MTCNN need not search every size in every frame.

Each camera's recent face sizes (the longer side of each face box, in pixels) come from the
database (:func:`load_face_sizes`: the camera's last ``face_size_history_faces`` faces captured
within ``face_size_history_days`` before its frames of this run). A camera with at least
``face_size_min_history`` of them searches only ``[min / margin, max * margin]``
(``face_size_margin``; never below ``min_face_px``), which shortens MTCNN's image pyramid at
both ends. Every ``face_size_recheck_frames``-th frame of each camera (its first frame of a
run included), and every frame of a camera with too little history, searches fully; the
faces those full searches find join the camera's history at once, so a face that grows or
shrinks out of the range is found by the next re-check and, once it recurs, widens the range.
An MTCNN pyramid level finds faces up to about twice the size it stands for, so the margin
need not be large: 1.25 kept the demo inbox's recall (README "Benchmarks").

Example:
    >>> with engine.connect() as conn:                                           # doctest: +SKIP
    ...     sizes = face_size_tracker(conn, settings, frames)
    >>> plans = sizes.plan(["cam-1", "cam-1"])       # [None (full), FaceSizeRange(26.7, 180.0)]  # doctest: +SKIP
    >>> sizes.observe(["cam-1", "cam-1"], plans, found_per_frame)              # doctest: +SKIP
"""

from __future__ import annotations

from collections import defaultdict, deque
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa

from maskjob.config import Settings
from maskjob.scoring.detectors import Detection, FaceSizeRange
from maskjob.scoring.frames import Frame
from maskjob.storage.schema import Face, Image

# The smallest and largest 2% of a camera's face sizes do not widen its range: a stray false
# detection (MTCNN's 24 px box among the demo inbox's 37-131 px faces) would otherwise undo
# the range for the next face_size_history_faces faces. A size that recurs beyond that share
# widens it.
TRIM_FRACTION = 0.02

__all__ = ["TRIM_FRACTION", "CameraFaceSizes", "face_side_px", "face_size_tracker", "load_face_sizes"]


def face_side_px(box: Sequence[float]) -> float:
    """A face's size: the longer side of its ``(x1, y1, x2, y2)`` box."""
    return float(max(box[2] - box[0], box[3] - box[1]))


class CameraFaceSizes:
    """Which face sizes each camera's next frames search, and the history that decides it.

    Args:
        history: camera id -> its recent face sizes, oldest first.
        min_face_px: the full search's smallest face; a range never goes below it.
        keep: face sizes kept per camera (the newest).
        min_history: fewer sizes than this: the camera searches fully.
        recheck_frames: every this-many-th frame of a camera searches fully (1: all).
        margin: the range is ``[min / margin, max * margin]`` of the kept sizes (trimmed by
            :data:`TRIM_FRACTION` at each end).
    """

    def __init__(self, history: Mapping[str, Iterable[float]], *, min_face_px: float, keep: int, min_history: int,
                 recheck_frames: int, margin: float) -> None:
        self.min_face_px, self.min_history, self.recheck_frames, self.margin = (
            min_face_px, min_history, recheck_frames, margin)
        self._sizes: defaultdict[str, deque[float]] = defaultdict(lambda: deque(maxlen=keep))
        for camera, sizes in history.items():
            self._sizes[camera].extend(sizes)
        self._planned: defaultdict[str, int] = defaultdict(int)

    def range_for(self, camera_id: str) -> FaceSizeRange | None:
        """The camera's search range now, or ``None`` (full search) with too little history."""
        sizes = self._sizes.get(camera_id)
        if sizes is None or len(sizes) < self.min_history:
            return None
        ordered = sorted(sizes)
        trim = int(TRIM_FRACTION * len(ordered))
        low = max(self.min_face_px, ordered[trim] / self.margin)
        return FaceSizeRange(low, max(low, ordered[len(ordered) - 1 - trim] * self.margin))

    def plan(self, camera_ids: Sequence[str]) -> list[FaceSizeRange | None]:
        """Each frame's search, in order (``None``: full); counts the frames per camera."""
        plans = []
        for camera in camera_ids:
            recheck = self._planned[camera] % self.recheck_frames == 0
            self._planned[camera] += 1
            plans.append(None if recheck else self.range_for(camera))
        return plans

    def observe(self, camera_ids: Sequence[str], plans: Sequence[FaceSizeRange | None],
                found: Sequence[Sequence[Any] | Exception]) -> None:
        """Add the faces of the frames that searched fully to their cameras' history.

        ``found`` holds, per frame, its detections (or ``(detection, probabilities)`` pairs),
        or the exception the models raised on it.
        """
        for camera, planned, faces in zip(camera_ids, plans, found, strict=True):
            if planned is not None or isinstance(faces, Exception):
                continue
            for face in faces:
                det = face if isinstance(face, Detection) else face[0]
                self._sizes[camera].append(face_side_px(det.box))

    def history_size(self, camera_id: str) -> int:
        """How many face sizes the camera's range is made of."""
        return len(self._sizes.get(camera_id, ()))


def load_face_sizes(conn: sa.Connection, windows: Mapping[str, tuple[datetime, datetime]], limit: int
                    ) -> dict[str, list[float]]:
    """Each camera's last ``limit`` face sizes captured in its ``[start, end]`` window, oldest first.

    One query per camera on ``images (camera_id, captured_at)`` and ``faces (image_id, ...)``:
    its cost is ``limit`` faces, whatever the history's length. Faces of every model version
    count (the sizes are the detector's, not the classifier's).
    """
    out: dict[str, list[float]] = {}
    for camera, (start, end) in windows.items():
        rows = conn.execute(
            sa.select(Face.x1, Face.y1, Face.x2, Face.y2)
            .join(Image, Face.image_id == Image.id)
            .where(Image.camera_id == camera, Image.captured_at >= start, Image.captured_at <= end)
            .order_by(Image.captured_at.desc(), Face.id.desc())
            .limit(limit)
        ).all()
        out[camera] = [face_side_px(row) for row in reversed(rows)]
    return out


def face_size_tracker(conn: sa.Connection, settings: Settings, frames: Sequence[Frame]) -> CameraFaceSizes:
    """The tracker for a run's ``frames``, its history read through ``conn`` (see the module doc)."""
    spans: dict[str, tuple[datetime, datetime]] = {}
    for frame in frames:
        first, last = spans.get(frame.camera_id, (frame.captured_at, frame.captured_at))
        spans[frame.camera_id] = (min(first, frame.captured_at), max(last, frame.captured_at))
    days = timedelta(days=settings.face_size_history_days)
    history = load_face_sizes(conn, {c: (first - days, last) for c, (first, last) in spans.items()},
                              settings.face_size_history_faces)
    return CameraFaceSizes(history, min_face_px=settings.min_face_px, keep=settings.face_size_history_faces,
                           min_history=settings.face_size_min_history,
                           recheck_frames=settings.face_size_recheck_frames, margin=settings.face_size_margin)
