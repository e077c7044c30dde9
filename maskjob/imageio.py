"""Reading images safely: every way a file can be bad becomes one :class:`MaskjobError`
(an :class:`ImageReadError` whose ``reason`` says why), so batch jobs can record the reason
and carry on.

The file system is treated as hostile: only regular files are ever opened (a FIFO, socket or
device named like an image is refused by ``stat`` before any ``open``, and files are opened
with ``O_NONBLOCK`` so a file swapped for a FIFO in between cannot block either), symlink
loops and dangling links become reasons, and whatever the decoder raises on a malformed
file is that file's failure. Paths in messages are valid text even when a file name is not
valid UTF-8 (:func:`display_path`).

Example:
    >>> rgb = read_rgb("face.jpg")          # doctest: +SKIP
    >>> rgb.shape, rgb.dtype
    ((480, 640, 3), dtype('uint8'))
"""

from __future__ import annotations

import errno
import hashlib
import io
import os
import stat
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from maskjob.errors import MaskjobError
from maskjob.vocab import DEFAULT_MAX_IMAGE_PIXELS, IMAGE_EXTENSIONS

__all__ = [
    "IMAGE_EXTENSIONS", "ImageReadError", "display_path", "file_kind", "is_image_name", "is_within", "max_file_bytes",
    "open_regular", "output_dir", "read_file", "read_file_inside", "read_rgb", "sha256_bytes", "sha256_file",
    "write_text",
]

# Pillow formats never opened: EPS is rendered by running Ghostscript on the file.
REFUSED_FORMATS = frozenset({"EPS"})
# Longest decoder message kept in a reason.
_MAX_DETAIL_CHARS = 300

_OPEN_FLAGS = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NOCTTY", 0)


class ImageReadError(MaskjobError):
    """A file that could not be read or decoded. ``str()`` is ``"<path>: <reason>"``.

    Attributes:
        path: the path as given (may hold undecodable bytes as surrogates).
        reason: why, without the path: what rows and reports store.
        missing: the file (or a folder above it) does not exist.
    """

    def __init__(self, path: str | Path, reason: str, *, missing: bool = False) -> None:
        self.path = path
        self.reason = reason
        self.missing = missing
        super().__init__(f"{display_path(path)}: {reason}")

    def __reduce__(self):  # picklable (worker processes) despite the keyword-only field
        return type(self), (self.path, self.reason), {"missing": self.missing}


def display_path(path: str | Path | bytes) -> str:
    """``path`` as valid text: a name that is not valid UTF-8 shows its bad bytes as ``\\xNN``.

    Valid names are returned unchanged; the escaped form can be stored in any database
    (PostgreSQL refuses the lone surrogates Python uses for such bytes) and printed.
    """
    if isinstance(path, bytes):
        raw = path
    else:
        text = os.fspath(path)
        try:
            raw = os.fsencode(text)
        except UnicodeEncodeError:  # surrogates that are not escaped bytes
            return text.encode("utf-8", "backslashreplace").decode("utf-8")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("utf-8", "backslashreplace")


def _safe_text(text: str, limit: int = _MAX_DETAIL_CHARS) -> str:
    text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text if len(text) <= limit else text[: limit - 3] + "..."


def is_image_name(path: str | Path) -> bool:
    """True when the file name has an image extension (any case)."""
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS


def max_file_bytes(max_pixels: int) -> int:
    """The largest file read for an image of at most ``max_pixels`` pixels: 16 bytes a pixel
    (uncompressed float RGBA) plus 16 MiB of metadata. Larger files are refused unread."""
    return max(int(max_pixels), 1 << 20) * 16 + (16 << 20)


def file_kind(mode: int) -> str:
    """What a ``stat`` mode is, in words (``"a named pipe (FIFO)"``, ...)."""
    for test, kind in ((stat.S_ISREG, "a regular file"), (stat.S_ISDIR, "a directory"),
                       (stat.S_ISFIFO, "a named pipe (FIFO)"), (stat.S_ISSOCK, "a socket"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISLNK, "a symbolic link")):
        if test(mode):
            return kind
    return "not a regular file"


def os_error_reason(exc: OSError, path: str | Path) -> tuple[str, bool]:
    """A reason for an ``OSError`` on ``path`` (no path in it), and whether the file is missing."""
    code = exc.errno
    if code in (errno.ENOENT, errno.ENOTDIR):
        try:
            if stat.S_ISLNK(os.lstat(path).st_mode):
                return "dangling symlink: its target does not exist", False
        except OSError:
            pass
        return "file not found (it may have been moved or deleted)", True
    if code in (errno.EACCES, errno.EPERM):
        return "permission denied; make the file readable by the user maskjob runs as", False
    if code == errno.ELOOP:
        return "symlink loop (too many levels of symbolic links); fix or remove the link", False
    if code == errno.EISDIR:
        return "is a directory, not an image", False
    if code == errno.ENAMETOOLONG:
        return "path too long for the file system", False
    return f"cannot read file ({_safe_text(exc.strerror or str(exc))})", False


