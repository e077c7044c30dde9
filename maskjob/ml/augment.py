"""Camera-realistic corruptions of training crops: what faces at the cameras look like and the
demo's own images do not (tiny faces, motion blur, JPEG blocks, low light and greyscale IR).

Each corruption is applied with its own probability to a uint8 ``(3, H, W)`` tensor, after the
geometric and colour augmentation; the randomness comes from :mod:`numpy.random` (seeded per
DataLoader worker, and by training's seed in the main process), so runs repeat.

Example:
    >>> corrupt = CameraCorruptions(small_face_p=0.2)     # doctest: +SKIP
    >>> corrupt(image).shape                              # doctest: +SKIP
    torch.Size([3, 64, 64])
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import torch

__all__ = ["CameraCorruptions", "blur_motion", "darken_or_ir", "jpeg_roundtrip", "shrink_face"]

# A detector's box on a 24-40 px face: the crop the classifier sees is that small, upsampled.
SMALL_FACE_PX = (20, 40)


def shrink_face(rgb: np.ndarray, rng: np.random.RandomState) -> np.ndarray:
    """Down to a small face (``SMALL_FACE_PX``) and back up to the crop's size."""
    h, w = rgb.shape[:2]
    side = int(rng.randint(SMALL_FACE_PX[0], SMALL_FACE_PX[1] + 1))
    small = cv2.resize(rgb, (side, side), interpolation=cv2.INTER_AREA)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)


def blur_motion(rgb: np.ndarray, rng: np.random.RandomState) -> np.ndarray:
    """A straight motion streak of 3-9 px in a random direction."""
    length = int(rng.randint(3, 10))
    kernel = np.zeros((length, length), np.float32)
    kernel[length // 2, :] = 1.0 / length
    rotation = cv2.getRotationMatrix2D((length / 2 - 0.5, length / 2 - 0.5), float(rng.uniform(0, 180)), 1.0)
    kernel = cv2.warpAffine(kernel, rotation, (length, length))
    kernel /= max(float(kernel.sum()), 1e-6)
    return cv2.filter2D(rgb, -1, kernel, borderType=cv2.BORDER_REFLECT101)


def jpeg_roundtrip(rgb: np.ndarray, rng: np.random.RandomState) -> np.ndarray:
    """JPEG-encoded at quality 15-60 and decoded: the block artefacts of a CCTV stream."""
    ok, buf = cv2.imencode(".jpg", rgb, [cv2.IMWRITE_JPEG_QUALITY, int(rng.randint(15, 61))])
    return cv2.imdecode(buf, cv2.IMREAD_UNCHANGED) if ok else rgb


def darken_or_ir(rgb: np.ndarray, rng: np.random.RandomState) -> np.ndarray:
    """A night frame: either dim and noisy, or a greyscale infrared image with flat contrast."""
    img = rgb.astype(np.float32)
    if rng.rand() < 0.5:
        img = 255.0 * (img / 255.0) ** rng.uniform(1.5, 2.5) * rng.uniform(0.4, 0.8)
        img += rng.normal(0, rng.uniform(3, 10), img.shape)
    else:
        grey = img @ np.array([0.299, 0.587, 0.114], np.float32)
        grey = (grey - grey.mean()) * rng.uniform(0.5, 0.9) + grey.mean() * rng.uniform(0.8, 1.2)
        img = np.repeat(grey[..., None], 3, axis=2)
    return np.clip(img, 0, 255).astype(np.uint8)


@dataclass(frozen=True)
class CameraCorruptions:
    """Each corruption with its probability (0 turns it off), applied in this order."""

    small_face_p: float = 0.0
    motion_blur_p: float = 0.0
    jpeg_p: float = 0.0
    low_light_p: float = 0.0

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        steps = ((self.small_face_p, shrink_face), (self.motion_blur_p, blur_motion),
                 (self.jpeg_p, jpeg_roundtrip), (self.low_light_p, darken_or_ir))
        rng = np.random.mtrand._rand  # the process's seeded global generator
        chosen = [step for p, step in steps if p > 0 and rng.rand() < p]
        if not chosen:
            return image
        rgb = np.ascontiguousarray(image.permute(1, 2, 0).numpy())
        for step in chosen:
            rgb = step(rgb, rng)
        return torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1)
