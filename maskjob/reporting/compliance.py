"""The compliance report: one self-contained HTML page per window, rendered from the database.

Numbers come from :mod:`maskjob.reporting.compliance_data` (grouped SQL); charts are matplotlib
SVGs and face crops are JPEGs, all inlined as ``data:`` URIs, so the file opens from disk with
no network. Jinja2 autoescaping is on: camera ids and file names always show as text.

Example:
    >>> path = render_compliance_report(engine, settings, date(2026, 11, 24), date(2026, 11, 24))  # doctest: +SKIP
    >>> path.name
    'compliance_20261124_20261124.html'
"""

from __future__ import annotations

import functools
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

import numpy as np
import pandas as pd
from matplotlib import rc_context
from matplotlib.figure import Figure
from PIL import Image, ImageDraw, ImageFilter
from sqlalchemy.engine import Engine
from sqlalchemy.exc import OperationalError, ProgrammingError

import maskjob
from maskjob.config import Settings
from maskjob.errors import MaskjobError
from maskjob.imageio import ImageReadError, max_file_bytes, output_dir, read_file_inside, read_rgb, write_text
from maskjob.reporting.compliance_data import WindowData, load_window
from maskjob.reporting.figures import (
    QUEUE_STRATA,
    UNDER_DELIVERY_TOLERANCE,
    ReviewAgreement,
    SiteFigures,
    camera_figures,
    registered_cameras,
    review_agreement,
)
from maskjob.reporting.render import CHART_RC, figure_data_uri, png_data_uri, template_environment
from maskjob.timeutil import to_naive_utc, zone
from maskjob.vocab import CLASS_COLOURS, slug

__all__ = ["render_compliance_report", "compliance_context", "face_crop"]

logger = logging.getLogger(__name__)


THUMB_PX = 160
MAX_HEATMAP_CAMERAS = 30
# Per reviewed camera, and pooled (figures.review_agreement).
Agreement = tuple[list[ReviewAgreement], ReviewAgreement | None]


@functools.cache
def _placeholder_uri(text: str = "frame file missing") -> str:
    return png_data_uri(_placeholder(text))


