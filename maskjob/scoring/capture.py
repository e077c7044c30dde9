"""Capture times of CCTV frames: EXIF, file-name time stamps, mtime; camera zones.

Times with an offset (a name suffix ``+0100``/``Z``/``-0530``, EXIF ``OffsetTimeOriginal``)
and mtimes are absolute; times without one are the camera's wall time, read in its zone with
:func:`maskjob.timeutil.localize` (ambiguous -> first occurrence, non-existent -> moved
forward). Results are the instant as naive UTC, the form :class:`maskjob.scoring.frames.Frame`
carries.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta, tzinfo
from pathlib import Path
from zoneinfo import ZoneInfo

from maskjob.imageio import open_regular
from maskjob.timeutil import localize, to_naive_utc

__all__ = ["Zones", "camera_zone", "capture_time", "exif_timestamp", "mtime_utc", "name_timestamp", "to_instant"]

Zones = Mapping[str, tzinfo]
_UTC_ZONE = ZoneInfo("UTC")

_NAME_TS = re.compile(
    r"(?<!\d)(?P<Y>\d{4})(?P<s1>-?)(?P<m>\d{2})(?P=s1)(?P<d>\d{2})[T_ \-]?"
    r"(?P<H>\d{2})(?P<s2>[-:.]?)(?P<M>\d{2})(?P=s2)(?P<S>\d{2})"
    # Sub-second digits (``maskjob ingest --every`` under 1 s writes milliseconds) before the offset.
    r"(?:\.\d{1,6})?"
    # Real offsets only (hours <= 14, quarter hours), so a "-0001" counter is not one.
    r"(?P<z>Z|[+-](?:0\d|1[0-4]):?(?:00|15|30|45))?(?!\d)"
)
_OFFSET = re.compile(r"([+-])(\d{2}):?(\d{2})")


def _offset(text: str) -> timedelta | None:
    match = _OFFSET.fullmatch(text)
    if match is None:
        return None
    sign = 1 if match[1] == "+" else -1
    return sign * timedelta(hours=int(match[2]), minutes=int(match[3]))


def name_timestamp(name: str) -> datetime | None:
    """The first valid date-time in a file name: naive wall time (``20261124T071500.jpg``), or
    aware when an offset follows (``20261124T071500+0100.jpg``, ``...Z.jpg``)."""
    for match in _NAME_TS.finditer(name):
        try:
            taken = datetime(*(int(match[k]) for k in ("Y", "m", "d", "H", "M", "S")))
        except ValueError:
            continue
        suffix = match["z"]
        if suffix == "Z":
            return taken.replace(tzinfo=UTC)
        offset = _offset(suffix) if suffix else None
        return taken if offset is None else (taken - offset).replace(tzinfo=UTC)
    return None


def camera_zone(zones: Zones | None, camera_id: str) -> tzinfo:
    """The camera's zone: from ``zones`` (its ``default`` or ``__missing__`` for unknown ones), else UTC."""
    if zones is None:
        return _UTC_ZONE
    try:
        return zones[camera_id]
    except KeyError:
        return getattr(zones, "default", _UTC_ZONE)


def to_instant(taken: datetime, tz: tzinfo) -> datetime:
    """Naive UTC: an aware time converted, a naive one read as wall time in ``tz``."""
    return to_naive_utc(taken if taken.tzinfo is not None else localize(taken, tz))


def exif_timestamp(path: str | Path, follow: bool = True) -> datetime | None:
    """EXIF ``DateTimeOriginal``: aware when ``OffsetTimeOriginal`` is there, else naive wall
    time; ``None`` when absent or unreadable. Only a regular file is opened, never blocking."""
    from PIL import ExifTags, Image

    try:
        with open_regular(path, follow_symlinks=follow) as fh, Image.open(fh) as img:
            # The base method: PNG's own getexif decodes the whole image to look for EXIF.
            exif = Image.Image.getexif(img).get_ifd(ExifTags.IFD.Exif)
    except Exception:  # noqa: BLE001 - any unreadable header just means "no EXIF time"
        return None
    raw = exif.get(ExifTags.Base.DateTimeOriginal)
    if not isinstance(raw, str):
        return None
    try:
        taken = datetime.strptime(raw.strip("\x00 ").strip(), "%Y:%m:%d %H:%M:%S")
    except ValueError:
        return None
    raw_offset = exif.get(ExifTags.Base.OffsetTimeOriginal)
    offset = _offset(raw_offset.strip("\x00 ").strip()) if isinstance(raw_offset, str) else None
    # With an offset the time is absolute; without one it is the camera's wall time (naive).
    return taken if offset is None else (taken - offset).replace(tzinfo=UTC)


def mtime_utc(st: os.stat_result) -> datetime:
    """The file's modification time as naive UTC."""
    return datetime.fromtimestamp(st.st_mtime, UTC).replace(tzinfo=None)


def capture_time(path: Path, follow: bool = True, tz: tzinfo = UTC) -> tuple[datetime, str] | None:
    """The capture time of a file and where it came from (``exif``, ``name``, ``mtime``).

    Args:
        path: the image file.
        follow: read EXIF through symlinks (off for links that leave the inbox). EXIF is only
            ever read from a regular file, never blocking.
        tz: the camera's zone, for times without an offset.

    Returns:
        ``(naive UTC time, source)``, or ``None`` when the file no longer exists.
    """
    path = Path(path)
    if follow:
        taken = exif_timestamp(path)
        if taken is not None:
            return to_instant(taken, tz), "exif"
    taken = name_timestamp(path.name)
    if taken is not None:
        return to_instant(taken, tz), "name"
    try:
        st = os.stat(path) if follow else os.lstat(path)
    except OSError:
        try:
            st = os.lstat(path)
        except OSError:
            return None
    return mtime_utc(st), "mtime"  # naive UTC already
