"""Reading images safely: every way a file can be bad becomes one :class:`MaskjobError`
whose message says why, so batch jobs can record the reason and carry on.

Example:
    >>> rgb = read_rgb("face.jpg")          # doctest: +SKIP
    >>> rgb.shape, rgb.dtype
    ((480, 640, 3), dtype('uint8'))
"""

from __future__ import annotations

import hashlib
import io
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from maskjob.errors import MaskjobError
from maskjob.vocab import DEFAULT_MAX_IMAGE_PIXELS, IMAGE_EXTENSIONS

__all__ = ["IMAGE_EXTENSIONS", "is_image_name", "read_rgb", "sha256_bytes", "sha256_file"]



def is_image_name(path: str | Path) -> bool:
    """True when the file name has an image extension (any case)."""
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | Path, chunk_bytes: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(chunk_bytes):
            digest.update(chunk)
    return digest.hexdigest()


def _to_uint8_rgb(img: Image.Image) -> np.ndarray:
    if img.mode in {"I;16", "I;16B", "I;16L", "I"}:
        arr = np.asarray(img, dtype=np.float64)
        peak = 65535.0 if arr.max(initial=0) > 255 else 255.0
        arr = np.clip(arr / peak * 255.0, 0, 255).astype(np.uint8)
        return np.repeat(arr[:, :, None], 3, axis=2)
    if img.mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        lo, hi = float(arr.min(initial=0)), float(arr.max(initial=1))
        arr = ((arr - lo) / max(hi - lo, 1e-9) * 255.0).astype(np.uint8)
        return np.repeat(arr[:, :, None], 3, axis=2)
    if img.mode in {"RGBA", "LA", "PA"} or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return np.asarray(Image.alpha_composite(background, rgba).convert("RGB"))
    return np.asarray(img.convert("RGB"))


def read_rgb(path: str | Path, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS, data: bytes | None = None) -> np.ndarray:
    """Decode an image file to an ``(H, W, 3)`` uint8 RGB array, upright per EXIF.

    Handles grey, palette, CMYK, alpha (composited on white) and 16-bit images.

    Args:
        path: the file (used for the error message when ``data`` is given).
        max_pixels: refuse images with more pixels than this (decompression bombs).
        data: the file's bytes, if already read (avoids a second read).

    Raises:
        MaskjobError: missing, unreadable, empty, truncated, not an image, or too large.
    """
    path = Path(path)
    if data is None:
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise MaskjobError(f"{path}: file not found (it may have been moved or deleted)") from None
        except IsADirectoryError:
            raise MaskjobError(f"{path}: is a directory, not an image") from None
        except PermissionError:
            raise MaskjobError(f"{path}: permission denied; make the file readable by this user") from None
        except OSError as exc:
            raise MaskjobError(f"{path}: cannot read file ({exc.strerror or exc})") from None
    if not data:
        raise MaskjobError(f"{path}: empty file (0 bytes)")

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            width, height = img.size
            if width * height > max_pixels:
                raise MaskjobError(
                    f"{path}: {width}x{height} = {width * height} pixels exceeds the limit of "
                    f"{max_pixels} (possible decompression bomb); raise max_image_pixels to accept it"
                )
            if width < 1 or height < 1:
                raise MaskjobError(f"{path}: image has no pixels ({width}x{height})")
            img.load()
            img = ImageOps.exif_transpose(img)
            return _to_uint8_rgb(img)
    except MaskjobError:
        raise
    except UnidentifiedImageError:
        raise MaskjobError(f"{path}: not a recognised image format (is it really an image?)") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise MaskjobError(
            f"{path}: image is too large (possible decompression bomb); raise max_image_pixels to accept it"
        ) from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise MaskjobError(f"{path}: corrupt or truncated image ({exc})") from None
