"""Dataset layout checks, the data-quality report, the fingerprint and the loaders."""

from __future__ import annotations

import io
import json
import logging
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from maskjob import CLASSES
from maskjob.cli import main
from maskjob.errors import MaskjobError
from maskjob.ml.dataset import check_dataset, dataset_fingerprint, scan_dataset
from maskjob.ml.loaders import decode_images, make_loaders, split_train_val
from maskjob.ml.models import IMAGENET_MEAN, IMAGENET_STD
from maskjob.vocab import OPTIONAL_SPLITS

MAX_PIXELS = 10_000_000


def test_scan_accepts_extensions_in_any_case_and_ignores_other_files(synthetic_dataset):
    root = synthetic_dataset(n_train=3, n_test=2)
    folder = root / "train" / "with_mask"
    Image.new("RGB", (20, 20), "red").save(folder / "UPPER.JPG", format="JPEG")
    Image.new("RGB", (20, 20), "red").save(folder / "x.WebP", format="WEBP")
    Image.new("RGB", (20, 20), "red").save(folder / "y.bmp", format="BMP")
    (folder / "notes.txt").write_text("not an image")
    (folder / ".hidden.jpg").write_bytes(b"")
    index = scan_dataset(root)
    names = {p.name for p, _ in index.splits["train"]}
    assert {"UPPER.JPG", "x.WebP", "y.bmp"} <= names
    assert "notes.txt" not in names and ".hidden.jpg" not in names
    assert index.counts()["train"] == {"with_mask": 6, "without_mask": 3, "partial_mask": 3}
    assert all(label == CLASSES.index(p.parent.name) for p, label in index.splits["train"])


@pytest.mark.parametrize(
    "breakage, expected",
    [
        (lambda root: shutil.rmtree(root), "does not exist"),
        (lambda root: shutil.rmtree(root / "test"), "no test/ folder"),
        (lambda root: (root / "train" / "masked").mkdir(), "unknown class folders ['masked']"),
        (lambda root: shutil.rmtree(root / "test" / "partial_mask"), "partial_mask is missing"),
        (lambda root: [p.unlink() for p in (root / "train" / "without_mask").iterdir()], "has no images"),
    ],
    ids=["root-missing", "split-missing", "unknown-class", "class-missing", "class-empty"],
)
def test_wrong_layout_raises_with_expected_layout(synthetic_dataset, breakage, expected):
    root = synthetic_dataset(n_train=2, n_test=2)
    breakage(root)
    with pytest.raises(MaskjobError) as info:
        scan_dataset(root)
    assert expected in str(info.value)
    assert "{train,test}/{with_mask,without_mask,partial_mask}" in str(info.value)


def test_scan_of_one_split_needs_only_that_split(synthetic_dataset):
    root = synthetic_dataset(n_train=2, n_test=3)
    shutil.rmtree(root / "train")
    index = scan_dataset(root, splits=("test",))
    assert list(index.splits) == ["test"]
    assert index.counts() == {"test": {name: 3 for name in CLASSES}}
    assert scan_dataset(root, splits="test").splits == index.splits  # a bare name is one split
    with pytest.raises(MaskjobError, match="no train/ folder") as info:
        scan_dataset(root)  # both splits by default
    assert "{train,test}/{with_mask,without_mask,partial_mask}" in str(info.value)


@pytest.mark.parametrize(
    "breakage, expected",
    [
        (lambda root: shutil.rmtree(root / "test"), "no test/ folder"),
        (lambda root: shutil.rmtree(root / "test" / "without_mask"), "without_mask is missing"),
        (lambda root: (root / "test" / "masked").mkdir(), "unknown class folders ['masked']"),
    ],
    ids=["split-missing", "class-missing", "unknown-class"],
)
def test_scan_of_one_split_shows_that_splits_layout(synthetic_dataset, breakage, expected):
    root = synthetic_dataset(n_train=2, n_test=2)
    shutil.rmtree(root / "train")
    breakage(root)
    with pytest.raises(MaskjobError) as info:
        scan_dataset(root, splits=("test",))
    assert expected in str(info.value)
    assert f"expected {root.resolve()}/test/{{with_mask,without_mask,partial_mask}}/" in str(info.value)


