"""Reviewed faces as training data: crops in the dataset, with provenance.

Every face's latest live review (``not_a_face`` left out) becomes one crop, cut from its frame
in the inbox exactly as the scorer cuts faces for the classifier (a square of the detector's
``crop_scale`` times the box's longer side, reflected at the frame's edges), so a model trains
on the crops it will score. Files land in the dataset as::

    <dataset>/<split>/<label>/site-<review id>-<camera slug>-<local day>.jpg

``split`` is ``test_site`` (:data:`maskjob.vocab.SITE_TEST_SPLIT`) or ``train``, chosen from a
hash of the face's (camera, local day): every face of one camera on one day sits on the same
side, so the same person on the same day is never in train and in the site test split at once.
About ``site_test_fraction`` of the (camera, day) groups go to ``test_site``.

``<dataset>/site_provenance.jsonl`` lists every exported file with its review (id, reviewer,
label, the model's label), camera, local day, frame path, box and review time.

An export mirrors the reviews: a second run writes nothing; a face reviewed again (a new
review id) moves to its new file, an undone review's file is removed. Only files named
``site-<id>-*.jpg`` in those folders are ever touched. A frame that is missing or unreadable
is listed in the result with its reason and the export carries on.

Example:
    >>> result = export_corrections(engine, settings)    # doctest: +SKIP
    >>> result.counts["test_site"]["without_mask"]         # doctest: +SKIP
    7
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import tempfile
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path, PurePosixPath
from typing import Any, Sequence

import cv2
import numpy as np
from PIL import Image
from sqlalchemy.engine import Engine

from maskjob.config import Settings
from maskjob.errors import MaskjobError
from maskjob.review.crops import read_inbox_frame
from maskjob.storage.reviews import ReviewRecord, reviews_for_export
from maskjob.vocab import CLASSES, SITE_TEST_SPLIT, slug

__all__ = [
    "EXPORT_SPLITS", "PROVENANCE_FILE", "ExportResult", "crop_scale", "export_corrections", "export_path",
    "site_split",
]

logger = logging.getLogger(__name__)

EXPORT_SPLITS: tuple[str, ...] = ("train", SITE_TEST_SPLIT)
PROVENANCE_FILE = "site_provenance.jsonl"
JPEG_QUALITY = 95
CAMERA_SLUG_CHARS = 40
_EXPORTED = re.compile(r"site-[0-9]+-.*\.jpg")


@dataclass(frozen=True)
class ExportResult:
    """What :func:`export_corrections` did.

    ``counts`` are the exported files now in the dataset per split and label; ``bad`` lists
    the reviews whose crop could not be made (``review_id``, ``image_path``, ``reason``).
    """

    dataset_root: Path
    counts: dict[str, dict[str, int]]
    written: int = 0
    removed: int = 0
    unchanged: int = 0
    bad: list[dict[str, Any]] = field(default_factory=list)

    @property
    def total(self) -> int:
        return sum(sum(per.values()) for per in self.counts.values())

    def to_dict(self) -> dict[str, Any]:
        return {"dataset_root": str(self.dataset_root), "counts": self.counts, "total": self.total,
                "written": self.written, "removed": self.removed, "unchanged": self.unchanged, "bad": self.bad}

    def format_text(self) -> str:
        """The counts table and the bad items, for the command line."""
        width = max(len(c) for c in CLASSES) + 2
        lines = [f"reviewed faces in {self.dataset_root}",
                 f"{'class':<{width}}" + "".join(f"{s:>11}" for s in EXPORT_SPLITS)]
        lines += [f"{name:<{width}}" + "".join(f"{self.counts[s][name]:>11}" for s in EXPORT_SPLITS) for name in CLASSES]
        lines.append(f"written {self.written}, removed {self.removed}, unchanged {self.unchanged}, "
                     f"not exported {len(self.bad)}")
        lines += [f"  review {b['review_id']} ({b['image_path']}): {b['reason']}" for b in self.bad]
        return "\n".join(lines)


def site_split(camera_id: str, local_day: date | str, fraction: float) -> str:
    """``test_site`` or ``train`` for a (camera, local day) group: the same answer on every run.

    The group's sha256 read as a number in [0, 1) is compared with ``fraction``, so about that
    share of the groups are held out, independently of how many faces each has.
    """
    day = local_day.isoformat() if isinstance(local_day, date) else local_day
    digest = hashlib.sha256(f"{camera_id}\n{day}".encode("utf-8", "surrogateescape")).digest()
    return SITE_TEST_SPLIT if int.from_bytes(digest[:8], "big") / 2.0 ** 64 < fraction else "train"


def _day(record: ReviewRecord) -> str:
    """The face's local day (ISO); its UTC capture day for a frame stored without one."""
    return (record.local_day or record.captured_at.date()).isoformat()


def export_path(record: ReviewRecord, fraction: float) -> PurePosixPath:
    """``<split>/<label>/site-<review id>-<camera slug>-<day>.jpg`` for a review record.

    Only the review id (an int), a slug of the camera (``[A-Za-z0-9_.-]``, no separator), the
    ISO day and a class name make up the path, so no stored string can leave the dataset.
    """
    day = _day(record)
    split = site_split(record.camera_id, day, fraction)
    camera = slug(str(record.camera_id), CAMERA_SLUG_CHARS, "camera")
    return PurePosixPath(split, record.label, f"site-{int(record.review_id)}-{camera}-{slug(day, 10, 'day')}.jpg")


