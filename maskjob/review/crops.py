"""The review page's pictures: a face crop and its frame context, as JPEG bytes.

Frames are read only from inside the inbox (as the report does: a stored path that leaves it
is refused) and decoded once for both pictures of a face (a small LRU cache). With ``blur``
the face box is pixelated and blurred like the report's gallery, so the mask (or its absence)
stays visible and the identity does not; the context picture also blurs the frame's other
faces and softens the whole region.
"""

from __future__ import annotations

import io
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath

import numpy as np
import sqlalchemy as sa
from PIL import Image, ImageDraw, ImageFilter
from sqlalchemy.engine import Engine

from maskjob.errors import MaskjobError
from maskjob.imageio import max_file_bytes, read_file_inside, read_rgb
from maskjob.reporting.compliance import face_crop
from maskjob.storage import schema
from maskjob.vocab import CLASS_COLOURS

__all__ = ["CONTEXT_PX", "CROP_PX", "FaceFrame", "FrameReader", "context_jpeg", "crop_jpeg", "face_frame",
           "read_inbox_frame"]

CROP_PX = 320
CONTEXT_PX = 480
CONTEXT_SPAN = 5.0  # the context region is this many face sizes high (and 4/3 of that wide)
JPEG_QUALITY = 85

Box = tuple[int, int, int, int]


@dataclass(frozen=True)
class FaceFrame:
    """Where a face is: its frame (inbox-relative path), box, model label and the frame's other faces."""

    face_id: int
    image_path: str
    box: Box
    label: str
    others: tuple[Box, ...]


def face_frame(engine: Engine, face_id: int) -> FaceFrame | None:
    """The face ``face_id`` and the boxes of the other faces in its frame, or ``None``."""
    face, image = schema.Face.__table__, schema.Image.__table__
    with engine.connect() as conn:
        row = conn.execute(sa.select(face.c.image_id, face.c.x1, face.c.y1, face.c.x2, face.c.y2, face.c.label,
                                     image.c.path).join(image, image.c.id == face.c.image_id)
                           .where(face.c.id == face_id)).first()
        if row is None:
            return None
        others = conn.execute(sa.select(face.c.x1, face.c.y1, face.c.x2, face.c.y2)
                              .where(face.c.image_id == row.image_id, face.c.id != face_id)).all()
    return FaceFrame(face_id, row.path, (row.x1, row.y1, row.x2, row.y2), row.label,
                     tuple(tuple(o) for o in others))


def read_inbox_frame(inbox: Path, stored: str, max_pixels: int) -> np.ndarray:
    """The frame at ``stored`` (a path relative to ``inbox``, as the database keeps it), decoded.

    Raises:
        MaskjobError: the path leaves the inbox, or the file is missing, refused or undecodable.
    """
    posix = PurePosixPath(stored.replace("\\", "/"))
    if posix.is_absolute() or PureWindowsPath(stored).is_absolute() or ".." in posix.parts:
        raise MaskjobError("the frame's stored path is not inside the inbox; refused")
    data = read_file_inside(inbox / posix, inbox, max_file_bytes(max_pixels))
    return read_rgb(posix, max_pixels, data=data)


class FrameReader:
    """Decoded frames by stored path, the last ``capacity`` kept (thread-safe)."""

    def __init__(self, inbox: Path, max_pixels: int, capacity: int = 16) -> None:
        self.inbox = Path(inbox)
        self.max_pixels = max_pixels
        self.capacity = capacity
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()

    def rgb(self, stored_path: str) -> np.ndarray:
        """The frame's RGB array.

        Raises:
            MaskjobError: the path leaves the inbox, or the file is missing, refused or undecodable.
        """
        with self._lock:
            if stored_path in self._cache:
                self._cache.move_to_end(stored_path)
                return self._cache[stored_path]
        rgb = read_inbox_frame(self.inbox, stored_path, self.max_pixels)
        with self._lock:
            self._cache[stored_path] = rgb
            while len(self._cache) > self.capacity:
                self._cache.popitem(last=False)
        return rgb


def _jpeg(rgb: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG", quality=JPEG_QUALITY)
    return buf.getvalue()


def crop_jpeg(rgb: np.ndarray, face: FaceFrame, blur: bool) -> bytes:
    """The face with some margin and its box drawn, at most ``CROP_PX`` square (the report's crop)."""
    return _jpeg(face_crop(rgb, face.box, face.label, blur, size_px=CROP_PX, margin=0.6))


def _clip(box: Box, w: int, h: int) -> Box:
    x1, y1, x2, y2 = (int(v) for v in box)
    x1, x2 = sorted((min(max(x1, 0), w), min(max(x2, 0), w)))
    y1, y2 = sorted((min(max(y1, 0), h), min(max(y2, 0), h)))
    return x1, y1, x2, y2


def _pixelate(img: Image.Image, box: Box) -> None:
    x1, y1, x2, y2 = box
    if x2 - x1 < 2 or y2 - y1 < 2:
        return
    face = img.crop(box)
    cell = max((x2 - x1) // 8, 1)
    small = face.resize((max((x2 - x1) // cell, 1), max((y2 - y1) // cell, 1)), Image.Resampling.BILINEAR)
    img.paste(small.resize(face.size, Image.Resampling.NEAREST).filter(ImageFilter.GaussianBlur(cell / 2)), box[:2])


def context_jpeg(rgb: np.ndarray, face: FaceFrame, blur: bool) -> bytes:
    """The 4:3 frame region around the face (``CONTEXT_SPAN`` face sizes high), downscaled to at most
    ``CONTEXT_PX``, the face's box drawn; with ``blur`` every detected face in it is pixelated
    and the whole region softened (so nobody the detector missed is recognisable either)."""
    h, w = rgb.shape[:2]
    x1, y1, x2, y2 = _clip(face.box, w, h)
    side = max(x2 - x1, y2 - y1, 40) * CONTEXT_SPAN  # a 4:3 region, as a camera frame is
    half_w, half_h = side * 2 / 3, side / 2
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    rx1, ry1 = int(max(cx - half_w, 0)), int(max(cy - half_h, 0))
    rx2, ry2 = int(min(cx + half_w, w)), int(min(cy + half_h, h))
    region = Image.fromarray(rgb[ry1:ry2, rx1:rx2])

    def local(box: Box) -> Box:
        bx1, by1, bx2, by2 = _clip(box, w, h)
        return _clip((bx1 - rx1, by1 - ry1, bx2 - rx1, by2 - ry1), region.width, region.height)

    if blur:
        for box in (face.box, *face.others):
            _pixelate(region, local(box))
        # People the detector missed have no box: soften the whole region as well.
        region = region.filter(ImageFilter.GaussianBlur(max(region.size) / 120))
    fx1, fy1, fx2, fy2 = local(face.box)
    draw = ImageDraw.Draw(region)
    line_px = max(2, round(max(region.size) / 160))
    if fx2 - fx1 >= 2 and fy2 - fy1 >= 2:
        draw.rectangle([(fx1, fy1), (fx2 - 1, fy2 - 1)], outline=CLASS_COLOURS.get(face.label, (255, 255, 0)),
                       width=line_px)
    region.thumbnail((CONTEXT_PX, CONTEXT_PX), Image.Resampling.LANCZOS)
    return _jpeg(np.asarray(region))