def test_scan_hints_when_class_folders_sit_in_the_root(synthetic_dataset):
    root = synthetic_dataset(n_train=2, n_test=2) / "test"
    with pytest.raises(MaskjobError, match=r"holds class folders \(partial_mask, with_mask, without_mask\) itself"):
        scan_dataset(root, splits=("test",))
    with pytest.raises(MaskjobError, match="unknown split"):
        scan_dataset(root, splits=("validation",))


def _write(path, img: Image.Image, **kwargs) -> None:
    buf = io.BytesIO()
    img.save(buf, **kwargs)
    path.write_bytes(buf.getvalue())


def test_check_dataset_reports_counts_unreadable_and_duplicates(synthetic_dataset):
    root = synthetic_dataset(n_train=4, n_test=2)
    train_wm = root / "train" / "with_mask"
    (train_wm / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not really a jpeg")
    (train_wm / "empty.png").write_bytes(b"")
    _write(train_wm / "grey.png", Image.new("L", (30, 30), 128), format="PNG")
    _write(train_wm / "cmyk.jpg", Image.new("CMYK", (30, 30), (0, 50, 50, 0)), format="JPEG")
    _write(train_wm / "alpha.png", Image.new("RGBA", (30, 30), (0, 0, 255, 100)), format="PNG")
    shutil.copy(root / "test" / "partial_mask" / "partial_mask_001.png", root / "train" / "partial_mask" / "leak.png")

    report = check_dataset(root, MAX_PIXELS)

    assert not report.ok
    assert report.counts["train"] == {"with_mask": 9, "without_mask": 4, "partial_mask": 5}
    assert report.counts["test"] == {"with_mask": 2, "without_mask": 2, "partial_mask": 2}
    assert report.imbalance["train"] == pytest.approx(9 / 4)
    reasons = {u["path"]: u["reason"] for u in report.unreadable}
    assert set(reasons) == {"train/with_mask/corrupt.jpg", "train/with_mask/empty.png"}
    assert "empty file" in reasons["train/with_mask/empty.png"]
    assert "corrupt" in reasons["train/with_mask/corrupt.jpg"] or "not a recognised" in reasons["train/with_mask/corrupt.jpg"]
    assert report.duplicates == [
        {
            "sha256": report.duplicates[0]["sha256"],
            "train": ["train/partial_mask/leak.png"],
            "test": ["test/partial_mask/partial_mask_001.png"],
        }
    ]
    text = report.format_text()
    assert "corrupt.jpg" in text and "leak.png" in text and "PROBLEMS FOUND" in text
    assert json.loads(json.dumps(report.to_dict()))["ok"] is False


def test_check_dataset_clean_and_imbalance_warning(synthetic_dataset):
    root = synthetic_dataset(n_train=8, n_test=2)
    for p in sorted((root / "train" / "without_mask").iterdir())[2:]:
        p.unlink()
    report = check_dataset(root, MAX_PIXELS)
    assert report.ok
    assert report.imbalance["train"] == 4.0
    assert any("imbalanced" in w for w in report.warnings)


def test_data_check_cli_exit_codes(synthetic_dataset, capsys):
    root = synthetic_dataset(n_train=3, n_test=2)
    assert main(["data", "check", str(root), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["counts"]["train"]["with_mask"] == 3
    (root / "test" / "with_mask" / "bad.jpg").write_bytes(b"junk")
    assert main(["data", "check", str(root)]) == 1
    assert "bad.jpg" in capsys.readouterr().out
    (root / "test" / "sunglasses").mkdir()
    assert main(["data", "check", str(root)]) == 2
    assert "expected" in capsys.readouterr().err


def test_fingerprint_tracks_content_and_names(synthetic_dataset):
    root = synthetic_dataset(n_train=3, n_test=2)
    first = dataset_fingerprint(root)
    assert first == dataset_fingerprint(root)
    target = root / "test" / "with_mask" / "with_mask_000.png"
    original = target.read_bytes()
    Image.new("RGB", (40, 40), "white").save(target)
    assert dataset_fingerprint(root) != first
    target.write_bytes(original)
    assert dataset_fingerprint(root) == first
    target.rename(target.with_name("renamed.png"))
    assert dataset_fingerprint(root) != first


def test_split_is_stratified_and_seeded(synthetic_dataset):
    items = scan_dataset(synthetic_dataset(n_train=20, n_test=1)).splits["train"]
    train, val = split_train_val(items, 0.25, seed=3)
    assert split_train_val(items, 0.25, seed=3) == (train, val)
    assert split_train_val(items, 0.25, seed=4)[1] != val
    assert sorted(train + val) == sorted(items)
    assert [sum(1 for _, y in val if y == c) for c in range(3)] == [5, 5, 5]


def test_decode_skips_unreadable_with_warning(tmp_path, caplog):
    good = tmp_path / "good.png"
    Image.new("RGB", (50, 30), "blue").save(good)
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"")
    with caplog.at_level(logging.WARNING, logger="maskjob.ml.loaders"):
        images = decode_images([(bad, 0), (good, 2)], 16, MAX_PIXELS)
    assert images.images.shape == (1, 16, 16, 3)
    assert images.labels.tolist() == [2]
    assert images.skipped[0][0] == bad and "empty" in images.skipped[0][1]
    assert "bad.jpg" in caplog.text


def _epoch(loader) -> tuple[torch.Tensor, torch.Tensor]:
    images, indices = [], []
    for x, _, idx in loader:
        images.append(x)
        indices.append(idx)
    idx = torch.cat(indices)
    return torch.cat(images)[idx.argsort()], idx.sort().values


def test_loaders_augment_train_only_and_skip_bad_files(synthetic_dataset, settings_factory, caplog):
    root = synthetic_dataset(n_train=10, n_test=3)
    (root / "train" / "with_mask" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    settings = settings_factory(batch_size=8, num_workers=0, seed=5)
    with caplog.at_level(logging.WARNING, logger="maskjob.ml.loaders"):
        loaders = make_loaders(root, 32, settings, IMAGENET_MEAN, IMAGENET_STD)
    assert [p.name for p, _ in loaders.skipped] == ["broken.png"]
    assert "broken.png" in caplog.text
    assert len(loaders.train.dataset) + len(loaders.val.dataset) == 30

    train_a, idx_a = _epoch(loaders.train)
    train_b, idx_b = _epoch(loaders.train)
    assert train_a.shape[1:] == (3, 32, 32)
    assert torch.equal(idx_a, idx_b)
    assert (train_a - train_b).abs().mean() > 0.05

    test_a, _ = _epoch(loaders.test)
    test_b, _ = _epoch(loaders.test)
    assert torch.equal(test_a, test_b)
    assert len(test_a) == 9
    plain = decode_images(scan_dataset(root).splits["test"], 32, MAX_PIXELS).images
    expected = (torch.from_numpy(plain).permute(0, 3, 1, 2).float() / 255 - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    assert torch.allclose(test_a, expected, atol=1e-5)


def test_loaders_are_seeded_and_work_with_worker_processes(synthetic_dataset, settings_factory):
    root = synthetic_dataset(n_train=6, n_test=2)
    settings = settings_factory(batch_size=6, num_workers=2, seed=11)
    first = [x for x, _, _ in make_loaders(root, 24, settings, IMAGENET_MEAN, IMAGENET_STD).train]
    again = [x for x, _, _ in make_loaders(root, 24, settings, IMAGENET_MEAN, IMAGENET_STD).train]
    assert len(first) == 2
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert np.isfinite(torch.cat(first).numpy()).all()


def test_check_fingerprint_equals_dataset_fingerprint(tmp_path):
    root = tmp_path / "ds"
    for split in ("train", "test"):
        for i, name in enumerate(CLASSES):
            folder = root / split / name
            folder.mkdir(parents=True)
            Image.new("RGB", (24, 24), (40 * i, 90, 200 if split == "test" else 10)).save(folder / "a.png")
    (root / "train" / "with_mask" / "broken.jpg").write_bytes(b"not an image")
    check = check_dataset(root, max_pixels=10_000_000)
    assert not check.ok  # a file that does not decode is still part of the fingerprint
    assert check.fingerprint == dataset_fingerprint(root)
    (root / "test" / "partial_mask" / "a.png").write_bytes(b"edited")
    assert check_dataset(root, max_pixels=10_000_000).fingerprint != check.fingerprint


@pytest.mark.parametrize("split", OPTIONAL_SPLITS)
def test_optional_split_is_scanned_checked_fingerprinted_and_reported(synthetic_dataset, capsys, split):
    root = synthetic_dataset(n_train=3, n_test=2)
    without = dataset_fingerprint(root)
    assert split not in scan_dataset(root).splits and split not in check_dataset(root, MAX_PIXELS).counts
    folder = root / split / "without_mask"
    folder.mkdir(parents=True)  # the other class folders missing, this one empty: still fine
    assert scan_dataset(root).counts()[split] == {name: 0 for name in CLASSES}
    Image.new("RGB", (24, 24), (200, 10, 10)).save(folder / "face-1.png")
    index = scan_dataset(root)
    assert [p.name for p, _ in index.splits[split]] == ["face-1.png"]
    assert scan_dataset(root, splits=(split,)).counts() == {split: {**{c: 0 for c in CLASSES}, "without_mask": 1}}
    report = check_dataset(root, MAX_PIXELS)
    assert report.ok and report.counts[split]["without_mask"] == 1 and split not in report.imbalance
    assert split in report.format_text().splitlines()[1]
    assert report.fingerprint == dataset_fingerprint(root) != without
    assert main(["data", "check", str(root), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["counts"][split]["without_mask"] == 1

    # The same picture in train and in an optional test split is leakage, as between train and test.
    shutil.copy(folder / "face-1.png", root / "train" / "without_mask" / "copy.png")
    leaked = check_dataset(root, MAX_PIXELS)
    assert not leaked.ok and leaked.duplicates[0][split] == [f"{split}/without_mask/face-1.png"]
    assert f"{split}/without_mask/face-1.png" in leaked.format_text()
    assert main(["data", "check", str(root)]) == 1
    assert f"{split}/without_mask/face-1.png" in capsys.readouterr().out

    (root / split / "sunglasses").mkdir()
    with pytest.raises(MaskjobError, match=r"unknown class folders \['sunglasses'\]"):
        scan_dataset(root)


def test_training_stream_gets_the_camera_corruptions(synthetic_dataset, settings_factory):
    from maskjob.ml.augment import CameraCorruptions
    from maskjob.ml.loaders import CAMERA_CORRUPTIONS

    root = synthetic_dataset(n_train=6, n_test=2)
    settings = settings_factory(batch_size=6, num_workers=0, seed=3)
    default = make_loaders(root, 24, settings, IMAGENET_MEAN, IMAGENET_STD)
    assert default.train.dataset.transform.transforms[-1] is CAMERA_CORRUPTIONS
    assert default.val.dataset.transform is None and default.test.dataset.transform is None
    # Every frame dark or greyscale: the training images change, the test images do not.
    night = CameraCorruptions(low_light_p=1.0)
    plain = make_loaders(root, 24, settings, IMAGENET_MEAN, IMAGENET_STD, corruptions=None)
    dark = make_loaders(root, 24, settings, IMAGENET_MEAN, IMAGENET_STD, corruptions=night)
    assert plain.train.dataset.transform.transforms[-1] is not CAMERA_CORRUPTIONS
    torch.manual_seed(0)
    np.random.seed(0)
    images = torch.stack([dark.train.dataset[i][0] for i in range(len(dark.train.dataset))]).float()
    grey = (images[:, 0] == images[:, 1]).flatten(1).all(1) & (images[:, 1] == images[:, 2]).flatten(1).all(1)
    raw = plain.train.dataset.images.float()
    assert bool((grey | (images.mean((1, 2, 3)) < 0.8 * raw.mean((1, 2, 3)))).all())
    assert torch.equal(_epoch(dark.test)[0], _epoch(plain.test)[0])