def _placeholder(text: str) -> np.ndarray:
    img = Image.new("RGB", (THUMB_PX, THUMB_PX), (224, 226, 230))
    draw = ImageDraw.Draw(img)
    draw.line([(20, 20), (THUMB_PX - 20, THUMB_PX - 20)], fill=(170, 174, 180), width=3)
    draw.line([(THUMB_PX - 20, 20), (20, THUMB_PX - 20)], fill=(170, 174, 180), width=3)
    draw.rectangle([(8, THUMB_PX // 2 - 12), (THUMB_PX - 8, THUMB_PX // 2 + 12)], fill=(224, 226, 230))
    draw.text((THUMB_PX // 2, THUMB_PX // 2), text, fill=(60, 64, 70), anchor="mm")
    return np.asarray(img)


def face_crop(rgb: np.ndarray, box: tuple[int, int, int, int], label: str, blur: bool,
              size_px: int = THUMB_PX, margin: float = 0.6) -> np.ndarray:
    """The face with ``margin`` (fraction of the box) of context, box drawn, fitted in ``size_px``.

    With ``blur`` the face box is pixelated to about 8 cells across and then blurred, which
    leaves the mask (or its absence) visible but not who it is.
    """
    h, w = rgb.shape[:2]
    x1, y1, x2, y2 = (int(v) for v in box)
    x1, x2 = sorted((min(max(x1, 0), w), min(max(x2, 0), w)))
    y1, y2 = sorted((min(max(y1, 0), h), min(max(y2, 0), h)))
    if x2 - x1 < 2 or y2 - y1 < 2:
        return _placeholder("box outside frame")
    mx, my = int((x2 - x1) * margin), int((y2 - y1) * margin)
    cx1, cy1, cx2, cy2 = max(x1 - mx, 0), max(y1 - my, 0), min(x2 + mx, w), min(y2 + my, h)
    crop = Image.fromarray(rgb[cy1:cy2, cx1:cx2])
    fx1, fy1, fx2, fy2 = x1 - cx1, y1 - cy1, x2 - cx1, y2 - cy1
    if blur:
        face = crop.crop((fx1, fy1, fx2, fy2))
        cell = max((fx2 - fx1) // 8, 1)
        small = face.resize((max((fx2 - fx1) // cell, 1), max((fy2 - fy1) // cell, 1)), Image.Resampling.BILINEAR)
        face = small.resize(face.size, Image.Resampling.NEAREST).filter(ImageFilter.GaussianBlur(cell / 2))
        crop.paste(face, (fx1, fy1))
    draw = ImageDraw.Draw(crop)
    line_px = max(2, round(max(crop.size) / 80))
    draw.rectangle([(fx1, fy1), (fx2 - 1, fy2 - 1)], outline=CLASS_COLOURS.get(label, (0, 0, 0)), width=line_px)
    crop.thumbnail((size_px, size_px), Image.Resampling.LANCZOS)
    return np.asarray(crop)


def _display_path(stored: str) -> tuple[str, PurePosixPath | None]:
    """The path as shown (never absolute) and the safe inbox-relative path to read, if any."""
    posix = PurePosixPath(stored.replace("\\", "/"))
    if posix.is_absolute() or PureWindowsPath(stored).is_absolute() or ".." in posix.parts:
        return posix.name, None
    return str(posix), posix


class _CropMaker:
    """Turns face rows into gallery items, reading each frame once (frames in parallel threads:
    JPEG decoding releases the GIL, and a month's gallery reads hundreds of frames).

    A frame is read only when its stored path resolves inside the inbox and it is a regular
    file (never blocking on a FIFO or device that replaced it); otherwise, or when it does
    not decode, its faces show a placeholder saying why."""

    def __init__(self, settings: Settings, blur: bool) -> None:
        self.tz = zone(settings.site_timezone)
        self.inbox = settings.inbox_dir
        self.max_pixels = settings.max_image_pixels
        self.blur = blur
        self.missing = 0
        self.unusable = 0

    def _read(self, rel: PurePosixPath | None) -> tuple[np.ndarray | None, str | None, bool]:
        """The frame's RGB, or ``None`` with the placeholder text and whether the file is missing."""
        if rel is None:
            logger.warning("gallery: a stored path is not inside the inbox; not read")
            return None, "frame refused", False
        try:
            data = read_file_inside(self.inbox / rel, self.inbox, max_file_bytes(self.max_pixels))
        except ImageReadError as exc:
            logger.warning("gallery: %s", exc)
            return None, "frame file missing" if exc.missing else "frame refused", exc.missing
        try:
            return read_rgb(rel, self.max_pixels, data=data), None, False
        except MaskjobError as exc:
            logger.warning("gallery: %s", exc)
            return None, "frame unreadable", False

    def _thumbs(self, rel: PurePosixPath | None, rows: list[Any]) -> tuple[list[str], bool, bool]:
        """JPEG data URIs of ``rows``' faces in the frame ``rel``, whether the frame was missing,
        and whether it was there but refused or undecodable (both: a placeholder)."""
        try:
            rgb, problem, missing = self._read(rel)
            if rgb is not None:
                crops = [face_crop(rgb, (r.x1, r.y1, r.x2, r.y2), r.label, self.blur) for r in rows]
                return [png_data_uri(c, "JPEG") for c in crops], False, False
        except Exception as exc:  # noqa: BLE001 - one bad frame must not break the report
            logger.warning("gallery: %s: %s: %s", rel, type(exc).__name__, exc)
            problem, missing = "frame unreadable", False
        return [_placeholder_uri(problem)] * len(rows), missing, not missing

    def items(self, faces: pd.DataFrame) -> list[dict[str, Any]]:
        rows = list(faces.itertuples(index=False))
        by_frame: dict[str, list[int]] = {}
        for i, row in enumerate(rows):
            by_frame.setdefault(row.image_path, []).append(i)
        uris: list[str] = [""] * len(rows)
        missing: list[bool] = [False] * len(rows)
        with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
            jobs = {
                pool.submit(self._thumbs, _display_path(path)[1], [rows[i] for i in idx]): idx
                for path, idx in by_frame.items()
            }
            for job, idx in jobs.items():
                thumbs, gone, refused = job.result()
                for i, uri in zip(idx, thumbs):
                    uris[i], missing[i] = uri, gone
                self.unusable += len(idx) if refused else 0
        self.missing += sum(missing)
        return [
            {
                "uri": uri,
                "label": row.label,
                "camera": row.camera_id,
                "time": _local(pd.Timestamp(row.captured_at).to_pydatetime(), self.tz).strftime("%Y-%m-%d %H:%M:%S %Z"),
                "confidence": float(row.confidence),
                "reviewed": bool(row.reviewed),
                "model_label": row.model_label,
                "file": _display_path(row.image_path)[0],
                "missing": gone,
            }
            for row, uri, gone in zip(rows, uris, missing)
        ]


def _series_chart(data: WindowData, start: datetime, end: datetime, hourly: bool,
                  tz_name: str) -> tuple[str, tuple[int, int]] | None:
    series = data.series
    if series.empty:
        return None
    if hourly:
        hours = series["bucket"].astype(int)
        buckets = [f"{h:02d}" for h in range(int(hours.min()), int(hours.max()) + 1)]
    else:
        tz = zone(tz_name)
        days = pd.date_range(_local(start, tz).date(), _local(end - timedelta(microseconds=1), tz).date(), freq="D")
        buckets = [d.strftime("%Y-%m-%d") for d in days]
    cameras = [c for c in data.cameras["camera_id"] if c in set(series["camera_id"])][:MAX_HEATMAP_CAMERAS]
    overall = series.groupby("bucket")[["with_mask", "faces"]].sum().reindex(buckets, fill_value=0)
    overall_rate = (overall["with_mask"] / overall["faces"]).where(overall["faces"] > 0)
    grid = series.set_index(["camera_id", "bucket"])
    rate = (grid["with_mask"] / grid["faces"]).where(grid["faces"] > 0).unstack("bucket")
    rate = rate.reindex(index=cameras, columns=buckets)

    x = np.arange(len(buckets))
    tick_labels = [f"{b}:00" for b in buckets] if hourly else [b[5:] for b in buckets]
    step = max(1, len(buckets) // 16)
    with rc_context(CHART_RC):
        fig = Figure(figsize=(max(7.0, 0.32 * len(buckets) + 3), 2.6 + 0.3 * len(cameras)), layout="constrained")
        top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=[2.0, max(1.0, 0.3 * len(cameras))])
        bars = top.twinx()
        bars.bar(x, overall["faces"].to_numpy(), color="#d0d7de", width=0.8, label="faces")
        bars.set_ylabel("faces seen", color="#59636e")
        top.set_zorder(bars.get_zorder() + 1)
        top.patch.set_visible(False)
        top.plot(x, 100 * overall_rate.to_numpy(), marker="o", color="#0969da", label="compliance, all cameras")
        top.set_ylim(0, 105)
        top.set_ylabel("faces with mask (%)")
        top.grid(axis="y", alpha=0.3)
        handles = top.get_legend_handles_labels()[0] + bars.get_legend_handles_labels()[0]
        top.legend(handles=handles, loc="lower left", bbox_to_anchor=(0.0, 1.0), ncols=2, frameon=False)
        img = bottom.imshow(100 * rate.to_numpy(dtype=float), aspect="auto", cmap="RdYlGn", vmin=0, vmax=100,
                            interpolation="nearest")
        bottom.set_yticks(range(len(cameras)), [str(c) for c in cameras])
        bottom.set_xticks(x[::step], tick_labels[::step], rotation=45 if not hourly else 0, ha="right" if not hourly else "center")
        bottom.set_xlabel(f"hour of day ({tz_name})" if hourly else f"day ({tz_name})")
        bottom.set_title("per camera, worst first (grey: no faces)", fontsize=9, loc="left")
        bottom.set_facecolor("#e6e8eb")
        fig.colorbar(img, ax=bottom, label="% with mask", shrink=0.9)
        return figure_data_uri(fig)


def _local(moment: datetime, tz: Any) -> datetime:
    """A naive UTC moment as an aware local time in ``tz``."""
    return moment.replace(tzinfo=UTC).astimezone(tz)


def _normalise_window(start: date | datetime, end: date | datetime, tz_name: str = "UTC") -> tuple[datetime, datetime]:
    """The window as naive UTC; a plain date means its midnight in ``tz_name`` (the site's zone)."""
    tz = zone(tz_name)

    def as_naive_utc(value: date | datetime) -> datetime:
        if isinstance(value, datetime):
            return to_naive_utc(value)
        return to_naive_utc(datetime.combine(value, time(), tzinfo=tz))

    start_dt = as_naive_utc(start)
    # A plain date as the end means "up to and including that day".
    end_dt = as_naive_utc(end) if isinstance(end, datetime) else as_naive_utc(end + timedelta(days=1))
    if end_dt <= start_dt:
        raise MaskjobError(f"report window is empty: end {end} is not after start {start}. Pass --to on or after --from.")
    return start_dt, end_dt


def _window_label(start: datetime, end: datetime, tz: Any) -> str:
    start, end = _local(start, tz), _local(end, tz)
    last = end - timedelta(microseconds=1)
    if start.time() == time() and end.time() == time():
        if start.date() == last.date():
            return start.strftime("%d %b %Y")
        return f"{start:%d %b %Y} to {last:%d %b %Y}"
    return f"{start:%Y-%m-%d %H:%M %Z} to {end:%Y-%m-%d %H:%M %Z}"


def _file_name(start: datetime, end: datetime, camera: str | None, tz: Any) -> str:
    start, end = _local(start, tz), _local(end, tz)
    if start.time() == time() and end.time() == time():
        stamp = f"{start:%Y%m%d}_{end - timedelta(days=1):%Y%m%d}"  # wall-clock arithmetic: DST-safe
    else:
        stamp = f"{start:%Y%m%dT%H%M}_{end:%Y%m%dT%H%M}"
    suffix = f"_{slug(camera, 40, 'camera')}" if camera else ""
    return f"compliance_{stamp}{suffix}.html"


def _change(now: float | int | None, before: float | int | None) -> float | int | None:
    return None if now is None or before is None else now - before


def _figures_context(site: SiteFigures, settings: Settings, camera: str | None) -> dict[str, Any]:
    """The per-camera targets, statuses and the silent / under-delivering lists for the page."""
    by_id = {c.camera_id: c.to_dict() for c in site.cameras}
    target = by_id[camera]["target"] if camera in by_id else settings.default_compliance_target
    return {
        "figures": by_id,
        "site_target": target,
        "silent": [by_id[c.camera_id] for c in site.by_status("silent")],
        "under_delivering": [by_id[c.camera_id] for c in site.by_status("under_delivering")],
        "below_target": [by_id[c.camera_id] for c in site.by_status("below_target")],
        "window_hours": site.hours,
        "under_delivery_tolerance": UNDER_DELIVERY_TOLERANCE,
        "unreadable_fraction": site.unreadable_fraction,
        "unreadable_limit": site.unreadable_limit,
        "unreadable_spike": site.unreadable_spike,
    }


def _reviews_context(agreement: Agreement) -> dict[str, Any]:
    """The Reviews section: per reviewed camera and pooled, counts and agreement per stratum."""
    cameras, pooled = agreement
    return {"cameras": [c.to_dict() for c in cameras], "all": pooled.to_dict() if pooled else None,
            "strata": list(QUEUE_STRATA)}


def compliance_context(data: WindowData, settings: Settings, start: datetime, end: datetime,
                       camera: str | None, blur: bool, site: SiteFigures | None = None,
                       agreement: Agreement = ([], None)) -> dict[str, Any]:
    """The template variables for a window's page (every value already safe to show).

    ``site`` is the window's :class:`~maskjob.reporting.figures.SiteFigures` (default: from
    ``data`` with no registered cameras); ``agreement`` its
    :func:`~maskjob.reporting.figures.review_agreement` (default: no reviews).
    """
    site = site or camera_figures(data, {}, settings, start, end, camera)
    tz = zone(settings.site_timezone)
    cur, prev = data.current, data.previous
    prev_seen = prev.frames > 0
    hourly = end - start <= timedelta(hours=25)
    crops = _CropMaker(settings, blur)
    gallery = []
    for cam, group in data.gallery.groupby("camera_id", sort=False):
        total = int(data.cameras.loc[data.cameras["camera_id"] == cam, ["without_mask", "partial_mask"]].sum(axis=1).iloc[0])
        gallery.append({"camera": cam, "total": total, "faces": crops.items(group), "more": total - len(group)})
    order = {cam: i for i, cam in enumerate(data.cameras["camera_id"])}
    gallery.sort(key=lambda g: order.get(g["camera"], len(order)))
    chart = _series_chart(data, start, end, hourly, settings.site_timezone)
    context = {
        "generated_at": datetime.now(UTC).strftime("%Y-%m-%d %H:%M"),
        "maskjob_version": maskjob.__version__,
        "window_label": _window_label(start, end, tz),
        "previous_label": _window_label(start - (end - start), start, tz),
        "start": f"{_local(start, tz):%Y-%m-%d %H:%M %Z}",
        "end": f"{_local(end, tz):%Y-%m-%d %H:%M %Z}",
        "start_utc": f"{start:%Y-%m-%d %H:%M} UTC",
        "end_utc": f"{end:%Y-%m-%d %H:%M} UTC",
        "timezone": settings.site_timezone,
        "camera": camera,
        "empty": cur.frames == 0,
        "models": data.models.to_dict("records"),
        "quality": {"frames": cur.frames, **data.status_counts, "reasons": data.reasons.to_dict("records")},
        "headline": {
            "rate": cur.rate,
            "rate_change": _change(cur.rate, prev.rate),
            "faces": cur.faces,
            "without_mask": cur.by_label["without_mask"],
            "partial_mask": cur.by_label["partial_mask"],
            "without_mask_change": _change(cur.by_label["without_mask"], prev.by_label["without_mask"] if prev_seen else None),
            "partial_mask_change": _change(cur.by_label["partial_mask"], prev.by_label["partial_mask"] if prev_seen else None),
        },
        "cameras": [
            {**row, "rate": None if pd.isna(row["rate"]) else row["rate"],
             "rate_change": None if pd.isna(row["rate"]) or pd.isna(row["prev_rate"]) else row["rate"] - row["prev_rate"]}
            for row in data.cameras.to_dict("records")
        ],
        "chart_uri": chart[0] if chart else None,
        "chart_size": chart[1] if chart else (0, 0),
        "bucket_label": "hour of day" if hourly else "day",
        "gallery": gallery,
        "gallery_cap": settings.gallery_cap,
        "blur": blur,
        "review": {"threshold": settings.review_threshold, "total": data.review_total, "faces": crops.items(data.review)},
        "reviews": _reviews_context(agreement),
        **_figures_context(site, settings, camera),
    }
    if crops.missing:
        logger.warning("%d gallery faces show a placeholder: their frame files are missing from %s",
                       crops.missing, settings.inbox_dir)
    if crops.unusable:
        logger.warning("%d gallery faces show a placeholder: their frames were refused (outside the inbox "
                       "or not regular files) or did not decode", crops.unusable)
    return context


def render_compliance_report(
    engine: Engine,
    settings: Settings,
    start: date | datetime,
    end: date | datetime,
    camera: str | None = None,
    out_dir: Path | None = None,
    blur: bool | None = None,
) -> Path:
    """Render the compliance page for ``[start, end)`` and return its path.

    Args:
        engine: the prediction database (schema at head).
        settings: ``inbox_dir`` (frames for the gallery), ``gallery_cap``, ``review_threshold``,
            ``blur_faces``, ``reports_dir``.
        start: first moment (a date means its midnight in ``settings.site_timezone``).
        end: end of the window, excluded; a plain date means the end of that day.
        camera: restrict to one camera id.
        out_dir: where to write (default ``settings.reports_dir``).
        blur: blur faces in crops (default ``settings.blur_faces``).

    Returns:
        The HTML file, e.g. ``reports/compliance_20261124_20261124.html``.

    Raises:
        MaskjobError: an empty window, or a database without the maskjob schema.
    """
    start_dt, end_dt = _normalise_window(start, end, settings.site_timezone)
    blur = settings.blur_faces if blur is None else blur
    try:
        data = load_window(engine, start_dt, end_dt, camera, gallery_cap=settings.gallery_cap,
                           review_threshold=settings.review_threshold, review_cap=settings.gallery_cap,
                           zone=settings.site_timezone)
        site = camera_figures(data, registered_cameras(engine), settings, start_dt, end_dt, camera)
        agreement = review_agreement(engine, data, start_dt, end_dt, camera, settings.review_threshold)
    except (OperationalError, ProgrammingError) as exc:
        raise MaskjobError(
            f"cannot read predictions from the database ({str(exc.orig).splitlines()[0]}). "
            "Run `maskjob db upgrade` to create the schema, then `maskjob score`."
        ) from None
    context = compliance_context(data, settings, start_dt, end_dt, camera, blur, site, agreement)
    html = template_environment().get_template("compliance.html").render(**context)
    out = output_dir(out_dir or settings.reports_dir, "report folder")
    path = write_text(out / _file_name(start_dt, end_dt, camera, zone(settings.site_timezone)), html, "report")
    logger.info("compliance report for %s: %s (%d KiB)", context["window_label"], path, len(html) // 1024)
    return path
