"""Per-camera figures of a window: the one source the compliance report and the alerts share.

Each camera gets its frames (readable, unreadable), faces, compliance, its own target and its
expected frame count, and a status. Registered cameras come from the ``cameras`` table
(:mod:`maskjob.storage.cameras`); a camera that sent frames but is not registered uses
``default_compliance_target`` and ``default_expected_frames_per_hour``.

Reviewed cameras also get the model's agreement with reviewers (:func:`review_agreement`),
per review stratum and as a stratified estimate of field accuracy: the reviews come from
:func:`maskjob.storage.reviews.review_stats`, the faces per stratum that weight them from
:func:`review_strata`; a window without reviewed faces reads neither.

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
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from maskjob.config import Settings
from maskjob.reporting.compliance_data import WindowData, latest_where, load_window
from maskjob.storage.cameras import Camera, list_cameras, site_defaults
from maskjob.storage.reviews import CameraReviewStats, review_stats
from maskjob.storage.schema import REVIEW_STRATA, Face, LatestScoring
from maskjob.timeutil import to_naive_utc
from maskjob.vocab import VIOLATIONS

__all__ = [
    "CAMERA_STATUSES",
    "CameraFigures",
    "QUEUE_STRATA",
    "ReviewAgreement",
    "SiteFigures",
    "StratumAgreement",
    "UNDER_DELIVERY_TOLERANCE",
    "camera_figures",
    "load_figures",
    "registered_cameras",
    "review_agreement",
    "review_strata",
]

logger = logging.getLogger(__name__)

# A camera "under-delivers" below (1 - tolerance) of its expected frames: uploads are bursty
# and a camera may be briefly down for cleaning, so a few missing frames are not an alarm.
UNDER_DELIVERY_TOLERANCE = 0.2
# Worst first: a camera's status is the first of its problems in this order.
CAMERA_STATUSES = ("silent", "below_target", "under_delivering", "no_faces", "ok")
# The review queue's strata in its order; a stratum's faces are the window's faces it draws from
# ("sample": a random share of the confident faces that are not violations). The last stratum,
# "other", is reviews the queue did not serve (one image's page): shown, in no estimate.
QUEUE_STRATA, OTHER = REVIEW_STRATA[:-1], REVIEW_STRATA[-1]
_STRATA_COLUMNS = ("camera_id", *QUEUE_STRATA)
_faces_t = Face.__table__
_latest = LatestScoring.__table__


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


@dataclass(frozen=True)
class StratumAgreement:
    """One review stratum of a camera: its faces in the window, how many were reviewed, and how
    many of those the reviewer gave the model's label."""

    stratum: str
    faces: int
    reviewed: int
    agreed: int

    @property
    def agreement(self) -> float | None:
        return self.agreed / self.reviewed if self.reviewed else None


@dataclass(frozen=True)
class ReviewAgreement:
    """A camera's reviews in the window and the model's agreement with its reviewers.

    ``estimate`` is the stratified estimate of the model's accuracy on the camera's faces:
    each stratum's agreement weighted by its share of the faces; ``None`` when a stratum with
    faces has no review (``unreviewed`` names them). ``other_*`` are reviews the queue did
    not serve from a stratum: shown, never in the estimate.
    """

    camera_id: str
    reviewed: int
    changed: int
    not_face: int
    strata: tuple[StratumAgreement, ...]
    other_reviewed: int
    other_agreed: int

    @property
    def faces(self) -> int:
        return sum(s.faces for s in self.strata)

    @property
    def unreviewed(self) -> tuple[str, ...]:
        return tuple(s.stratum for s in self.strata if s.faces and not s.reviewed)

    @property
    def estimate(self) -> float | None:
        if not self.faces or self.unreviewed:
            return None
        return sum(s.faces * s.agreed / s.reviewed for s in self.strata if s.faces) / self.faces

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "faces": self.faces, "unreviewed": list(self.unreviewed), "estimate": self.estimate,
                "strata": {s.stratum: {**asdict(s), "agreement": s.agreement} for s in self.strata}}


def _agreement(camera_id: str, stats: list[CameraReviewStats], faces: Mapping[str, int]) -> ReviewAgreement:
    """``stats`` (one camera's, or every camera's to pool them) and ``faces`` per stratum as one agreement."""
    def total(name: str, stratum: str | None = None) -> int:
        if stratum is None:
            return sum(getattr(s, name) for s in stats)
        return sum(getattr(s.strata[stratum], name) for s in stats if stratum in s.strata)

    strata = tuple(StratumAgreement(h, int(faces.get(h, 0)), total("reviewed", h), total("agreed", h))
                   for h in QUEUE_STRATA)
    return ReviewAgreement(camera_id=camera_id, reviewed=total("reviewed"), changed=total("changed"),
                           not_face=total("not_face"), strata=strata, other_reviewed=total("reviewed", OTHER),
                           other_agreed=total("agreed", OTHER))


def review_strata(conn: Connection, start: datetime, end: datetime, cameras: list[str],
                  threshold: float) -> pd.DataFrame:
    """The faces of ``cameras`` captured in ``[start, end)`` per review stratum, as the queue draws them.

    By the model's label and confidence, every detected face of the scorings that count
    (reviewed ones and those a reviewer marked not a face too: they were drawn from these):
    ``uncertain`` below ``threshold``, else ``violation``, else ``sample``. One query grouped
    by camera; columns camera_id and one per :data:`QUEUE_STRATA`.
    """
    if not cameras:
        return pd.DataFrame(columns=list(_STRATA_COLUMNS))
    uncertain = _faces_t.c.confidence < threshold
    violation = sa.and_(~uncertain, _faces_t.c.label.in_(VIOLATIONS))
    stmt = (sa.select(_latest.c.camera_id, sa.func.count(), sa.func.sum(sa.case((uncertain, 1), else_=0)),
                      sa.func.sum(sa.case((violation, 1), else_=0)))
            .select_from(_latest.join(_faces_t, _faces_t.c.image_id == _latest.c.image_id))
            .where(*latest_where(start, end, None), _latest.c.camera_id.in_(cameras))
            .group_by(_latest.c.camera_id)
            .order_by(_latest.c.camera_id))
    rows = [(camera, int(u), int(v), int(n - u - v)) for camera, n, u, v in conn.execute(stmt)]
    return pd.DataFrame(rows, columns=list(_STRATA_COLUMNS))


def review_agreement(engine: Engine, data: WindowData, start: datetime, end: datetime, camera: str | None,
                     threshold: float) -> tuple[list[ReviewAgreement], ReviewAgreement | None]:
    """Every reviewed camera's :class:`ReviewAgreement` in ``[start, end)`` (by camera id), and
    all of them pooled: each stratum's reviews over the cameras, weighted by their faces.

    ``data`` is the window's :func:`~maskjob.reporting.compliance_data.load_window`: without
    reviewed faces (``data.reviewed``) nothing is read and the answer is ``([], None)``.
    """
    if not data.reviewed:
        return [], None
    start, end = to_naive_utc(start), to_naive_utc(end)
    stats = review_stats(engine, start, end, camera=camera)
    with engine.connect() as conn:
        strata = review_strata(conn, start, end, sorted(s.camera_id for s in stats), threshold)
    faces = strata.set_index("camera_id")[list(QUEUE_STRATA)].astype("int64")
    cameras = [_agreement(s.camera_id, [s], faces.loc[s.camera_id].to_dict() if s.camera_id in faces.index else {})
               for s in stats if s.reviewed]
    if not cameras:
        return [], None
    return cameras, _agreement("all cameras", stats, faces.sum().to_dict())


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
