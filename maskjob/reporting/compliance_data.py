"""The compliance report's numbers, read from the derived state (migrations 0005 and 0006).

Frames per status and faces per label come from ``hourly_counts`` for the window's whole UTC
hours, plus ``latest_scorings`` for the partial hours at its ends (a local day in a zone
05:45 off UTC starts and ends mid-hour); unreadable reasons, the gallery and the review queue
come from ``latest_scorings`` joined to ``images`` and ``faces``. Both tables hold only the
scoring that counts for each frame (per image path, the latest scoring: the views' rule), so
every query reads the window's rows, never the history, and comes back as a few thousand rows;
pandas only shapes those.

Labels are final (migration 0007): a reviewer's label where there is one, else the model's,
and faces a reviewer marked not a face drop out. The derived tables already count final
labels; the queries here that read ``faces`` (gallery, review queue) use :data:`FINAL_LABEL`.

Example:
    >>> data = load_window(engine, datetime(2026, 11, 24), datetime(2026, 11, 25))  # doctest: +SKIP
    >>> data.current.faces, data.current.rate
    (812, 0.731)
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import pandas as pd
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from maskjob import CLASSES
from maskjob.storage.schema import Face, HourlyCount, Image, LatestScoring, ModelVersion
from maskjob.timeutil import to_naive_utc
from maskjob.vocab import IMAGE_STATUSES, VIOLATIONS

__all__ = ["FINAL_LABEL", "WindowCounts", "WindowData", "load_window", "clean_reason", "hour_spans",
           "latest_where"]

logger = logging.getLogger(__name__)

STATUSES = IMAGE_STATUSES
# What one (UTC hour, camera, model version) group counts: frames, frames per status, faces per
# final label, and reviewed faces (whether the window has reviews to read).
COUNTS = ("images", *STATUSES, *CLASSES, "reviewed")
_PATH_PREFIX = re.compile(r"^(?P<path>[^\n]*?[/\\][^\n]*?|[^\s:]+\.[A-Za-z0-9]{2,5}):\s+")
_ABSOLUTE_PATH = re.compile(r"(?<![\w.])(?:[A-Za-z]:\\|/)[^\s:;,()'\"]+")
_HOUR = timedelta(hours=1)
Span = tuple[datetime, datetime]

_images = Image.__table__
_faces_t = Face.__table__
_versions = ModelVersion.__table__
_latest = LatestScoring.__table__
_hourly = HourlyCount.__table__

# A face's final label: its latest live review, else the model's (migration 0007).
FINAL_LABEL = sa.func.coalesce(_faces_t.c.reviewed_label, _faces_t.c.label)
# A reviewed face ranks as certain (a person decided it), as in the frames' confidence extremes.
_FINAL_CONFIDENCE = sa.case((_faces_t.c.reviewed_label.is_not(None), 1.0), else_=_faces_t.c.confidence)


@dataclass(frozen=True)
class WindowCounts:
    """Frame and face totals of one window."""

    frames: int
    faces: int
    by_label: dict[str, int]

    @property
    def rate(self) -> float | None:
        """Share of faces with a mask; ``None`` when no face was seen."""
        return self.by_label["with_mask"] / self.faces if self.faces else None


@dataclass(frozen=True)
class WindowData:
    """Everything the compliance page shows, already aggregated.

    Frames: ``cameras`` (camera_id, frames, ok, no_face, unreadable, faces, with_mask,
    without_mask, partial_mask, rate, prev_rate), ``series`` (bucket, camera_id, with_mask, faces), ``reasons`` (reason,
    frames), ``models`` (version, arch, frames), ``gallery`` (capped final-violation faces per
    camera), ``review`` (least confident unreviewed faces). Totals: ``current``, ``previous``,
    ``status_counts``, ``review_total``, ``reviewed`` (the window's reviewed faces).
    """

    current: WindowCounts
    previous: WindowCounts
    status_counts: dict[str, int]
    cameras: pd.DataFrame
    series: pd.DataFrame
    reasons: pd.DataFrame
    models: pd.DataFrame
    gallery: pd.DataFrame
    review: pd.DataFrame
    review_total: int
    reviewed: int


def clean_reason(reason: str | None) -> str:
    """An unreadable-frame reason without the file path it starts with (and no absolute paths).

    ``"/data/inbox/cam1/x.jpg: empty file (0 bytes)"`` becomes ``"empty file (0 bytes)"`` so
    reasons group by cause, and the page never shows where files live. A missing reason
    (``None``, or the NaN pandas puts for SQL NULL) is "no reason recorded".
    """
    if not isinstance(reason, str) or not reason:
        return "no reason recorded"
    text = _PATH_PREFIX.sub("", reason.strip(), count=1)
    return _ABSOLUTE_PATH.sub("<path>", text) or "no reason recorded"


def hour_spans(start: datetime, end: datetime) -> tuple[Span | None, list[Span]]:
    """Split ``[start, end)`` (naive UTC) into its whole UTC hours and the partial hours at its ends.

    Returns ``(whole, edges)``: ``whole`` is ``(first, last)``, the hours ``first <= hour_utc <
    last`` that lie entirely inside the window (``None`` if there is none), and ``edges`` the
    sub-windows before ``first`` and from ``last`` on that are not whole hours.

    Example (a local day in Asia/Kathmandu, UTC+05:45):
        >>> whole, edges = hour_spans(datetime(2026, 11, 23, 18, 15), datetime(2026, 11, 24, 18, 15))
        >>> [f"{a:%H:%M}-{b:%H:%M}" for a, b in [whole, *edges]]
        ['19:00-18:00', '18:15-19:00', '18:00-18:15']
    """
    first = start.replace(minute=0, second=0, microsecond=0)
    first += _HOUR if first < start else timedelta(0)
    last = end.replace(minute=0, second=0, microsecond=0)
    if first >= last:
        return None, [(start, end)]
    return (first, last), [(a, b) for a, b in ((start, first), (last, end)) if a < b]


def _count_if(condition: sa.ColumnElement[bool], name: str) -> sa.Label[Any]:
    return sa.func.sum(sa.case((condition, 1), else_=0)).label(name)


def _hourly_counts(lo: datetime, hi: datetime, camera: str | None) -> sa.Select[Any]:
    """:data:`COUNTS` per (UTC hour, camera, model version) of the whole hours ``[lo, hi)``."""
    where = [_hourly.c.hour_utc >= lo, _hourly.c.hour_utc < hi, _hourly.c.images > 0]
    if camera is not None:
        where.append(_hourly.c.camera_id == camera)
    keys = (_hourly.c.hour_utc, _hourly.c.camera_id, _hourly.c.model_version_id)
    sums = [sa.func.sum(_hourly.c[name]).label(name) for name in COUNTS]
    return sa.select(*keys, *sums).where(*where).group_by(*keys)


def latest_where(lo: datetime, hi: datetime, camera: str | None) -> list[sa.ColumnElement[bool]]:
    """The frames that count (one latest scoring per path) captured in ``[lo, hi)``."""
    where = [_latest.c.captured_at >= lo, _latest.c.captured_at < hi]
    if camera is not None:
        where.append(_latest.c.camera_id == camera)
    return where


def _latest_counts(lo: datetime, hi: datetime, camera: str | None) -> sa.Select[Any]:
    """:data:`COUNTS` as :func:`_hourly_counts` gives them, for any ``[lo, hi)``, from ``latest_scorings``."""
    keys = (_latest.c.hour_utc, _latest.c.camera_id, _latest.c.model_version_id)
    sums = [sa.func.count().label("images"), *(_count_if(_latest.c.status == s, s) for s in STATUSES),
            *(sa.func.sum(_latest.c[f"n_{label}"]).label(label) for label in CLASSES),
            sa.func.sum(_latest.c.n_reviewed).label("reviewed")]
    return sa.select(*keys, *sums).where(*latest_where(lo, hi, camera)).group_by(*keys)


def _window_counts(conn: Connection, start: datetime, end: datetime, camera: str | None) -> pd.DataFrame:
    """:data:`COUNTS` per (hour_utc, camera_id, model_version_id) of the frames captured in ``[start, end)``."""
    whole, edges = hour_spans(start, end)
    queries = [_latest_counts(lo, hi, camera) for lo, hi in edges]
    if whole is not None:
        queries.append(_hourly_counts(*whole, camera))
    rows = [row for query in queries for row in conn.execute(query)]
    return pd.DataFrame(rows, columns=["hour_utc", "camera_id", "model_version_id", *COUNTS])


def _versions_of(conn: Connection, ids: list[int]) -> pd.DataFrame:
    stmt = sa.select(_versions.c.id, _versions.c.version, _versions.c.arch).where(_versions.c.id.in_(ids))
    return pd.DataFrame(conn.execute(stmt).all(), columns=["model_version_id", "version", "arch"])


def _frames(counts: pd.DataFrame, versions: pd.DataFrame) -> pd.DataFrame:
    """Frames per status, by (current window?, camera, model version)."""
    keys = ["current", "camera_id", "model_version_id"]
    frame = counts.groupby(keys, as_index=False)[list(STATUSES)].sum()
    frame = frame.merge(versions, on="model_version_id", how="left")
    frame["frames"] = frame[list(STATUSES)].sum(axis=1)
    return frame


def _faces(counts: pd.DataFrame, zone: str, hourly: bool) -> pd.DataFrame:
    """Faces per label, by (current window?, UTC hour, camera), with ``bucket`` the local hour or day."""
    frame = counts.groupby(["current", "hour_utc", "camera_id"], as_index=False)[list(CLASSES)].sum()
    frame["faces"] = frame[list(CLASSES)].sum(axis=1)
    frame = frame[frame["faces"] > 0].reset_index(drop=True)
    frame["bucket"] = _local_buckets(frame["hour_utc"], zone, hourly)
    return frame


def _local_buckets(utc_hours: pd.Series, zone: str, hourly: bool) -> pd.Series:
    """UTC hours as the site's local hour of day (``"07"``) or local day (``"2026-11-24"``).

    Grouping by UTC hour in SQL and converting here keeps the SQL the same on both databases
    and gets DST right: every UTC hour maps to exactly one local hour.
    """
    if utc_hours.empty:
        return utc_hours.astype(str)
    local = pd.to_datetime(utc_hours, utc=True).dt.tz_convert(zone)
    return local.dt.strftime("%H" if hourly else "%Y-%m-%d")


def _reasons(conn: Connection, start: datetime, end: datetime, camera: str | None) -> pd.DataFrame:
    """Unreadable frames of the window per cause (:func:`clean_reason`), most frequent first."""
    stmt = (
        sa.select(_images.c.reason, sa.func.count().label("frames"))
        .select_from(_latest.join(_images, _images.c.id == _latest.c.image_id))
        .where(_latest.c.status == "unreadable", *latest_where(start, end, camera))
        .group_by(_images.c.reason)
    )
    raw = pd.DataFrame([(clean_reason(reason), n) for reason, n in conn.execute(stmt)], columns=["reason", "frames"])
    return (raw.groupby("reason", as_index=False)["frames"].sum()
            .sort_values(["frames", "reason"], ascending=[False, True], ignore_index=True))


_FACE_COLUMNS = ("camera_id", "image_path", "captured_at", "x1", "y1", "x2", "y2", "label", "confidence",
                 "model_label", "reviewed")


def _face_values() -> list[sa.ColumnElement[Any]]:
    """A face's box, final label, the model's confidence and label, and 1 if a reviewer decided it."""
    return [*(_faces_t.c[name] for name in ("x1", "y1", "x2", "y2")), FINAL_LABEL.label("label"),
            _faces_t.c.confidence, _faces_t.c.label.label("model_label"),
            sa.case((_faces_t.c.reviewed_label.is_not(None), 1), else_=0).label("reviewed")]


def _ranked_faces(conn: Connection, frame_where: list[sa.ColumnElement[bool]], face_where: sa.ColumnElement[bool],
                  most_confident: bool, cap: int) -> pd.DataFrame:
    """The ``cap`` faces matching ``face_where`` of the frames matching ``frame_where``, by final
    confidence (a reviewed face counts 1.0; most or least confident first, then image id and
    face index), with their frame's path.

    Ranks frames first, on their confidence extreme in ``latest_scorings`` (migration 0006:
    ``top_violation_confidence`` for the most confident violations, ``min_confidence`` for the
    least confident faces), read from the covering index without touching a table row, and
    reads ``faces`` and ``images`` only for the ``cap`` frames kept. Exact: each of the ``cap``
    best faces lies in one of the ``cap`` best frames, since every frame ranked above a face's
    frame holds a face ranked above that face (same ties: lower image id first).
    """
    extreme = _latest.c.top_violation_confidence if most_confident else _latest.c.min_confidence
    frames = (
        sa.select(_latest.c.image_id, _latest.c.camera_id, _latest.c.captured_at)
        .where(*frame_where)
        .order_by(extreme.desc() if most_confident else extreme, _latest.c.image_id)
        .limit(cap)
        .subquery()
    )
    confidence = _FINAL_CONFIDENCE.desc() if most_confident else _FINAL_CONFIDENCE
    stmt = (
        sa.select(frames.c.camera_id, _images.c.path.label("image_path"), frames.c.captured_at, *_face_values())
        .select_from(frames.join(_faces_t, _faces_t.c.image_id == frames.c.image_id)
                     .join(_images, _images.c.id == frames.c.image_id))
        .where(face_where)
        .order_by(confidence, _faces_t.c.image_id, _faces_t.c.face_index)
        .limit(cap)
    )
    return pd.DataFrame(conn.execute(stmt).all(), columns=list(_FACE_COLUMNS))


def _gallery(conn: Connection, start: datetime, end: datetime, cameras: list[str], cap: int) -> pd.DataFrame:
    """The ``cap`` most confident final-violation faces of each camera (reviewed ones first).

    One query per camera: each ranks that camera's slice of the covering index
    ``ix_latest_scorings_camera_id_captured_at`` on ``top_violation_confidence``.
    """
    parts = [_ranked_faces(conn, [*latest_where(start, end, camera), _latest.c.top_violation_confidence.is_not(None)],
                           FINAL_LABEL.in_(VIOLATIONS), True, cap) for camera in cameras]
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=list(_FACE_COLUMNS))


def _review(conn: Connection, start: datetime, end: datetime, camera: str | None, threshold: float,
            cap: int) -> tuple[pd.DataFrame, int]:
    """The ``cap`` least confident unreviewed faces below ``threshold``, and how many there are.

    The count comes from each frame's confidence extremes (migration 0006) where they decide
    it: every face when ``max_confidence`` is below the threshold, exactly one in a frame of 1
    or 2 faces whose ``min_confidence`` alone is; ``faces`` is read only for frames of 3 or more
    faces whose extremes straddle the threshold. Reviews keep this exact: the extremes and
    ``n_faces`` are over final faces, a reviewed face counting 1.0, so never below.
    """
    frame_where = [*latest_where(start, end, camera), _latest.c.min_confidence < threshold]
    below = sa.and_(_faces_t.c.confidence < threshold, _faces_t.c.reviewed_label.is_(None))
    decided = sa.func.sum(sa.case((_latest.c.max_confidence < threshold, _latest.c.n_faces),
                                  (_latest.c.n_faces <= 2, 1), else_=0))
    straddling = (sa.select(sa.func.count())
                  .select_from(_latest.join(_faces_t, _faces_t.c.image_id == _latest.c.image_id))
                  .where(*frame_where, _latest.c.max_confidence >= threshold, _latest.c.n_faces > 2, below))
    total = int(conn.execute(sa.select(sa.func.coalesce(decided, 0)).where(*frame_where)).scalar_one()
                + conn.execute(straddling).scalar_one())
    if cap <= 0 or total == 0:
        return pd.DataFrame(columns=list(_FACE_COLUMNS)), total
    return _ranked_faces(conn, frame_where, below, False, cap), total


def _counts(frames: pd.DataFrame, faces: pd.DataFrame) -> WindowCounts:
    return WindowCounts(
        frames=int(frames["frames"].sum()),
        faces=int(faces["faces"].sum()),
        by_label={label: int(faces[label].sum()) for label in CLASSES},
    )


def _rate(table: pd.DataFrame) -> pd.Series:
    return (table["with_mask"] / table["faces"]).where(table["faces"] > 0)


def _camera_table(frames: pd.DataFrame, faces: pd.DataFrame, prev_faces: pd.DataFrame) -> pd.DataFrame:
    face_columns = [*CLASSES, "faces"]
    per_camera = frames.groupby("camera_id")[["frames", *STATUSES]].sum()
    per_camera = per_camera.join(faces.groupby("camera_id")[face_columns].sum(), how="outer")
    per_camera = per_camera.fillna(0).astype("int64")
    per_camera["rate"] = _rate(per_camera)
    per_camera["prev_rate"] = _rate(prev_faces.groupby("camera_id")[face_columns].sum()).reindex(per_camera.index)
    per_camera = per_camera.reset_index()
    # Worst first; cameras that saw no face at all go last (nothing to judge them on).
    return per_camera.sort_values(["rate", "without_mask", "camera_id"], ascending=[True, False, True],
                                  na_position="last", ignore_index=True)


def _both_windows(conn: Connection, prev_start: datetime, start: datetime, end: datetime,
                  camera: str | None) -> pd.DataFrame:
    """:func:`_window_counts` of the previous window (``current`` 0) and this one (``current`` 1)."""
    parts = [_window_counts(conn, lo, hi, camera).assign(current=flag)
             for flag, (lo, hi) in enumerate(((prev_start, start), (start, end)))]
    counts = pd.concat(parts, ignore_index=True)
    return counts.astype({name: "int64" for name in COUNTS})


def load_window(
    engine: Engine,
    start: datetime,
    end: datetime,
    camera: str | None = None,
    *,
    gallery_cap: int = 24,
    review_threshold: float = 0.75,
    review_cap: int = 24,
    zone: str = "UTC",
) -> WindowData:
    """Aggregate the window ``[start, end)`` and the window of the same length before it.

    Every query touches only the two windows' rows: counts per UTC hour (``hourly_counts``, and
    ``latest_scorings`` for partial hours), unreadable reasons, the capped gallery per camera
    and the capped review queue with its total.

    Args:
        engine: the prediction database (schema at head).
        start, end: UTC bounds (naive = UTC), end excluded; any minute, not only whole hours.
        camera: only this camera, or all.
        gallery_cap: violation faces kept per camera (most confident first).
        review_threshold: faces below this confidence go to the review queue.
        review_cap: review-queue faces kept (least confident first).
        zone: IANA zone of the chart's buckets (local hour of day, or local day).
    """
    start, end = to_naive_utc(start), to_naive_utc(end)
    # 25 h: a local day with a DST change is still one day.
    hourly = end - start <= timedelta(hours=25)
    prev_start = start - (end - start)
    with engine.connect() as conn:
        counts = _both_windows(conn, prev_start, start, end, camera)
        all_frames = _frames(counts, _versions_of(conn, sorted(set(counts["model_version_id"].tolist()))))
        all_faces = _faces(counts, zone, hourly)
        faces, prev_faces = all_faces[all_faces["current"] == 1], all_faces[all_faces["current"] == 0]
        with_violations = faces.groupby("camera_id")[list(VIOLATIONS)].sum().sum(axis=1)
        cameras = sorted(with_violations[with_violations > 0].index) if gallery_cap else []
        gallery = _gallery(conn, start, end, cameras, gallery_cap)
        review, review_total = _review(conn, start, end, camera, review_threshold, review_cap)
        reasons = _reasons(conn, start, end, camera)
    frames, prev_frames = all_frames[all_frames["current"] == 1], all_frames[all_frames["current"] == 0]
    models = (frames.groupby(["version", "arch"], as_index=False)["frames"].sum()
              .sort_values(["frames", "version"], ascending=[False, True], ignore_index=True))
    series = faces.groupby(["bucket", "camera_id"], as_index=False)[["with_mask", "faces"]].sum()
    logger.info("report window %s..%s: %d frames, %d face groups", start, end, int(frames["frames"].sum()), len(faces))
    return WindowData(
        current=_counts(frames, faces),
        previous=_counts(prev_frames, prev_faces),
        status_counts={status: int(frames[status].sum()) for status in STATUSES},
        cameras=_camera_table(frames, faces, prev_faces),
        series=series,
        reasons=reasons,
        models=models,
        gallery=gallery,
        review=review,
        review_total=review_total,
        reviewed=int(counts.loc[counts["current"] == 1, "reviewed"].sum()),
    )
