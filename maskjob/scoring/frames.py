"""CCTV frames in the inbox: discovery, capture time, sharding and decoding.

A frame is ``<inbox>/<camera_id>/<name>``. Its capture time is, in order of precedence,
EXIF ``DateTimeOriginal`` (shifted by ``OffsetTimeOriginal`` when present), else a
timestamp in the file name (``YYYYMMDDTHHMMSS``, ``YYYYMMDD_HHMMSS``,
``YYYY-MM-DD_HH-MM-SS``, ...), else the file's modification time. Times without a zone
are taken as UTC; all times are returned as naive UTC.

Example:
    >>> frames = discover_frames(settings.inbox_dir, since, until)      # doctest: +SKIP
    >>> mine = shard_frames(frames, 0, 2)                               # doctest: +SKIP
    >>> decode_frame(mine[0], settings.inbox_dir.resolve(), settings.max_image_pixels).reason  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Sequence

import numpy as np

from maskjob.errors import MaskjobError
from maskjob.imageio import is_image_name, read_rgb, sha256_bytes
from maskjob.timeutil import to_naive_utc

__all__ = [
    "DecodedFrame",
    "Frame",
    "capture_time",
    "decode_frame",
    "discover_frames",
    "name_timestamp",
    "shard_frames",
]

logger = logging.getLogger(__name__)

ROOT_CAMERA_ID = "unknown"

_NAME_TS = re.compile(
    r"(?<!\d)(?P<Y>\d{4})(?P<s1>-?)(?P<m>\d{2})(?P=s1)(?P<d>\d{2})[T_ \-]?"
    r"(?P<H>\d{2})(?P<s2>[-:.]?)(?P<M>\d{2})(?P=s2)(?P<S>\d{2})(?!\d)"
)


@dataclass(frozen=True)
class Frame:
    """A CCTV frame found in the inbox. ``time_source`` is ``exif``, ``name`` or ``mtime``."""

    path: Path
    rel_path: str
    camera_id: str
    captured_at: datetime
    time_source: str


@dataclass
class DecodedFrame:
    """A frame after reading: the RGB array, or ``reason`` why it could not be read."""

    frame: Frame
    rgb: np.ndarray | None
    content_sha256: str | None
    reason: str | None


def name_timestamp(name: str) -> datetime | None:
    """The first valid date-time in a file name, e.g. ``20261124T071500.jpg``."""
    for match in _NAME_TS.finditer(name):
        try:
            return datetime(*(int(match[k]) for k in ("Y", "m", "d", "H", "M", "S")))
        except ValueError:
            continue
    return None


def _exif_timestamp(path: Path) -> datetime | None:
    from PIL import ExifTags, Image

    try:
        with Image.open(path) as img:
            exif = img.getexif().get_ifd(ExifTags.IFD.Exif)
    except Exception:  # noqa: BLE001 - any unreadable header just means "no EXIF time"
        return None
    raw = exif.get(ExifTags.Base.DateTimeOriginal)
    if not isinstance(raw, str):
        return None
    try:
        taken = datetime.strptime(raw.strip("\x00 ").strip(), "%Y:%m:%d %H:%M:%S")
    except ValueError:
        return None
    offset = exif.get(ExifTags.Base.OffsetTimeOriginal)
    if isinstance(offset, str):
        match = re.fullmatch(r"([+-])(\d{2}):?(\d{2})", offset.strip("\x00 ").strip())
        if match:
            sign = 1 if match[1] == "+" else -1
            taken -= sign * timedelta(hours=int(match[2]), minutes=int(match[3]))
    return taken


def capture_time(path: Path, follow: bool = True) -> tuple[datetime, str] | None:
    """The capture time of a file and where it came from (``exif``, ``name``, ``mtime``).

    Args:
        path: the image file.
        follow: read EXIF through symlinks (off for links that leave the inbox).

    Returns:
        ``(naive UTC time, source)``, or ``None`` when the file no longer exists.
    """
    if follow:
        taken = _exif_timestamp(path)
        if taken is not None:
            return taken, "exif"
    taken = name_timestamp(path.name)
    if taken is not None:
        return taken, "name"
    try:
        stat = path.stat() if follow else path.lstat()
    except OSError:
        try:
            stat = path.lstat()
        except OSError:
            return None
    return datetime.fromtimestamp(stat.st_mtime, UTC).replace(tzinfo=None), "mtime"


def _inside(path: Path, root: Path) -> bool:
    return path.resolve().is_relative_to(root)


def discover_frames(
    inbox: str | Path, since: datetime | None = None, until: datetime | None = None
) -> list[Frame]:
    """Image files under ``inbox`` captured in ``[since, until)``, sorted by time then path.

    The camera id is the first folder under the inbox (``unknown`` for files directly in
    it). Hidden files and folders (leading ``.``) are ignored; folder symlinks are not
    followed; file symlinks are listed (scoring refuses those that leave the inbox).

    Raises:
        MaskjobError: the inbox is not a folder.
    """
    inbox = Path(inbox)
    if not inbox.is_dir():
        raise MaskjobError(f"inbox {inbox} is not a folder; pass --inbox DIR or set inbox_dir")
    root = inbox.resolve()
    since = to_naive_utc(since) if since else None
    until = to_naive_utc(until) if until else None
    frames: list[Frame] = []
    for dirpath, dirnames, filenames in os.walk(inbox):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in filenames:
            if name.startswith(".") or not is_image_name(name):
                continue
            path = Path(dirpath) / name
            rel = path.relative_to(inbox)
            found = capture_time(path, follow=_inside(path, root))
            if found is None:
                logger.warning("%s vanished while listing the inbox; not scored", rel.as_posix())
                continue
            captured_at, source = found
            if (since and captured_at < since) or (until and captured_at >= until):
                continue
            camera = rel.parts[0] if len(rel.parts) > 1 else ROOT_CAMERA_ID
            frames.append(Frame(path, rel.as_posix(), camera, captured_at, source))
    frames.sort(key=lambda f: (f.captured_at, f.rel_path))
    return frames


def shard_frames(frames: Sequence[Frame], index: int, count: int) -> list[Frame]:
    """Frames of shard ``index`` of ``count`` (0-based), by a stable hash of ``rel_path``."""
    if count < 1 or not 0 <= index < count:
        raise MaskjobError(f"bad shard {index}/{count}: need 0 <= index < count, e.g. --shard 0/2")
    return [
        f for f in frames
        if int.from_bytes(hashlib.sha256(f.rel_path.encode()).digest()[:8], "big") % count == index
    ]


def decode_frame(frame: Frame, inbox_root: Path, max_pixels: int) -> DecodedFrame:
    """Read and decode one frame; every failure becomes a ``reason`` instead of an error."""
    try:
        target = frame.path.resolve()
    except OSError as exc:
        return DecodedFrame(frame, None, None, f"cannot resolve path ({exc})")
    if not target.is_relative_to(inbox_root):
        return DecodedFrame(
            frame, None, None, f"symlink points outside the inbox (to {target}); refused for safety"
        )
    try:
        with open(target, "rb") as fh:
            data = fh.read()
    except FileNotFoundError:
        return DecodedFrame(frame, None, None, "file vanished before it could be read")
    except PermissionError:
        return DecodedFrame(frame, None, None, "permission denied; make the file readable by the scorer")
    except OSError as exc:
        return DecodedFrame(frame, None, None, f"cannot read file ({exc.strerror or exc})")
    digest = sha256_bytes(data)
    try:
        rgb = read_rgb(frame.rel_path, max_pixels, data=data)
    except MaskjobError as exc:
        return DecodedFrame(frame, None, digest, str(exc).removeprefix(f"{frame.rel_path}: "))
    except Exception as exc:  # noqa: BLE001 - a hostile file must not stop the run
        return DecodedFrame(frame, None, digest, f"decoder failed ({type(exc).__name__}: {exc})")
    return DecodedFrame(frame, rgb, digest, None)