def open_regular(path: str | Path, *, follow_symlinks: bool = True) -> BinaryIO:
    """Open a regular file for reading, never blocking and never opening anything else.

    ``stat`` (``lstat`` unless ``follow_symlinks``) must say regular file before the open,
    the open uses ``O_NONBLOCK`` (and ``O_NOFOLLOW`` unless ``follow_symlinks``), and
    ``fstat`` must say regular file again after it (the path may have been swapped).

    Raises:
        ImageReadError: missing, dangling or looping link, permission, not a regular file.
    """
    try:
        before = os.stat(path, follow_symlinks=follow_symlinks)
    except OSError as exc:
        reason, missing = os_error_reason(exc, path)
        raise ImageReadError(path, reason, missing=missing) from None
    if not stat.S_ISREG(before.st_mode):
        if stat.S_ISDIR(before.st_mode):
            raise ImageReadError(path, "is a directory, not an image")
        if stat.S_ISLNK(before.st_mode):  # only without follow_symlinks
            raise ImageReadError(path, "is a symbolic link; refused (links are resolved before reading)")
        raise ImageReadError(path, f"{file_kind(before.st_mode)}, not a regular file; refused unread")
    flags = _OPEN_FLAGS | (0 if follow_symlinks else getattr(os, "O_NOFOLLOW", 0))
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        reason, missing = os_error_reason(exc, path)
        raise ImageReadError(path, reason, missing=missing) from None
    try:
        after = os.fstat(fd)
        if not stat.S_ISREG(after.st_mode):
            raise ImageReadError(path, f"{file_kind(after.st_mode)}, not a regular file; refused unread")
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_file(path: str | Path, max_bytes: int | None = None, *, follow_symlinks: bool = True) -> bytes:
    """The bytes of a regular file (see :func:`open_regular`), at most ``max_bytes`` of them.

    Raises:
        ImageReadError: as :func:`open_regular`, a read error, or a file over ``max_bytes``.
    """
    with open_regular(path, follow_symlinks=follow_symlinks) as fh:
        size = os.fstat(fh.fileno()).st_size
        if max_bytes is not None and size > max_bytes:
            raise ImageReadError(path, f"file is {size} bytes, more than the {max_bytes} an image within "
                                       "max_image_pixels can need; refused unread")
        try:
            data = fh.read() if max_bytes is None else fh.read(max_bytes + 1)
        except OSError as exc:
            reason, missing = os_error_reason(exc, path)
            raise ImageReadError(path, reason, missing=missing) from None
    if max_bytes is not None and len(data) > max_bytes:
        raise ImageReadError(path, f"file grew past {max_bytes} bytes while being read; refused")
    return data


def is_within(path: str, root: str) -> bool:
    """True when the resolved ``path`` is ``root`` or lies below it (both already resolved)."""
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def read_file_inside(path: str | Path, root: str | Path, max_bytes: int | None = None) -> bytes:
    """:func:`read_file` of ``path`` only when it resolves (symlinks followed) inside ``root``.

    A link that leaves ``root`` is refused without touching its target; the resolved path is
    then opened with ``O_NOFOLLOW`` so it cannot be swapped for a link in between.

    Raises:
        ImageReadError: outside ``root``, or as :func:`read_file`.
    """
    real = os.path.realpath(path)
    if not is_within(real, os.path.realpath(root)):
        raise ImageReadError(path, f"symlink points outside the inbox (to {display_path(real)}); refused for safety")
    try:
        os.stat(path)  # a loop or a dangling link gets its own reason
    except OSError as exc:
        reason, missing = os_error_reason(exc, path)
        raise ImageReadError(path, reason, missing=missing) from None
    try:
        return read_file(real, max_bytes, follow_symlinks=False)
    except ImageReadError as exc:
        raise ImageReadError(path, exc.reason, missing=exc.missing) from None


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | Path, chunk_bytes: int = 1 << 20) -> str:
    """sha256 of a regular file's content.

    Raises:
        OSError: the file cannot be read or is not a regular file (never blocks on a FIFO).
    """
    try:
        fh = open_regular(path)
    except ImageReadError as exc:
        raise OSError(errno.ENOENT if exc.missing else errno.EINVAL, exc.reason, display_path(path)) from None
    digest = hashlib.sha256()
    with fh:
        while chunk := fh.read(chunk_bytes):
            digest.update(chunk)
    return digest.hexdigest()


