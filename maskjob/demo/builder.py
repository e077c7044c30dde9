"""The offline demo: a labelled face-mask dataset and a CCTV inbox built from real photos.

Faces are real photographs shipped in packages (see :mod:`maskjob.assets`), composited with
synthesized masks by :mod:`maskjob.facesynth`. This module decides what goes where: train,
test and test_unseen (:data:`maskjob.vocab.HELDOUT_SPLIT`) hold disjoint identities;
test_unseen's masks come from styles reserved for it (shapes, fabrics, colours, where a
partial mask sits: :data:`~maskjob.demo.facesynth.UNSEEN_STYLE`), so its metrics measure
generalisation. ``demo_manifest.csv`` records every image's split, identity and style. The
inbox shows only test identities pasted into frames of a real video, and every file is
seeded so the same seed gives byte-identical output.

Example:
    >>> summary = build_demo(settings, scale=0.1)           # doctest: +SKIP
    >>> summary.counts["train"]["with_mask"]                # doctest: +SKIP
    50
"""

from __future__ import annotations

import csv
import datetime as dt
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from maskjob import CLASSES
from maskjob.assets import asset_path
from maskjob.config import Settings
from maskjob.demo.facesynth import (
    FABRICS,
    SEEN_STYLE,
    UNSEEN_STYLE,
    Face,
    MaskStyle,
    load_faces,
    paste_face,
    photometric,
    render_face,
)
from maskjob.errors import MaskjobError
from maskjob.imageio import read_rgb
from maskjob.vocab import HELDOUT_SPLIT

__all__ = [
    "CAMERAS", "DEMO_DAY", "FRAMES", "MANIFEST", "MANIFEST_FIELDS", "TEST_PER_CLASS", "TRAIN_PER_CLASS", "DemoSummary",
    "build_demo",
]

logger = logging.getLogger(__name__)

DEMO_DAY = dt.date(2026, 11, 24)
CAMERAS = ("cam-entrance", "cam-lobby", "cam-ward-2")
TRAIN_PER_CLASS, TEST_PER_CLASS, FRAMES = 500, 150, 120
CROP_PX = 128
DEMO_MARKER = ".maskjob-demo"
FRAME_SIZE = (640, 480)
PHOTO_WEIGHT = 3  # colour photos are few but rich: sample each identity 3x as often as an LFW crop
MANIFEST = "demo_manifest.csv"
MANIFEST_FIELDS = ("file", "split", "label", "identity", "shape", "texture", "colour", "partial_band")
# Each split: images per class at scale 1, and the mask styles it draws. test_unseen is as big as test.
DEMO_SPLITS: tuple[tuple[str, int, MaskStyle], ...] = (
    ("train", TRAIN_PER_CLASS, SEEN_STYLE), ("test", TEST_PER_CLASS, SEEN_STYLE),
    (HELDOUT_SPLIT, TEST_PER_CLASS, UNSEEN_STYLE),
)
# Identities per source group held out for test and for test_unseen; the rest train.
HELD_OUT_SHARE = {"test": 0.25, HELDOUT_SPLIT: 0.2}


@dataclass
class DemoSummary:
    """What :func:`build_demo` wrote."""

    root: Path
    inbox: Path
    counts: dict[str, dict[str, int]]
    n_identities: dict[str, int]
    n_frames: int
    n_faces: int
    seconds: float


def _split_identities(faces: list[Face], rng: np.random.Generator) -> dict[str, list[Face]]:
    """Three disjoint identity groups; each gets LFW crops and colour photos."""
    split: dict[str, list[Face]] = {name: [] for name, _, _ in DEMO_SPLITS}
    for group in ("lfw", "photo"):
        members = [f for f in faces if f.group == group]
        order = list(rng.permutation(len(members)))
        for name, share in HELD_OUT_SHARE.items():
            n = max(1, int(np.ceil(share * len(members))))
            split[name] += [members[i] for i in order[:n]]
            order = order[n:]
        split["train"] += [members[i] for i in order]
    return split


def _write_jpeg(path: Path, rgb: np.ndarray, quality: int) -> None:
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
    assert ok
    path.write_bytes(buf.tobytes())


def _identity_cycle(faces: list[Face], rng: np.random.Generator) -> list[Face]:
    pool = [f for f in faces for _ in range(PHOTO_WEIGHT if f.group == "photo" else 1)]
    return [pool[i] for i in rng.permutation(len(pool))]


