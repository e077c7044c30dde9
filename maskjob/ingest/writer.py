"""Frames into the inbox: safe camera folders, atomic JPEG writes with EXIF times, resume state.

Every file is written under a hidden temporary name (``.ingest-<pid>-...``, which the
scanner ignores) in its final folder, flushed to disk, then renamed, so a reader sees a
whole frame or none. A frame whose name already exists is left alone: a rerun after a crash
never duplicates. A file's progress is a small JSON state in the camera folder
(``.ingest-<key>.json``), written the same way after each frame.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import numpy as np

from maskjob.errors import MaskjobError
from maskjob.ingest.clock import date_folder, frame_name
from maskjob.vocab import slug

__all__ = [
    "FrameWriter", "ResumeState", "camera_folder", "check_camera_id", "encode_jpeg", "remove_stale_temps", "state_key",
    "write_atomic",
]

logger = logging.getLogger(__name__)

CAMERA_ID_MAX_CHARS = 64
JPEG_QUALITY = 92
TEMP_PREFIX = ".ingest-"
_TEMP_NAME = re.compile(r"\.ingest-(\d+)-.*\.tmp")

# EXIF tags (Pillow's ExifTags.Base values) for the capture time and its offset.
_EXIF_IFD = 0x8769
_DATETIME = 0x0132
_DATETIME_ORIGINAL = 0x9003
_OFFSET_TIME_ORIGINAL = 0x9011
_SUBSEC_TIME_ORIGINAL = 0x9291


def check_camera_id(camera: str) -> str:
    """``camera`` if it is a safe folder name (letters, digits, ``_ . -``; no leading dot).

    Raises:
        MaskjobError: empty, ``..``, a path separator or another character that is not allowed.
    """
    if not camera or slug(camera, CAMERA_ID_MAX_CHARS, "") != camera:
        raise MaskjobError(
            f"camera id {camera!r} is not a safe folder name; use up to {CAMERA_ID_MAX_CHARS} letters, "
            "digits, '_', '-' or '.' (not first or last), e.g. --camera cam-lobby")
    return camera


def camera_folder(inbox: Path, camera: str) -> Path:
    """``<inbox>/<camera>`` after :func:`check_camera_id`, created if needed."""
    folder = Path(inbox) / check_camera_id(camera)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise MaskjobError(f"cannot create the camera folder {folder}: {exc.strerror}; "
                           "check the inbox path (--inbox) and its permissions") from None
    return folder


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a hidden temporary file in the same folder, fsync, rename.

    Raises:
        MaskjobError: the folder is not writable or the disk is full.
    """
    temp = path.with_name(f"{TEMP_PREFIX}{os.getpid()}-{path.name}.tmp")
    try:
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(temp, path)
        except BaseException:
            temp.unlink(missing_ok=True)
            raise
        _fsync_dir(path.parent)
    except OSError as exc:
        raise MaskjobError(f"cannot write {path}: {exc.strerror or exc}; check the inbox's free space "
                           "and permissions") from None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temps(folder: Path) -> int:
    """Delete the temporary files a killed ingester left in ``folder``; the number removed."""
    removed = 0
    for entry in os.scandir(folder):
        match = _TEMP_NAME.fullmatch(entry.name)
        if match and int(match[1]) != os.getpid() and not _pid_alive(int(match[1])):
            Path(entry.path).unlink(missing_ok=True)
            removed += 1
    return removed


def encode_jpeg(bgr: np.ndarray, at_utc: datetime, tz: ZoneInfo) -> bytes:
    """A JPEG of the OpenCV (BGR) frame with EXIF DateTimeOriginal, OffsetTimeOriginal, SubSecTimeOriginal."""
    from PIL import Image

    local = at_utc.astimezone(tz)
    offset = local.strftime("%z")
    img = Image.fromarray(np.ascontiguousarray(bgr[..., ::-1]))
    exif = Image.Exif()
    stamp = local.strftime("%Y:%m:%d %H:%M:%S")
    exif[_DATETIME] = stamp
    ifd = exif.get_ifd(_EXIF_IFD)
    ifd[_DATETIME_ORIGINAL] = stamp
    ifd[_OFFSET_TIME_ORIGINAL] = f"{offset[:3]}:{offset[3:]}"
    ifd[_SUBSEC_TIME_ORIGINAL] = f"{local.microsecond // 1000:03d}"
    out = io.BytesIO()
    img.save(out, format="JPEG", quality=JPEG_QUALITY, exif=exif)
    return out.getvalue()


class FrameWriter:
    """Writes one camera's frames as ``<camera folder>/<local date>/<name>.jpg``.

    Args:
        folder: the camera folder (:func:`camera_folder`).
        tz: the camera's zone (names and folders are local wall time).
        subsecond: add milliseconds to names (intervals under a second).
    """

    def __init__(self, folder: Path, tz: ZoneInfo, subsecond: bool) -> None:
        self.folder, self.tz, self.subsecond = folder, tz, subsecond
        self._ready: set[Path] = set()

    def path_for(self, at_utc: datetime) -> Path:
        """Where the frame captured at ``at_utc`` goes."""
        return self.folder / date_folder(at_utc, self.tz) / frame_name(at_utc, self.tz, self.subsecond)

    def write(self, bgr: np.ndarray, at_utc: datetime) -> Path | None:
        """Write the frame; ``None`` (nothing written) when a frame of that name exists."""
        path = self.path_for(at_utc)
        if path.parent not in self._ready:
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                removed = remove_stale_temps(path.parent)
            except OSError as exc:
                raise MaskjobError(f"cannot create or list {path.parent}: {exc.strerror or exc}; "
                                   "check the inbox's permissions") from None
            if removed:
                logger.info("removed %d temporary files of an interrupted ingest in %s", removed, path.parent)
            self._ready.add(path.parent)
        if path.exists():
            return None
        write_atomic(path, encode_jpeg(bgr, at_utc, self.tz))
        return path


def state_key(source_id: str, start_utc: datetime, every_s: float) -> str:
    """The resume-state key of one ingest of a file: its path, start time and interval."""
    text = f"{source_id}|{start_utc.astimezone(UTC).isoformat()}|{every_s!r}"
    return hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest()[:16]


@dataclass
class ResumeState:
    """How far the ingest of one video file got: the position of its last written frame."""

    path: Path
    source: str
    last_pos_ms: float | None = None
    finished: bool = False

    @classmethod
    def load(cls, folder: Path, key: str, source: str) -> ResumeState:
        """The state stored for ``key`` in the camera ``folder``, or a fresh one."""
        path = folder / f"{TEMP_PREFIX}{key}.json"
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            last = data.get("last_pos_ms")
            return cls(path, source, float(last) if last is not None else None, bool(data.get("finished")))
        except FileNotFoundError:
            return cls(path, source)
        except (OSError, ValueError, TypeError, AttributeError) as exc:
            # A frame name that exists is never rewritten, so starting over only costs time.
            logger.warning("resume state %s is unreadable (%s); starting from the beginning", path, exc)
            return cls(path, source)

    def save(self) -> None:
        """Store the state atomically."""
        data = {"source": self.source, "last_pos_ms": self.last_pos_ms, "finished": self.finished,
                "updated_at": datetime.now(UTC).isoformat(timespec="seconds")}
        write_atomic(self.path, json.dumps(data, indent=1).encode("utf-8"))
