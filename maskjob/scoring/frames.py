"""CCTV frames in the inbox: discovery, capture time, sharding and decoding.

A frame is ``<inbox>/<camera_id>/<name>``. Its capture time is, in order of precedence,
EXIF ``DateTimeOriginal`` (shifted by ``OffsetTimeOriginal`` when present), else a
timestamp in the file name (``YYYYMMDDTHHMMSS``, ``YYYYMMDD_HHMMSS``,
``YYYY-MM-DD_HH-MM-SS``, ...; an offset may follow: ``20261124T071500+0100``, ``...Z``,
``...-0530``), else the file's modification time. Times with an offset and mtimes are
absolute; times without one are the camera's wall time, read in the camera's zone
(:func:`maskjob.timeutil.localize`: ambiguous -> first occurrence, non-existent -> moved
forward). :attr:`Frame.captured_at` is the instant as naive UTC (the database column takes
naive values as UTC; comparisons with the interval stay naive).

A camera folder holding date folders (``<camera>/<YYYY-MM-DD>/...``, local dates) has only
the date folders that can overlap the interval listed (one day of margin either side).

The inbox is treated as hostile. Discovery never opens anything but a regular file (and
that without blocking), and never stops on one bad entry: a FIFO, socket or device named
like a frame, a symlink loop, a dangling link, a link leaving the inbox, a link to a
folder, a file it may not examine and a name that is not valid UTF-8 each become a
:class:`Frame` with a ``reason``, which :func:`decode_frame` turns into an unreadable
:class:`DecodedFrame` (so the scorer stores an ``unreadable`` row with that reason). Such
frames take their time from the name, else from ``lstat``'s mtime. A sub-folder that cannot
be listed is one run-level warning (:attr:`InboxScan.warnings`) naming it.

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
import stat
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, tzinfo
from pathlib import Path

import numpy as np

from maskjob.errors import MaskjobError
from maskjob.imageio import (
    ImageReadError,
    display_path,
    file_kind,
    is_image_name,
    is_within,
    max_file_bytes,
    os_error_reason,
    read_file_inside,
    read_rgb,
    sha256_bytes,
)
from maskjob.scoring.capture import (
    Zones,
    camera_zone,
    capture_time,
    exif_timestamp,
    mtime_utc,
    name_timestamp,
    to_instant,
)
from maskjob.timeutil import to_naive_utc, to_utc

__all__ = [
    "DecodedFrame",
    "Frame",
    "InboxScan",
    "Zones",
    "camera_zone",
    "capture_time",
    "decode_frame",
    "discover_frames",
    "name_timestamp",
    "scan_inbox",
    "shard_frames",
]

logger = logging.getLogger(__name__)

ROOT_CAMERA_ID = "unknown"

NON_UTF8_REASON = (
    "file name is not valid UTF-8 (stored with the invalid bytes escaped as \\xNN); "
    "rename it to UTF-8 to have it scored"
)

_DATE_FOLDER = re.compile(r"\d{4}-\d{2}-\d{2}")


@dataclass(frozen=True)
class Frame:
    """A CCTV frame found in the inbox. ``time_source`` is ``exif``, ``name`` or ``mtime``.

    ``rel_path`` and ``camera_id`` are always valid text (what the database stores), while
    ``path`` is the file itself. ``reason`` is set when discovery already knows the frame
    cannot be read (e.g. a FIFO or a symlink loop); :func:`decode_frame` then reports it
    without opening anything.
    """

    path: Path
    rel_path: str
    camera_id: str
    captured_at: datetime
    time_source: str
    reason: str | None = None


@dataclass(frozen=True)
class InboxScan:
    """What :func:`scan_inbox` found: the frames, and run-level problems (folders that could
    not be listed, folder symlinks not followed, files that could not be placed in time)."""

    frames: list[Frame]
    warnings: list[str] = field(default_factory=list)


@dataclass
class DecodedFrame:
    """A frame after reading: the RGB array, or ``reason`` why it could not be read."""

    frame: Frame
    rgb: np.ndarray | None
    content_sha256: str | None
    reason: str | None


def _list_folder(folder: Path) -> tuple[list[os.DirEntry[str]], OSError | None]:
    """The entries of ``folder``, and the error that stopped the listing (entries read
    before it are kept)."""
    entries: list[os.DirEntry[str]] = []
    try:
        with os.scandir(folder) as it:
            for entry in it:
                entries.append(entry)  # noqa: PERF402 - keeps the entries read before an error
    except OSError as exc:
        return entries, exc
    return entries, None


def _links_to_folder(entry: os.DirEntry[str]) -> bool:
    try:
        return entry.is_symlink() and entry.is_dir(follow_symlinks=True)
    except OSError:
        return False


def _frame(path: Path, inbox: Path, root: str, zones: Zones | None) -> Frame | str | None:
    """The frame for the image-named non-folder entry ``path``: a :class:`Frame` (with a
    ``reason`` when it cannot be read), a warning when it cannot be placed in time, or
    ``None`` when it vanished."""
    rel_raw = path.relative_to(inbox).as_posix()
    rel = display_path(rel_raw)
    parts = rel.split("/")
    camera = parts[0] if len(parts) > 1 else ROOT_CAMERA_ID
    problems: list[str] = []
    exif_from: str | None = None  # the regular file to read EXIF from, if any
    try:
        lst = os.lstat(path)
    except FileNotFoundError:
        logger.warning("%s vanished while listing the inbox; not scored", rel)
        return None
    except OSError as exc:
        lst = None
        problems.append(f"cannot examine the file: {os_error_reason(exc, path)[0]}")
    st = lst
    if lst is None:
        pass
    elif stat.S_ISREG(lst.st_mode):
        exif_from = str(path)
    elif stat.S_ISLNK(lst.st_mode):
        real = os.path.realpath(path)
        if not is_within(real, root):
            problems.append(f"symlink points outside the inbox (to {display_path(real)}); refused for safety")
        else:
            try:
                target = os.stat(path)
            except OSError as exc:
                problems.append(os_error_reason(exc, path)[0])
            else:
                if stat.S_ISREG(target.st_mode):
                    exif_from, st = real, target
                else:
                    problems.append(f"symlink to {file_kind(target.st_mode)}; only regular files are read")
    else:
        problems.append(f"{file_kind(lst.st_mode)}, not a regular file; refused unread")
    if rel != rel_raw:
        problems.append(NON_UTF8_REASON)
    reason = "; ".join(problems) or None

    taken = exif_timestamp(exif_from, follow=False) if exif_from is not None and reason is None else None
    source = "exif"
    if taken is None:
        taken, source = name_timestamp(path.name), "name"
    if taken is not None:
        taken = to_instant(taken, camera_zone(zones, camera))
    elif st is not None:
        taken, source = mtime_utc(st), "mtime"  # absolute, already naive UTC
    if taken is None:
        return (f"{rel}: {reason}, and it has no time stamp in its name to place it in an interval; "
                "not scored until it can be examined")
    return Frame(path, rel, camera, taken, source, reason)


def _date_window(since: datetime | None, until: datetime | None, tz: tzinfo) -> tuple[date | None, date | None]:
    """The local dates (one day of margin either side) whose date folder can hold a frame of the interval."""
    low = to_utc(since).astimezone(tz).date() - timedelta(days=1) if since else None
    high = to_utc(until).astimezone(tz).date() + timedelta(days=1) if until else None
    return low, high


def _outside(name: str, window: tuple[date | None, date | None]) -> bool:
    """Whether ``name`` is a date folder (``YYYY-MM-DD``) outside ``window``."""
    if not _DATE_FOLDER.fullmatch(name):
        return False
    try:
        day = date.fromisoformat(name)
    except ValueError:
        return False
    low, high = window
    return (low is not None and day < low) or (high is not None and day > high)


def scan_inbox(inbox: str | Path, since: datetime | None = None, until: datetime | None = None, *,
               zones: Zones | None = None) -> InboxScan:
    """Image files under ``inbox`` captured in ``[since, until)``, and the run-level problems.

    Frames are sorted by time then path. The camera id is the first folder under the inbox
    (``unknown`` for files directly in it). Hidden files and folders (leading ``.``) are
    ignored; folder symlinks are not followed (each is a warning); every image-named entry
    that is not a folder is a frame, those that cannot be read with a ``reason`` (see the
    module docstring). Nothing but regular files is opened, and only to read EXIF.

    Args:
        inbox: the CCTV inbox.
        since, until: the interval (aware, or naive UTC); ``None`` = open.
        zones: camera id -> zone, for times without an offset and date folders; unknown
            cameras take ``zones.default`` (or ``__missing__``, as
            :class:`maskjob.storage.cameras.CameraZones` does); ``None``: every camera in UTC.

    Raises:
        MaskjobError: the inbox is not a folder, or cannot be listed at all.
    """
    inbox = Path(inbox)
    if not inbox.is_dir():
        raise MaskjobError(f"inbox {display_path(inbox)} is not a folder; pass --inbox DIR or set inbox_dir")
    root = os.path.realpath(inbox)
    since = to_naive_utc(since) if since else None
    until = to_naive_utc(until) if until else None
    frames: list[Frame] = []
    warnings: list[str] = []
    folders = [inbox]
    while folders:
        folder = folders.pop()
        shown = display_path(folder.relative_to(inbox).as_posix())
        entries, error = _list_folder(folder)
        if error is not None:
            why = os_error_reason(error, folder)[0].replace("the file", "the folder")
            if folder == inbox and not entries:
                raise MaskjobError(f"cannot list the inbox {display_path(inbox)}: {why}")
            warnings.append(f"folder {shown} could not be listed ({why}); "
                            + (f"only the {len(entries)} entries read before the error are scored"
                               if entries else "none of its frames are scored until it can be read"))
        subfolders: list[Path] = []
        depth = len(folder.relative_to(inbox).parts)
        window = _date_window(since, until, camera_zone(zones, display_path(folder.name))) if depth == 1 else None
        for entry in sorted(entries, key=lambda e: e.name):
            if entry.name.startswith("."):
                continue
            path = Path(entry.path)
            try:
                is_folder = entry.is_dir(follow_symlinks=False)
            except OSError:
                is_folder = False
            if is_folder:
                if window is None or not _outside(entry.name, window):
                    subfolders.append(path)
                continue
            if not is_image_name(entry.name):
                if _links_to_folder(entry):
                    warnings.append(f"folder symlink {display_path(path.relative_to(inbox).as_posix())} is not "
                                    "followed; move or bind-mount its frames into the inbox to have them scored")
                continue
            try:
                found = _frame(path, inbox, root, zones)
            except Exception as exc:  # noqa: BLE001 - one odd entry must not stop discovery
                found = display_path(f"{path.relative_to(inbox).as_posix()}: could not be examined "
                                     f"({type(exc).__name__}: {exc}); not scored")
            if isinstance(found, str):
                warnings.append(found)
            elif found is not None and not (since and found.captured_at < since) \
                    and not (until and found.captured_at >= until):
                frames.append(found)
        folders.extend(reversed(subfolders))
    for warning in warnings:
        logger.warning("inbox: %s", warning)
    frames.sort(key=lambda f: (f.captured_at, f.rel_path))
    return InboxScan(frames, warnings)


def discover_frames(
    inbox: str | Path, since: datetime | None = None, until: datetime | None = None, *, zones: Zones | None = None
) -> list[Frame]:
    """The frames of :func:`scan_inbox` (its warnings are logged).

    Raises:
        MaskjobError: the inbox is not a folder, or cannot be listed at all.
    """
    return scan_inbox(inbox, since, until, zones=zones).frames


def shard_frames(frames: Sequence[Frame], index: int, count: int) -> list[Frame]:
    """Frames of shard ``index`` of ``count`` (0-based), by a stable hash of ``rel_path``."""
    if count < 1 or not 0 <= index < count:
        raise MaskjobError(f"bad shard {index}/{count}: need 0 <= index < count, e.g. --shard 0/2")
    return [
        f for f in frames
        if int.from_bytes(hashlib.sha256(f.rel_path.encode()).digest()[:8], "big") % count == index
    ]


def decode_frame(frame: Frame, inbox_root: Path, max_pixels: int) -> DecodedFrame:
    """Read and decode one frame; every failure becomes a ``reason`` instead of an error.

    A frame discovery already refused (``frame.reason``) is not touched. Otherwise the file
    is read only if it resolves inside ``inbox_root`` and is a regular file (never blocking).
    """
    if frame.reason is not None:
        return DecodedFrame(frame, None, None, frame.reason)
    try:
        return _decode_frame(frame, inbox_root, max_pixels)
    except Exception as exc:  # noqa: BLE001 - a hostile file must not stop the run
        return DecodedFrame(frame, None, None, display_path(f"cannot read frame ({type(exc).__name__}: {exc})"))


def _decode_frame(frame: Frame, inbox_root: Path, max_pixels: int) -> DecodedFrame:
    try:
        data = read_file_inside(frame.path, inbox_root, max_file_bytes(max_pixels))
    except ImageReadError as exc:
        return DecodedFrame(frame, None, None, "file vanished before it could be read" if exc.missing else exc.reason)
    digest = sha256_bytes(data)
    try:
        rgb = read_rgb(frame.rel_path, max_pixels, data=data)
    except ImageReadError as exc:
        return DecodedFrame(frame, None, digest, exc.reason)
    except MaskjobError as exc:
        return DecodedFrame(frame, None, digest, str(exc).removeprefix(f"{frame.rel_path}: "))
    return DecodedFrame(frame, rgb, digest, None)