def _write_dataset(root: Path, split: dict[str, list[Face]], textures: dict[str, np.ndarray],
                   scale: float, seed: int) -> dict[str, dict[str, int]]:
    counts: dict[str, dict[str, int]] = {}
    rows: list[tuple[str, ...]] = []
    for s_idx, (name, per_class, style) in enumerate(DEMO_SPLITS):
        n = max(2, round(per_class * scale))
        cycle = _identity_cycle(split[name], np.random.default_rng([seed, s_idx]))
        counts[name] = {}
        for c_idx, label in enumerate(CLASSES):
            out_dir = root / name / label
            out_dir.mkdir(parents=True)
            for i in range(n):
                rng = np.random.default_rng([seed, s_idx, c_idx, i])
                face = cycle[(i * len(CLASSES) + c_idx) % len(cycle)]
                img, _, drawn = render_face(face, label, rng, textures, CROP_PX, rng.uniform(0.62, 0.82), style)
                path = out_dir / f"{i:05d}_{face.identity}.jpg"
                _write_jpeg(path, photometric(img, rng), int(rng.integers(45, 96)))
                rows.append((path.relative_to(root).as_posix(), name, label, face.identity,
                             drawn.shape, drawn.texture, drawn.colour, drawn.band))
            counts[name][label] = n
    with (root / MANIFEST).open("w", newline="") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(MANIFEST_FIELDS)
        writer.writerows(rows)
    return counts


def _read_video(path: Path, n_frames: int, rng: np.random.Generator) -> list[np.ndarray]:
    """``n_frames`` frames at seeded positions, in clip order, resized to the frame size."""
    cap = cv2.VideoCapture(str(path))
    total = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
    if total < 1:
        raise MaskjobError(f"could not decode {path}; delete it and run `maskjob assets fetch`.")
    wanted = set(int(i) for i in rng.choice(total, size=min(n_frames, total), replace=False))
    frames: dict[int, np.ndarray] = {}
    index = 0
    while len(frames) < len(wanted) and cap.grab():
        if index in wanted:
            ok, bgr = cap.retrieve()
            if ok:
                frames[index] = cv2.cvtColor(cv2.resize(bgr, FRAME_SIZE, interpolation=cv2.INTER_AREA),
                                             cv2.COLOR_BGR2RGB)
        index += 1
    cap.release()
    if len(frames) < len(wanted):
        raise MaskjobError(f"could not decode {path}; delete it and run `maskjob assets fetch`.")
    return [frames[i] for i in sorted(frames)]


