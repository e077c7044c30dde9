"""The compliance report's window before migration 0005, kept as the oracle of the tests.

This is ``maskjob.reporting.compliance_data.load_window`` as it was when it read the base
tables: it marks the window's image rows that a later scoring of the same path superseded
(a temp table) and aggregates ``images`` and ``faces`` excluding them, with final labels
(a face's ``reviewed_label``, else its model ``label``; not_a_face faces drop out). The
derived-state version must give the same
:class:`~maskjob.reporting.compliance_data.WindowData` for the same rows
(tests/reporting/test_window_derived.py), and :func:`review_strata_superseded` the same faces
per review stratum as :func:`maskjob.reporting.figures.review_strata`.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import pandas as pd
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from maskjob import CLASSES

# The pure pandas steps after the SQL are shared: only the rows read differ between the two.
from maskjob.reporting.compliance_data import (
    _FACE_COLUMNS,
    STATUSES,
    VIOLATIONS,
    WindowData,
    _camera_table,
    _count_if,
    _counts,
    _local_buckets,
    clean_reason,
)
from maskjob.reporting.figures import _STRATA_COLUMNS, QUEUE_STRATA
from maskjob.storage.schema import Face, Image, ModelVersion

__all__ = ["load_window_superseded", "review_strata_superseded"]

_images = Image.__table__
_faces_t = Face.__table__
_versions = ModelVersion.__table__
_later = _images.alias("later")
# Lives for one report's connection; rolled back (so dropped) when the connection closes.
_superseded = sa.Table("maskjob_report_superseded", sa.MetaData(), sa.Column("id", sa.Integer, primary_key=True),
                       prefixes=["TEMPORARY"])
_final = sa.case((_faces_t.c.reviewed_label.is_(None), _faces_t.c.label), else_=_faces_t.c.reviewed_label)
_unreviewed = _faces_t.c.reviewed_label.is_(None)


def _mark_superseded(conn: Connection, start: datetime, end: datetime, camera: str | None) -> bool:
    """Fill the temp table with the window's image rows a later scoring of the same path replaced.

    The views' rule (latest ``scored_at``, then highest id, per path) as one pass over the
    window's rows; every later query then only excludes these ids. The views themselves rank
    every image ever scored before filtering, which takes seconds per query on a month of
    frames. Returns whether any row was superseded.
    """
    newer = sa.exists().where(
        _later.c.path == _images.c.path,
        sa.or_(_later.c.scored_at > _images.c.scored_at,
               sa.and_(_later.c.scored_at == _images.c.scored_at, _later.c.id > _images.c.id)),
    )
    where = [_images.c.captured_at >= start, _images.c.captured_at < end, newer]
    if camera is not None:
        where.append(_images.c.camera_id == camera)
    _superseded.create(conn)
    conn.execute(_superseded.insert().from_select(["id"], sa.select(_images.c.id).where(*where)))
    return conn.execute(sa.select(sa.func.count()).select_from(_superseded)).scalar_one() > 0


def _latest(start: datetime, end: datetime, camera: str | None, superseded: bool) -> list[sa.ColumnElement[bool]]:
    """Conditions for the images the views show (see :func:`_mark_superseded`) captured in ``[start, end)``."""
    where = [_images.c.captured_at >= start, _images.c.captured_at < end]
    if superseded:
        where.append(_images.c.id.not_in(sa.select(_superseded.c.id)))
    if camera is not None:
        where.append(_images.c.camera_id == camera)
    return where


def _bucket(conn: Connection) -> sa.ColumnElement[str]:
    """The UTC hour of ``captured_at`` as text (``"2026-11-24 07"``); :func:`_local_buckets` makes it local."""
    if conn.dialect.name == "postgresql":
        # timestamptz: render it in UTC whatever the session's TimeZone is.
        return sa.func.to_char(sa.func.timezone("UTC", _images.c.captured_at), "YYYY-MM-DD HH24")
    # SQLAlchemy stores SQLite datetimes as 'YYYY-MM-DD HH:MM:SS.ffffff'; substr is a third
    # of strftime's cost, which matters at a million rows.
    return sa.func.substr(_images.c.captured_at, 1, 13)






def _frames(conn: Connection, prev_start: datetime, start: datetime, end: datetime,
            camera: str | None, superseded: bool) -> pd.DataFrame:
    """Frames per status, grouped by (current window?, camera, model version, unreadable reason)."""
    current = sa.case((_images.c.captured_at >= start, 1), else_=0).label("current")
    reason = sa.case((_images.c.status == "unreadable", _images.c.reason), else_=None).label("reason")
    counts = [_count_if(_images.c.status == status, status) for status in STATUSES]
    grouped = (
        sa.select(current, _images.c.camera_id, _images.c.model_version_id, reason, *counts)
        .where(*_latest(prev_start, end, camera, superseded))
        .group_by(current, _images.c.camera_id, _images.c.model_version_id, reason)
        .subquery()
    )
    stmt = sa.select(
        grouped.c.current, grouped.c.camera_id, _versions.c.version, _versions.c.arch, grouped.c.reason,
        *(grouped.c[status] for status in STATUSES),
    ).select_from(grouped.join(_versions, _versions.c.id == grouped.c.model_version_id))
    columns = ["current", "camera_id", "version", "arch", "reason", *STATUSES]
    frame = pd.DataFrame(conn.execute(stmt).all(), columns=columns)
    frame["frames"] = frame[list(STATUSES)].sum(axis=1)
    return frame


def _faces(conn: Connection, prev_start: datetime, start: datetime, end: datetime, camera: str | None,
           superseded: bool, threshold: float) -> pd.DataFrame:
    """Faces per final label, unreviewed below the review threshold, and reviewed (not a face too),
    by (current window?, UTC hour, camera)."""
    current = sa.case((_images.c.captured_at >= start, 1), else_=0).label("current")
    bucket = _bucket(conn).label("bucket")
    counts = [_count_if(_final == label, label) for label in CLASSES]
    unsure = _count_if(sa.and_(_faces_t.c.confidence < threshold, _unreviewed), "unsure")
    stmt = (
        sa.select(current, bucket, _images.c.camera_id, *counts, unsure, _count_if(~_unreviewed, "reviewed"))
        .select_from(_images.join(_faces_t, _faces_t.c.image_id == _images.c.id))
        .where(*_latest(prev_start, end, camera, superseded))
        .group_by(current, bucket, _images.c.camera_id)
    )
    columns = ["current", "bucket", "camera_id", *CLASSES, "unsure", "reviewed"]
    frame = pd.DataFrame(conn.execute(stmt).all(), columns=columns)
    frame["faces"] = frame[list(CLASSES)].sum(axis=1)
    return frame


def _face_columns() -> list[sa.ColumnElement[Any]]:
    return [_images.c.camera_id, _images.c.path.label("image_path"), _images.c.captured_at,
            *(_faces_t.c[name] for name in ("x1", "y1", "x2", "y2")), _final.label("label"), _faces_t.c.confidence,
            _faces_t.c.label.label("model_label"), sa.case((_unreviewed, 0), else_=1).label("reviewed")]


def review_strata_superseded(engine: Engine, start: datetime, end: datetime, cameras: list[str],
                             threshold: float) -> pd.DataFrame:
    """Every detected face of ``cameras`` per review stratum, by the model's label and confidence."""
    with engine.connect() as conn:
        return _strata(conn, start, end, cameras, _mark_superseded(conn, start, end, None), threshold)


