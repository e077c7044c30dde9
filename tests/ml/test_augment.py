"""Camera corruptions of training crops: each does what it says, off at p=0, seeded."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from maskjob.ml.augment import CameraCorruptions, blur_motion, darken_or_ir, jpeg_roundtrip, shrink_face


def _face(size: int = 64) -> np.ndarray:
    """A sharp test pattern: checks plus a colour gradient."""
    ys, xs = np.mgrid[0:size, 0:size]
    checks = ((xs // 4 + ys // 4) % 2) * 120
    return np.stack([checks + xs, checks + ys, 255 - checks - xs // 2], axis=2).clip(0, 255).astype(np.uint8)


def _detail(rgb: np.ndarray) -> float:
    """Mean absolute difference of neighbouring pixels (both directions): high for sharp images."""
    img = rgb.astype(np.float32)
    return float(np.abs(np.diff(img, axis=0)).mean() + np.abs(np.diff(img, axis=1)).mean())


def test_small_face_and_motion_blur_remove_detail_keep_size():
    rgb, rng = _face(), np.random.RandomState(0)
    for corrupt in (shrink_face, blur_motion):
        out = corrupt(rgb, rng)
        assert out.shape == rgb.shape and out.dtype == np.uint8
        assert _detail(out) < 0.85 * _detail(rgb), corrupt.__name__


def test_jpeg_roundtrip_changes_pixels_a_little():
    rgb = _face()
    out = jpeg_roundtrip(rgb, np.random.RandomState(1))
    diff = np.abs(out.astype(int) - rgb.astype(int))
    assert out.shape == rgb.shape and 0 < diff.mean() < 40


def test_low_light_is_darker_or_greyscale():
    rgb = _face()
    seen = set()
    for seed in range(12):
        out = darken_or_ir(rgb, np.random.RandomState(seed))
        grey = bool((out[..., 0] == out[..., 1]).all() and (out[..., 1] == out[..., 2]).all())
        if not grey:
            assert out.mean() < 0.8 * rgb.mean()
        seen.add(grey)
    assert seen == {True, False}


def test_corruptions_off_by_default_and_seeded():
    image = torch.from_numpy(_face()).permute(2, 0, 1).contiguous()
    assert CameraCorruptions()(image) is image
    every = CameraCorruptions(small_face_p=1.0, motion_blur_p=1.0, jpeg_p=1.0, low_light_p=1.0)
    np.random.seed(3)
    first = every(image)
    np.random.seed(3)
    again = every(image)
    assert first.shape == image.shape and first.dtype == torch.uint8
    assert torch.equal(first, again) and not torch.equal(first, image)


@pytest.mark.parametrize("p", [0.0, 0.3])
def test_each_corruption_fires_at_its_rate(p):
    image = torch.from_numpy(_face()).permute(2, 0, 1).contiguous()
    corrupt = CameraCorruptions(jpeg_p=p)
    np.random.seed(0)
    changed = sum(not torch.equal(corrupt(image), image) for _ in range(200))
    assert abs(changed / 200 - p) < 0.08
