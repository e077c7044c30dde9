"""Capture times of ingested frames: a video file's start time, the camera's zone, frame names.

A file's frame ``i`` was captured at the container's start time plus the frame's position in
the video. The start time comes from, in order: ``--start``; the container's
``creation_time`` tag (``ffprobe``); the file's modification time minus its duration (a
recorder closes the file when it stops, so mtime is the end of the recording).

Frame names are the local wall time with its UTC offset, ``YYYYMMDDTHHMMSS±HHMM`` (e.g.
``20261124T071500+0100``), in a folder named for the local date; intervals under a second
add milliseconds, ``YYYYMMDDTHHMMSS.fff±HHMM``.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

from maskjob.config import Settings
from maskjob.errors import MaskjobError
from maskjob.timeutil import check_year, zone

__all__ = ["VideoStart", "camera_zone", "date_folder", "frame_name", "parse_local_time", "video_start"]

logger = logging.getLogger(__name__)

# ffprobe reads only the container header; a file that takes longer is not a local video.
FFPROBE_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class VideoStart:
    """When a video file's first frame was captured (aware UTC) and how that was found
    (``--start``, ``container``, ``mtime``)."""

    at_utc: datetime
    source: str


def parse_local_time(text: str, tz: ZoneInfo) -> datetime:
    """An ISO 8601 date-time as aware UTC; one without an offset is a wall time in ``tz``.

    Raises:
        MaskjobError: not an ISO 8601 time, or a year outside the supported range.
    """
    try:
        value = check_year(datetime.fromisoformat(text.strip()))
    except ValueError as exc:
        raise MaskjobError(f"{text!r} is not an ISO 8601 time ({exc}); use e.g. 2026-11-24T07:00:00 "
                           "(the camera's local time) or 2026-11-24T06:00:00Z") from None
    if value.tzinfo is None:
        value = value.replace(tzinfo=tz)
    return value.astimezone(UTC)


def _ffprobe_format(path: Path) -> dict:
    """ffprobe's ``format`` section of ``path`` ({} when ffprobe is missing or fails)."""
    ffprobe = shutil.which("ffprobe")
    if ffprobe is None:
        logger.info("ffprobe not found; the container's creation time cannot be read")
        return {}
    cmd = [ffprobe, "-v", "error", "-show_entries", "format=duration:format_tags=creation_time",
           "-of", "json", "--", str(path)]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=FFPROBE_TIMEOUT_S, check=False)
        return json.loads(done.stdout or "{}").get("format", {}) if done.returncode == 0 else {}
    except (OSError, subprocess.TimeoutExpired, ValueError):
        return {}


def _creation_time(text: object) -> datetime | None:
    if not isinstance(text, str) or not text.strip():
        return None
    try:
        value = check_year(datetime.fromisoformat(text.strip().replace("Z", "+00:00")))
    except ValueError:
        return None
    # Containers store UTC (ISO BMFF, Matroska); a naive tag is UTC too.
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def video_start(path: Path, duration_s: float | None, start: datetime | None = None) -> VideoStart:
    """The capture time of the first frame of the video file ``path``.

    Args:
        path: the video file.
        duration_s: its duration from the decoder, used when ffprobe gives none.
        start: ``--start`` (aware), which wins over what the file says.
    """
    if start is not None:
        return VideoStart(start.astimezone(UTC), "--start")
    fmt = _ffprobe_format(path)
    created = _creation_time(fmt.get("tags", {}).get("creation_time"))
    if created is not None:
        return VideoStart(created, "container")
    try:
        duration_s = float(fmt["duration"])
    except (KeyError, TypeError, ValueError):
        pass
    end = datetime.fromtimestamp(os.stat(path).st_mtime, UTC)
    began = end - timedelta(seconds=max(0.0, duration_s or 0.0))
    logger.warning("%s has no creation time in its container; taking its modification time minus its "
                   "duration (%s UTC); pass --start to set the recording's start", path.name,
                   began.strftime("%Y-%m-%d %H:%M:%S"))
    return VideoStart(began, "mtime")


def frame_name(at_utc: datetime, tz: ZoneInfo, subsecond: bool) -> str:
    """The file name (no folder) of a frame captured at ``at_utc`` (aware) in zone ``tz``."""
    local = at_utc.astimezone(tz)
    fraction = f".{local.microsecond // 1000:03d}" if subsecond else ""
    return f"{local:%Y%m%dT%H%M%S}{fraction}{local:%z}.jpg"


def date_folder(at_utc: datetime, tz: ZoneInfo) -> str:
    """The local date ``YYYY-MM-DD`` (the inbox's day folder) of ``at_utc`` in zone ``tz``."""
    return f"{at_utc.astimezone(tz):%Y-%m-%d}"


def _registered_zone(settings: Settings, camera: str) -> str | None:
    """The camera's zone in the camera registry, or ``None`` (no database, no ``cameras``
    table yet, or an unregistered camera). Never creates a database."""
    from maskjob.storage.cameras import get_camera
    from maskjob.storage.database import engine_for, parse_url

    url = parse_url(settings.database_url)
    if url.get_backend_name() == "sqlite" and not (url.database and Path(url.database).is_file()):
        return None
    try:
        with engine_for(url) as engine, engine.connect() as conn:
            found = get_camera(conn, camera)
    except Exception as exc:  # noqa: BLE001 - any database problem means "not registered here"
        logger.info("camera %s: zone not looked up in the database (%s); using site_timezone",
                    camera, type(exc).__name__)
        return None
    return None if found is None else found.timezone


def camera_zone(settings: Settings, camera: str, override: str | None = None) -> tuple[ZoneInfo, str]:
    """The zone a camera's frames are named in, and where it came from.

    ``override`` (``--timezone``) wins; then the camera's zone in the registry
    (``maskjob.storage.cameras``) when the database is reachable; else ``site_timezone``.

    Raises:
        MaskjobError: ``override`` or the registered zone is not an IANA zone name.
    """
    for name, source in ((override, "--timezone"), (_registered_zone(settings, camera), "cameras table")):
        if name is None:
            continue
        try:
            return zone(name), source
        except ValueError as exc:
            raise MaskjobError(f"{source}: {exc}") from None
    return zone(settings.site_timezone), "site_timezone"