def _strata(conn: Connection, start: datetime, end: datetime, cameras: list[str], superseded: bool,
            threshold: float) -> pd.DataFrame:
    rows = {camera: dict.fromkeys(QUEUE_STRATA, 0) for camera in cameras}
    stmt = (sa.select(_images.c.camera_id, _faces_t.c.label, _faces_t.c.confidence)
            .select_from(_images.join(_faces_t, _faces_t.c.image_id == _images.c.id))
            .where(*_latest(start, end, None, superseded), _images.c.camera_id.in_(cameras)))
    for camera_id, label, confidence in conn.execute(stmt):
        rows[camera_id][QUEUE_STRATA[0 if confidence < threshold else 1 if label in VIOLATIONS else 2]] += 1
    return pd.DataFrame([(camera, *counts.values()) for camera, counts in sorted(rows.items()) if any(counts.values())],
                        columns=list(_STRATA_COLUMNS))


def _gallery(conn: Connection, start: datetime, end: datetime, cameras: list[str], superseded: bool,
             cap: int) -> pd.DataFrame:
    """The ``cap`` most confident violation faces of each camera.

    One ``ORDER BY ... LIMIT`` query per camera: each walks that camera's slice of
    ``ix_images_camera_id_captured_at`` and keeps a bounded sort, cheaper than ranking
    every violation of the window with a window function.
    """
    parts = []
    for camera in cameras:
        stmt = (
            sa.select(*_face_columns())
            .select_from(_images.join(_faces_t, _faces_t.c.image_id == _images.c.id))
            .where(*_latest(start, end, camera, superseded), _final.in_(VIOLATIONS))
            .order_by(sa.case((_unreviewed, _faces_t.c.confidence), else_=1.0).desc(), _faces_t.c.image_id,
                      _faces_t.c.face_index)
            .limit(cap)
        )
        parts.append(pd.DataFrame(conn.execute(stmt).all(), columns=list(_FACE_COLUMNS)))
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=list(_FACE_COLUMNS))