def _camera_view(rgb: np.ndarray, camera: str) -> np.ndarray:
    """Make one clip look like three cameras: mirrored and warm, or zoomed and cool."""
    if camera == "cam-lobby":
        return np.clip(rgb[:, ::-1] * np.array([1.08, 1.0, 0.88]), 0, 255).astype(np.uint8)
    if camera == "cam-ward-2":
        w, h = FRAME_SIZE
        crop = rgb[h // 10: h - h // 20, w // 10: w - w // 10]
        zoomed = cv2.resize(crop, FRAME_SIZE, interpolation=cv2.INTER_LINEAR).astype(np.float32)
        grey = zoomed.mean(axis=2, keepdims=True)
        return np.clip((0.5 * zoomed + 0.5 * grey) * np.array([0.92, 1.0, 1.1]), 0, 255).astype(np.uint8)
    return rgb.copy()


def _write_inbox(inbox: Path, video: Path, faces: list[Face], textures: dict[str, np.ndarray],
                 scale: float, seed: int) -> tuple[int, int]:
    rng = np.random.default_rng([seed, 99])
    n_frames = max(len(CAMERAS), round(FRAMES * scale))
    video_frames = _read_video(video, n_frames, rng)
    rows: list[tuple[str, int, int, int, int, str]] = []
    per_camera = [video_frames[c::len(CAMERAS)] for c in range(len(CAMERAS))]
    start = dt.datetime.combine(DEMO_DAY, dt.time(7, 0))
    w, h = FRAME_SIZE
    cycle = _identity_cycle(faces, rng)
    face_no = 0
    for c_idx, (camera, clips) in enumerate(zip(CAMERAS, per_camera)):
        (inbox / camera).mkdir(parents=True)
        seconds = np.sort(rng.choice(12 * 3600, size=len(clips), replace=False))
        for f_idx, (clip, second) in enumerate(zip(clips, seconds)):
            frng = np.random.default_rng([seed, 100, c_idx, f_idx])
            canvas = _camera_view(clip, camera).astype(np.float32)
            name = f"{camera}/{(start + dt.timedelta(seconds=int(second))):%Y%m%dT%H%M%S}.jpg"
            taken: list[np.ndarray] = []
            for _ in range(int(frng.choice(5, p=[0.15, 0.3, 0.25, 0.18, 0.12]))):
                box_px = int(frng.integers(40, 121))
                patch_px = int(round(box_px * 1.7))
                for _try in range(30):
                    x0 = int(frng.integers(0, w - patch_px))
                    y0 = int(frng.integers(0, h - patch_px))
                    if all(x0 + patch_px <= a[0] or a[2] <= x0 or y0 + patch_px <= a[1] or a[3] <= y0
                           for a in taken):
                        break
                else:
                    continue
                label = CLASSES[int(frng.integers(len(CLASSES)))]
                face = cycle[face_no % len(cycle)]
                face_no += 1
                box = paste_face(canvas, face, label, frng, textures, x0, y0, patch_px, box_px)
                taken.append(np.array([x0, y0, x0 + patch_px, y0 + patch_px]))
                x1, y1 = np.clip(np.round(box[:2]), 0, [w - 1, h - 1]).astype(int)
                x2, y2 = np.clip(np.round(box[2:]), 0, [w - 1, h - 1]).astype(int)
                rows.append((name, int(x1), int(y1), int(x2), int(y2), label))
            _write_jpeg(inbox / name, np.clip(canvas, 0, 255).round().astype(np.uint8), 85)
    with (inbox / "ground_truth.csv").open("w", newline="") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(["image", "x1", "y1", "x2", "y2", "label"])
        writer.writerows(rows)
    return len(video_frames), len(rows)


def _prepare(directory: Path, owned: list[str]) -> None:
    """Clear a previous (possibly interrupted) demo build; refuse other non-empty directories."""
    marker = directory / DEMO_MARKER
    if directory.exists() and any(directory.iterdir()):
        if not marker.is_file():
            raise MaskjobError(
                f"{directory} is not empty and was not written by `maskjob demo-data` (no {DEMO_MARKER}); "
                f"pass an empty or new directory."
            )
        for name in owned:
            target = directory / name
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()
    directory.mkdir(parents=True, exist_ok=True)
    marker.write_text("written by maskjob demo-data; rebuilding replaces this directory's demo files\n")


def build_demo(settings: Settings, root: str | Path | None = None, inbox: str | Path | None = None,
               scale: float | None = None, seed: int | None = None) -> DemoSummary:
    """Write the demo dataset under ``root`` and the CCTV inbox under ``inbox``.

    Args:
        settings: assets come from ``settings.assets_dir``; defaults from the other fields.
        root: dataset root (default ``settings.dataset_root``).
        inbox: CCTV inbox (default ``settings.inbox_dir``).
        scale: multiplies every count (default ``settings.demo_scale``; 1.0 gives 1500 train,
            450 test, 450 test_unseen images and 120 frames).
        seed: the same seed gives byte-identical files (default ``settings.seed``).

    Returns:
        Counts per split and class, identities per split, frames and faces in the inbox.
    """
    began = time.perf_counter()
    root = Path(root or settings.dataset_root).resolve()  # type: ignore[arg-type]
    inbox = Path(inbox or settings.inbox_dir).resolve()  # type: ignore[arg-type]
    scale = settings.demo_scale if scale is None else scale
    seed = settings.seed if seed is None else seed
    if scale <= 0:
        raise MaskjobError(f"demo scale must be > 0, got {scale}")
    if root == inbox or inbox.is_relative_to(root) or root.is_relative_to(inbox):
        raise MaskjobError(f"dataset root {root} and inbox {inbox} must not contain each other.")
    # identities.csv: what demos before the manifest wrote
    _prepare(root, [name for name, _, _ in DEMO_SPLITS] + [MANIFEST, "identities.csv"])
    _prepare(inbox, [*CAMERAS, "ground_truth.csv"])
    faces = load_faces(settings)
    split = _split_identities(faces, np.random.default_rng([seed, 1]))
    textures = {name: read_rgb(asset_path(settings, f"mask_{name}")) for name in FABRICS}
    counts = _write_dataset(root, split, textures, scale, seed)
    n_frames, n_faces = _write_inbox(inbox, asset_path(settings, "vtest_avi"), split["test"], textures, scale, seed)
    seconds = time.perf_counter() - began
    summary = DemoSummary(root, inbox, counts, {k: len(v) for k, v in split.items()}, n_frames, n_faces, seconds)
    logger.info("demo: %s train, %s test, %s %s images, %d frames with %d faces in %.1f s",
                sum(counts["train"].values()), sum(counts["test"].values()), sum(counts[HELDOUT_SPLIT].values()),
                HELDOUT_SPLIT, n_frames, n_faces, seconds)
    return summary