def _to_uint8_rgb(img: Image.Image) -> np.ndarray:
    if img.mode in {"I;16", "I;16B", "I;16L", "I;16N", "I"}:
        arr = np.asarray(img.convert("I") if img.mode == "I;16N" else img, dtype=np.float64)
        peak = 65535.0 if arr.max(initial=0) > 255 else 255.0
        arr = np.clip(arr / peak * 255.0, 0, 255).astype(np.uint8)
        return np.repeat(arr[:, :, None], 3, axis=2)
    if img.mode == "F":
        arr = np.nan_to_num(np.asarray(img, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)
        lo, hi = float(arr.min(initial=0)), float(arr.max(initial=1))
        arr = ((arr - lo) / max(hi - lo, 1e-9) * 255.0).astype(np.uint8)
        return np.repeat(arr[:, :, None], 3, axis=2)
    if img.mode in {"RGBA", "LA", "PA", "RGBa", "La"} or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return np.asarray(Image.alpha_composite(background, rgba).convert("RGB"))
    return np.asarray(img.convert("RGB"))


def _decode(path: str | Path, data: bytes, max_pixels: int) -> np.ndarray:
    Image.init()
    formats = [f for f in Image.OPEN if f not in REFUSED_FORMATS]
    with Image.open(io.BytesIO(data), formats=formats) as img:
        width, height = img.size
        if width * height > max_pixels:
            raise ImageReadError(
                path, f"{width}x{height} = {width * height} pixels exceeds the limit of {max_pixels} "
                      "(possible decompression bomb); raise max_image_pixels to accept it"
            )
        if width < 1 or height < 1:
            raise ImageReadError(path, f"image has no pixels ({width}x{height})")
        img.load()
        rgb = _to_uint8_rgb(ImageOps.exif_transpose(img))
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.shape[0] < 1 or rgb.shape[1] < 1:
        raise ImageReadError(path, f"decoded to an unusable array ({rgb.dtype}, shape {rgb.shape})")
    return np.ascontiguousarray(rgb)


def read_rgb(path: str | Path, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS, data: bytes | None = None) -> np.ndarray:
    """Decode an image file to an ``(H, W, 3)`` uint8 RGB array, upright per EXIF.

    Handles grey, palette, CMYK, alpha (composited on white) and 16-bit images. This is the
    one place images are decoded: whatever the decoder raises on a malformed file becomes an
    :class:`ImageReadError`, so no caller ever sees another exception from a bad file.

    Args:
        path: the file (used for the error message when ``data`` is given). Only a regular
            file is opened (symlinks are followed), never a FIFO, socket or device.
        max_pixels: refuse images with more pixels than this (decompression bombs).
        data: the file's bytes, if already read (avoids a second read).

    Raises:
        ImageReadError: missing, unreadable, not a regular file, empty, truncated, not an
            image, too large, or the decoder failed.
    """
    if data is None:
        data = read_file(path, max_file_bytes(max_pixels))
    if not data:
        raise ImageReadError(path, "empty file (0 bytes)")
    try:
        return _decode(path, data, max_pixels)
    except ImageReadError:
        raise
    except UnidentifiedImageError:
        raise ImageReadError(path, "not a recognised image format (is it really an image?)") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageReadError(
            path, "image is too large (possible decompression bomb); raise max_image_pixels to accept it"
        ) from None
    except MemoryError:
        raise ImageReadError(path, "not enough memory to decode this image (corrupt dimensions?)") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ImageReadError(path, f"corrupt or truncated image ({_safe_text(str(exc))})") from None
    except Exception as exc:  # noqa: BLE001 - a hostile file must fail alone, whatever the decoder raises
        detail = _safe_text(f"{type(exc).__name__}: {exc}")
        raise ImageReadError(path, f"corrupt image: the decoder failed ({detail})") from None


def output_dir(path: str | Path, what: str) -> Path:
    """``path`` as a folder maskjob can write into, created if missing.

    Raises:
        MaskjobError: it is a file, cannot be created, or is not writable (``what`` names it,
            e.g. ``"--out folder"``).
    """
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise MaskjobError(f"{what} {display_path(out)} is not a folder; pass a folder to write into")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise MaskjobError(f"cannot create {what} {display_path(out)}: {exc.strerror or exc}; "
                           "pass a folder you can write to") from None
    if not os.access(out, os.W_OK | os.X_OK):
        raise MaskjobError(f"cannot write into {what} {display_path(out)}: permission denied; "
                           "pass a folder you can write to")
    return out


def write_text(path: Path, text: str, what: str) -> Path:
    """Write ``text`` (UTF-8) to ``path``; a failure (disk full, permissions) is a MaskjobError."""
    try:
        path.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise MaskjobError(f"cannot write {what} {display_path(path)}: {exc.strerror or exc}; "
                           "free some space or choose another folder") from None
    return path