def _review(conn: Connection, start: datetime, end: datetime, camera: str | None, superseded: bool,
            threshold: float, cap: int) -> pd.DataFrame:
    """The ``cap`` least confident faces below ``threshold``."""
    stmt = (
        sa.select(*_face_columns())
        .select_from(_images.join(_faces_t, _faces_t.c.image_id == _images.c.id))
        .where(*_latest(start, end, camera, superseded), _faces_t.c.confidence < threshold, _unreviewed)
        .order_by(_faces_t.c.confidence, _faces_t.c.image_id, _faces_t.c.face_index)
        .limit(cap)
    )
    return pd.DataFrame(conn.execute(stmt).all(), columns=list(_FACE_COLUMNS))








def load_window_superseded(
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

    Every query touches only the two windows' rows: superseded scorings, frames and faces
    grouped (both windows at once), the capped gallery per camera and the capped review queue.

    Args:
        engine: the prediction database (schema at head).
        start, end: naive UTC bounds, end excluded.
        camera: only this camera, or all.
        gallery_cap: violation faces kept per camera (most confident first).
        review_threshold: faces below this confidence go to the review queue.
        review_cap: review-queue faces kept (least confident first).
        zone: IANA zone of the chart's buckets (local hour of day, or local day).
    """
    # 25 h: a local day with a DST change is still one day.
    hourly = end - start <= timedelta(hours=25)
    prev_start = start - (end - start)
    with engine.connect() as conn:
        superseded = _mark_superseded(conn, prev_start, end, camera)
        all_frames = _frames(conn, prev_start, start, end, camera, superseded)
        all_faces = _faces(conn, prev_start, start, end, camera, superseded, review_threshold)
        reviewed = int(all_faces.loc[all_faces["current"] == 1, "reviewed"].sum())
        # An hour whose faces were all marked not a face has none left (an unsure face is unreviewed).
        all_faces = all_faces[all_faces["faces"] > 0].reset_index(drop=True)
        all_faces["bucket"] = _local_buckets(all_faces["bucket"], zone, hourly)
        faces, prev_faces = all_faces[all_faces["current"] == 1], all_faces[all_faces["current"] == 0]
        with_violations = faces.groupby("camera_id")[list(VIOLATIONS)].sum().sum(axis=1)
        cameras = sorted(with_violations[with_violations > 0].index) if gallery_cap else []
        gallery = _gallery(conn, start, end, cameras, superseded, gallery_cap)
        review = _review(conn, start, end, camera, superseded, review_threshold, review_cap)
    frames, prev_frames = all_frames[all_frames["current"] == 1], all_frames[all_frames["current"] == 0]
    unreadable = frames[frames["unreadable"] > 0].assign(reason=lambda f: f["reason"].map(clean_reason))
    reasons = (unreadable.groupby("reason", as_index=False)["unreadable"].sum().rename(columns={"unreadable": "frames"})
               .sort_values(["frames", "reason"], ascending=[False, True], ignore_index=True))
    models = (frames.groupby(["version", "arch"], as_index=False)["frames"].sum()
              .sort_values(["frames", "version"], ascending=[False, True], ignore_index=True))
    series = faces.groupby(["bucket", "camera_id"], as_index=False)[["with_mask", "faces"]].sum()
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
        review_total=int(faces["unsure"].sum()),
        reviewed=reviewed,
    )
