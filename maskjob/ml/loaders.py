"""Decoded images and the training/validation/test loaders (augmentation on the training stream only).

Example:
    >>> loaders = make_loaders("data/dataset", 64, settings, IMAGENET_MEAN, IMAGENET_STD)  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2

from maskjob import CLASSES
from maskjob.config import Settings
from maskjob.errors import MaskjobError
from maskjob.imageio import ImageReadError, read_rgb
from maskjob.ml.augment import CameraCorruptions
from maskjob.ml.dataset import Item, _reason, scan_dataset

__all__ = [
    "CAMERA_CORRUPTIONS", "ImageSet", "Loaders", "decode_images", "make_loaders", "normalize", "resize_rgb",
    "split_train_val",
]

logger = logging.getLogger(__name__)


# Training images are stored a little larger than the model input so random crops keep detail.
TRAIN_STORE_SCALE = 1.15
# What a CCTV frame does to a face (issue 11). On the demo's held-out-styles split (test_unseen)
# these lifted mobilenet_v2's macro-F1 from 0.854 / 0.889 to 0.934 / 0.928 (two seeds, scale 0.5,
# 6 epochs) and left it level at scale 1 (0.929 / 0.928); small faces, wider crop jitter, random
# erasing and strong hue / channel shuffles did not help (the heldout helper's report).
CAMERA_CORRUPTIONS = CameraCorruptions(motion_blur_p=0.25, jpeg_p=0.3, low_light_p=0.25)


def split_train_val(items: Sequence[Item], val_fraction: float, seed: int) -> tuple[list[Item], list[Item]]:
    """Stratified, seeded split of the training items into train and validation.

    Each class with at least two images gives ``round(n * val_fraction)`` (at least one)
    images to validation.

    Args:
        items: ``(path, class_index)`` pairs.
        val_fraction: share of each class held out.
        seed: the shuffle seed.

    Returns:
        ``(train, val)``, each sorted by path.
    """
    rng = random.Random(seed)
    train: list[Item] = []
    val: list[Item] = []
    for label in range(len(CLASSES)):
        members = sorted(i for i in items if i[1] == label)
        rng.shuffle(members)
        n_val = max(1, round(len(members) * val_fraction)) if len(members) >= 2 else 0
        val.extend(members[:n_val])
        train.extend(members[n_val:])
    return sorted(train), sorted(val)


def resize_rgb(rgb: np.ndarray, size: int) -> np.ndarray:
    """Resize an RGB uint8 array to ``size`` x ``size`` (area filter when shrinking)."""
    h, w = rgb.shape[:2]
    interpolation = cv2.INTER_AREA if h >= size and w >= size else cv2.INTER_LINEAR
    return cv2.resize(np.ascontiguousarray(rgb), (size, size), interpolation=interpolation)


def normalize(images: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """uint8 ``(N, 3, H, W)`` to float, scaled to [0, 1] and normalised per channel."""
    m = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
    return (images.float().div_(255.0) - m) / s


@dataclass(frozen=True)
class ImageSet:
    """Decoded images, resized to one square size, with labels and their files."""

    images: np.ndarray
    labels: np.ndarray
    paths: list[Path]
    skipped: list[tuple[Path, str]]


def decode_images(items: Sequence[Item], size: int, max_pixels: int) -> ImageSet:
    """Decode and resize images, skipping unreadable ones (any failure to read or decode a
    file, including FIFOs, devices and broken links named like images) with a logged warning.

    Args:
        items: ``(path, class_index)`` pairs.
        size: the square side to resize to.
        max_pixels: larger images are skipped.

    Returns:
        The images as ``(N, size, size, 3)`` uint8.
    """
    images = np.empty((len(items), size, size, 3), dtype=np.uint8)
    labels: list[int] = []
    paths: list[Path] = []
    skipped: list[tuple[Path, str]] = []
    for path, label in items:
        try:
            # Only regular files are opened (a FIFO or device in the dataset never blocks), and
            # whatever the decoder raises on a malformed file comes back as a MaskjobError.
            rgb = read_rgb(path, max_pixels)
        except MaskjobError as exc:
            logger.warning("skipping unreadable image %s", exc)
            skipped.append((path, exc.reason if isinstance(exc, ImageReadError) else _reason(exc, path)))
            continue
        images[len(paths)] = resize_rgb(rgb, size)
        labels.append(label)
        paths.append(path)
    return ImageSet(images[: len(paths)], np.asarray(labels, dtype=np.int64), paths, skipped)


def _augmentation(image_size: int, corruptions: CameraCorruptions | None) -> v2.Compose:
    steps: list[Any] = [
        v2.RandomResizedCrop(image_size, scale=(0.75, 1.0), ratio=(0.9, 1.1), antialias=True),
        v2.RandomHorizontalFlip(),
        v2.RandomRotation(10),
        v2.ColorJitter(brightness=0.25, contrast=0.25, saturation=0.2, hue=0.02),
        v2.RandomApply([v2.GaussianBlur(3, sigma=(0.1, 1.2))], p=0.25),
    ]
    return v2.Compose(steps + ([corruptions] if corruptions is not None else []))


class _TensorImages(Dataset):
    """Samples ``(uint8 CHW tensor, label, index)``, augmented when ``transform`` is set."""

    def __init__(self, images: ImageSet, transform: v2.Compose | None = None):
        self.images = torch.from_numpy(images.images).permute(0, 3, 1, 2)
        self.labels = torch.from_numpy(images.labels)
        self.paths = images.paths
        self.transform = transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int, int]:
        image = self.images[i]
        if self.transform is not None:
            image = self.transform(image)
        return image, int(self.labels[i]), i


class _Collate:
    """Stack and normalise a batch (runs in the DataLoader workers)."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        self.mean = tuple(mean)
        self.std = tuple(std)

    def __call__(self, batch: list[tuple[torch.Tensor, int, int]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        images = torch.stack([b[0] for b in batch])
        labels = torch.tensor([b[1] for b in batch], dtype=torch.int64)
        indices = torch.tensor([b[2] for b in batch], dtype=torch.int64)
        return normalize(images, self.mean, self.std), labels, indices


def _seed_worker(worker_id: int) -> None:
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


@dataclass
class Loaders:
    """Batches of ``(normalised images, labels, indices into .paths)``."""

    train: DataLoader
    val: DataLoader
    test: DataLoader
    skipped: list[tuple[Path, str]]

    def paths(self, split: str) -> list[Path]:
        return getattr(self, split).dataset.paths


def make_loaders(
    root: str | Path,
    image_size: int,
    settings: Settings,
    mean: Sequence[float],
    std: Sequence[float],
    corruptions: CameraCorruptions | None = CAMERA_CORRUPTIONS,
) -> Loaders:
    """Loaders for train (augmented, shuffled, ``settings.num_workers`` processes), val
    (carved from train, stratified and seeded) and test.

    Images are decoded once into memory; unreadable files are skipped with a warning.

    Args:
        root: the dataset root.
        image_size: the model input side.
        settings: ``seed``, ``val_fraction``, ``batch_size``, ``num_workers``, ``max_image_pixels``.
        mean: per-channel mean for normalisation.
        std: per-channel std for normalisation.
        corruptions: camera corruptions of the training stream after the geometric and colour
            augmentation (``None``: none).

    Returns:
        The three loaders.
    """
    index = scan_dataset(root)
    train_items, val_items = split_train_val(index.splits["train"], settings.val_fraction, settings.seed)
    store_size = round(image_size * TRAIN_STORE_SCALE)
    train_set = decode_images(train_items, store_size, settings.max_image_pixels)
    val_set = decode_images(val_items, image_size, settings.max_image_pixels)
    test_set = decode_images(index.splits["test"], image_size, settings.max_image_pixels)
    for name, images in (("train", train_set), ("val", val_set), ("test", test_set)):
        if len(images.labels) == 0:
            raise MaskjobError(f"dataset {index.root}: no readable {name} images; run `maskjob data check {index.root}`")
    skipped = train_set.skipped + val_set.skipped + test_set.skipped
    if skipped:
        logger.warning("skipped %d unreadable images (see `maskjob data check`)", len(skipped))
    collate = _Collate(mean, std)
    generator = torch.Generator().manual_seed(settings.seed)
    workers = settings.num_workers
    train = DataLoader(
        _TensorImages(train_set, _augmentation(image_size, corruptions)),
        batch_size=settings.batch_size,
        shuffle=True,
        num_workers=workers,
        collate_fn=collate,
        generator=generator,
        worker_init_fn=_seed_worker,
        persistent_workers=workers > 0,
        drop_last=len(train_set.labels) > settings.batch_size,
    )
    val = DataLoader(_TensorImages(val_set), batch_size=settings.batch_size * 2, collate_fn=collate)
    test = DataLoader(_TensorImages(test_set), batch_size=settings.batch_size * 2, collate_fn=collate)
    logger.info(
        "dataset %s: %d train, %d val, %d test images at %dpx",
        index.root, len(train_set.labels), len(val_set.labels), len(test_set.labels), image_size,
    )
    return Loaders(train, val, test, skipped)
