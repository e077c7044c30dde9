"""Per-camera figures of a window: the one source the compliance report and the alerts share.

Each camera gets its frames (readable, unreadable), faces, compliance, its own target and its
expected frame count, and a status. Registered cameras come from the ``cameras`` table
(:mod:`maskjob.storage.cameras`); a camera that sent frames but is not registered uses
``default_compliance_target`` and ``default_expected_frames_per_hour``.

Example:
    >>> site = load_figures(engine, settings, start, end)  # doctest: +SKIP
    >>> [c.camera_id for c in site.problems]
    ['cam2']
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any, Mapping

import pandas as pd
from sqlalchemy.engine import Engine

from maskjob.config import Settings
from maskjob.reporting.compliance_data import WindowData, load_window
from maskjob.storage.cameras import Camera, list_cameras, site_defaults

__all__ = [
    "CAMERA_STATUSES",
    "CameraFigures",
    "SiteFigures",
    "UNDER_DELIVERY_TOLERANCE",
    "camera_figures",
    "load_figures",
    "registered_cameras",
]

logger = logging.getLogger(__name__)

# A camera "under-delivers" below (1 - tolerance) of its expected frames: uploads are bursty
# and a camera may be briefly down for cleaning, so a few missing frames are not an alarm.
UNDER_DELIVERY_TOLERANCE = 0.2
# Worst first: a camera's status is the first of its problems in this order.
CAMERA_STATUSES = ("silent", "below_target", "under_delivering", "no_faces", "ok")


@dataclass(frozen=True)
class CameraFigures:
    """One camera's figures for a window (``compliance`` is ``None`` without faces)."""

    camera_id: str
    registered: bool
    frames: int
    readable: int
    unreadable: int
    faces: int
    with_mask: int
    without_mask: int
    partial_mask: int
    compliance: float | None
    target: float
    expected_frames: float | None
    problems: tuple[str, ...]

    @property
    def status(self) -> str:
        """The worst of :data:`CAMERA_STATUSES` that applies."""
        return self.problems[0] if self.problems else ("no_faces" if self.faces == 0 else "ok")

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "problems": list(self.problems), "status": self.status}


@dataclass(frozen=True)
class SiteFigures:
    """Every camera's figures plus the window's totals."""

    start: datetime
    end: datetime
    hours: float
    cameras: list[CameraFigures]
    frames: int
    unreadable: int
    unreadable_fraction: float | None
    unreadable_limit: float

    @property
    def problems(self) -> list[CameraFigures]:
        """Cameras below target, silent or under-delivering, worst first."""
        return [c for c in self.cameras if c.problems]

    def by_status(self, status: str) -> list[CameraFigures]:
        return [c for c in self.cameras if status in c.problems]

    @property
    def unreadable_spike(self) -> bool:
        """More unreadable frames than ``alert_unreadable_fraction`` of all frames."""
        return self.unreadable_fraction is not None and self.unreadable_fraction > self.unreadable_limit


def registered_cameras(engine: Engine) -> dict[str, Camera]:
    """The ``cameras`` table's rows by camera id."""
    with engine.connect() as conn:
        return {c.camera_id: c for c in list_cameras(conn)}


def _problems(frames: int, rate: float | None, target: float, expected: float | None,
              registered: bool) -> tuple[str, ...]:
    problems = []
    if registered and frames == 0:
        problems.append("silent")
    if rate is not None and rate < target:
        problems.append("below_target")
    if expected and frames > 0 and frames < expected * (1.0 - UNDER_DELIVERY_TOLERANCE):
        problems.append("under_delivering")
    return tuple(problems)


def _int(row: dict[str, Any], name: str) -> int:
    value = row.get(name, 0)
    return 0 if pd.isna(value) else int(value)


def camera_figures(data: WindowData, registry: Mapping[str, Camera], settings: Settings,
                   start: datetime, end: datetime, camera: str | None = None) -> SiteFigures:
    """The figures of every camera that sent frames or is registered (only ``camera`` if given).

    Args:
        data: the window's aggregates from :func:`~maskjob.reporting.compliance_data.load_window`.
        registry: :func:`registered_cameras`.
        settings: ``default_compliance_target``, ``default_expected_frames_per_hour``,
            ``alert_unreadable_fraction``.
        start, end: the window (naive UTC); its length in hours scales the expected frames
            (23 or 25 on a day with a DST change).
    """
    defaults = site_defaults(settings)
    hours = (end - start).total_seconds() / 3600.0
    rows = {r["camera_id"]: r for r in data.cameras.to_dict("records")}
    ids = list(rows) + sorted(c for c in registry if c not in rows and camera in (None, c))
    cameras = []
    for cam in ids:
        row, reg = rows.get(cam, {}), registry.get(cam)
        target = reg.compliance_target if reg else defaults["compliance_target"]
        per_hour = reg.expected_frames_per_hour if reg else defaults["expected_frames_per_hour"]
        expected = per_hour * hours if per_hour else None
        frames, faces = _int(row, "frames"), _int(row, "faces")
        rate = _int(row, "with_mask") / faces if faces else None
        cameras.append(CameraFigures(
            camera_id=cam, registered=reg is not None, frames=frames,
            readable=_int(row, "ok") + _int(row, "no_face"), unreadable=_int(row, "unreadable"), faces=faces,
            with_mask=_int(row, "with_mask"), without_mask=_int(row, "without_mask"),
            partial_mask=_int(row, "partial_mask"), compliance=rate, target=target, expected_frames=expected,
            problems=_problems(frames, rate, target, expected, reg is not None),
        ))
    rank = {status: i for i, status in enumerate(CAMERA_STATUSES)}
    cameras.sort(key=lambda c: (rank[c.status], c.compliance if c.compliance is not None else 2.0, c.camera_id))
    total = data.current.frames
    unreadable = data.status_counts.get("unreadable", 0)
    return SiteFigures(start=start, end=end, hours=hours, cameras=cameras, frames=total, unreadable=unreadable,
                       unreadable_fraction=unreadable / total if total else None,
                       unreadable_limit=settings.alert_unreadable_fraction)


def load_figures(engine: Engine, settings: Settings, start: datetime, end: datetime,
                 camera: str | None = None) -> SiteFigures:
    """:func:`camera_figures` straight from the database (no gallery, no review queue)."""
    data = load_window(engine, start, end, camera, gallery_cap=0, review_cap=0,
                       review_threshold=settings.review_threshold)
    return camera_figures(data, registered_cameras(engine), settings, start, end, camera)