def crop_scale(detector: str) -> float:
    """The crop scale of the scorer's detector ``detector`` (its crops are the classifier's input)."""
    from maskjob.scoring.detectors import CROP_SCALE, CROP_SCALES

    return CROP_SCALES.get(detector, CROP_SCALE)


def _box(record: ReviewRecord) -> tuple[int, int, int, int]:
    return int(record.x1), int(record.y1), int(record.x2), int(record.y2)


def _crop(rgb: np.ndarray, box: Sequence[int], scale: float) -> np.ndarray:
    from maskjob.scoring.faces import crop_face

    x1, y1, x2, y2 = (int(v) for v in box)
    height, width = rgb.shape[:2]
    if x2 <= x1 or y2 <= y1 or x2 <= 0 or y2 <= 0 or x1 >= width or y1 >= height:
        raise MaskjobError(f"the face box {(x1, y1, x2, y2)} is not inside the {width}x{height} frame")
    try:
        return crop_face(rgb, (x1, y1, x2, y2), scale)
    except cv2.error:
        raise MaskjobError(f"the face box {(x1, y1, x2, y2)} cannot be cropped from the {width}x{height} frame") from None


def _write_jpeg(path: Path, rgb: np.ndarray) -> None:
    """Write atomically (a hidden temporary file, then a rename): a crash never leaves half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".site-", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as fh:
            Image.fromarray(np.ascontiguousarray(rgb)).save(fh, format="JPEG", quality=JPEG_QUALITY)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _exported_files(root: Path) -> set[PurePosixPath]:
    """The files an export owns: ``site-<id>-*.jpg`` in the train and test_site class folders."""
    found = set()
    for split in EXPORT_SPLITS:
        for label in CLASSES:
            folder = root / split / label
            if not folder.is_dir():
                continue
            with os.scandir(folder) as entries:
                found |= {PurePosixPath(split, label, e.name) for e in entries
                          if _EXPORTED.fullmatch(e.name) and not e.is_dir(follow_symlinks=False)}
    return found


def _provenance(rel: PurePosixPath, record: ReviewRecord) -> dict[str, Any]:
    split, label = rel.parts[0], rel.parts[1]
    return {
        "file": rel.as_posix(), "split": split, "label": label, "model_label": record.model_label,
        "review_id": int(record.review_id), "reviewer": record.reviewer, "camera_id": record.camera_id,
        "local_day": _day(record), "image_path": record.image_path, "box": list(_box(record)),
        "reviewed_at": record.reviewed_at.isoformat(),
    }


def _write_provenance(root: Path, rows: list[dict[str, Any]]) -> None:
    path = root / PROVENANCE_FILE
    text = "".join(json.dumps(row, ensure_ascii=True) + "\n" for row in rows)
    try:
        if path.read_text(encoding="utf-8") == text:
            return
    except FileNotFoundError:
        if not rows:
            return
    fd, tmp = tempfile.mkstemp(dir=root, prefix=".site_provenance-", suffix=".part")
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)
    os.replace(tmp, path)


def export_corrections(engine: Engine, settings: Settings, *, dataset_root: str | Path | None = None) -> ExportResult:
    """Bring the dataset's reviewed-face crops and their provenance in line with the reviews.

    Args:
        engine: a migrated database (reviews are read with
            :func:`maskjob.storage.reviews.reviews_for_export`).
        settings: ``inbox_dir`` (the frames), ``dataset_root``, ``site_test_fraction``,
            ``detector`` (its crop scale), ``max_image_pixels``.
        dataset_root: the dataset to write into (default ``settings.dataset_root``).

    Returns:
        The counts per split and label, what was written and removed, and the reviews whose
        frame could not be read or cropped.

    Raises:
        MaskjobError: the dataset folder cannot be written.
    """
    root = Path(dataset_root or settings.dataset_root).expanduser().resolve()
    inbox = Path(settings.inbox_dir).expanduser().resolve()
    wanted = {export_path(r, settings.site_test_fraction): r for r in reviews_for_export(engine) if r.label in CLASSES}
    present = _exported_files(root)
    scale = crop_scale(settings.detector)
    removed = written = 0
    bad: list[dict[str, Any]] = []
    try:
        for rel in sorted(present - wanted.keys()):
            (root / rel).unlink(missing_ok=True)
            removed += 1
        for rel, record in sorted(wanted.items()):
            if rel in present:
                continue
            try:
                crop = _crop(read_inbox_frame(inbox, record.image_path, settings.max_image_pixels), _box(record), scale)
            except MaskjobError as exc:
                reason = getattr(exc, "reason", None) or str(exc)
                bad.append({"review_id": int(record.review_id), "image_path": record.image_path, "reason": reason})
                continue
            _write_jpeg(root / rel, crop)
            written += 1
        done = sorted(rel for rel in wanted if (root / rel).is_file())
        if root.is_dir():
            _write_provenance(root, [_provenance(rel, wanted[rel]) for rel in done])
    except OSError as exc:
        raise MaskjobError(f"cannot write reviewed-face crops into the dataset {root} "
                           f"({exc.strerror or exc}); make it writable by the user maskjob runs as") from None
    counts = {split: {label: 0 for label in CLASSES} for split in EXPORT_SPLITS}
    for rel in done:
        counts[rel.parts[0]][rel.parts[1]] += 1
    result = ExportResult(root, counts, written, removed, len(done) - written, bad)
    logger.info("exported reviewed faces into %s: %d files (%d written, %d removed), %d not exported",
                root, result.total, written, removed, len(bad))
    for item in bad:
        logger.warning("review %s not exported (%s): %s", item["review_id"], item["image_path"], item["reason"])
    return result
