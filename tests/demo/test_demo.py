"""The demo builder: determinism, layout, identity-disjoint splits and the CCTV inbox."""

from __future__ import annotations

import csv
import datetime as dt
import re
from pathlib import Path

import pytest
from PIL import Image

from maskjob import CLASSES
from maskjob.cli import main
from maskjob.demo.builder import CAMERAS, DEMO_DAY, build_demo
from maskjob.errors import MaskjobError
from maskjob.imageio import sha256_file
from tests.fixtures.demo import TINY_SCALE, TINY_SEED, tiny_settings


def _hashes(*dirs: Path) -> dict[str, str]:
    return {
        f"{d.name}/{p.relative_to(d).as_posix()}": sha256_file(p)
        for d in dirs for p in sorted(d.rglob("*")) if p.is_file()
    }


def _identities(root: Path) -> list[dict[str, str]]:
    with (root / "identities.csv").open() as fh:
        return list(csv.DictReader(fh))


def test_same_seed_gives_byte_identical_files(tiny_demo, tmp_path):
    settings = tiny_settings(tmp_path)
    again = build_demo(settings, root=tmp_path / "dataset", inbox=tmp_path / "inbox",
                       scale=TINY_SCALE, seed=TINY_SEED)
    first = _hashes(tiny_demo.root, tiny_demo.inbox)
    assert again.counts == tiny_demo.summary.counts
    assert len(first) > 100
    assert _hashes(tmp_path / "dataset", tmp_path / "inbox") == first


def test_other_seed_differs_and_scale_changes_counts(tiny_demo, tmp_path):
    summary = build_demo(tiny_settings(tmp_path), root=tmp_path / "ds", inbox=tmp_path / "inbox",
                         scale=TINY_SCALE / 2, seed=TINY_SEED + 1)
    assert summary.counts == {"train": {c: 20 for c in CLASSES}, "test": {c: 6 for c in CLASSES}}
    assert tiny_demo.summary.counts == {"train": {c: 40 for c in CLASSES}, "test": {c: 12 for c in CLASSES}}
    assert summary.n_frames < tiny_demo.summary.n_frames
    assert len(list((tmp_path / "inbox").glob("*/*.jpg"))) == summary.n_frames
    ours = {h for name, h in _hashes(tmp_path / "ds").items() if name.endswith(".jpg")}
    assert ours and not ours & set(_hashes(tiny_demo.root).values())
    split_of = {r["identity"]: r["split"] for r in _identities(tmp_path / "ds")}
    tiny_split_of = {r["identity"]: r["split"] for r in _identities(tiny_demo.root)}
    assert any(split_of[i] != tiny_split_of[i] for i in split_of.keys() & tiny_split_of.keys())


def test_layout_classes_and_identity_disjoint_splits(tiny_demo):
    root = tiny_demo.root
    assert sorted(p.name for p in root.iterdir() if p.is_dir()) == ["test", "train"]
    images = sorted(p.relative_to(root).as_posix() for p in root.rglob("*.jpg"))
    for split in ("train", "test"):
        assert sorted(p.name for p in (root / split).iterdir()) == sorted(CLASSES)
        for cls in CLASSES:
            n = len(list((root / split / cls).glob("*.jpg")))
            assert n == tiny_demo.summary.counts[split][cls] > 0
    rows = _identities(root)
    assert sorted(r["path"] for r in rows) == images
    ids = {s: {r["identity"] for r in rows if r["split"] == s} for s in ("train", "test")}
    assert not ids["train"] & ids["test"]
    for split, split_ids in ids.items():
        assert len(split_ids) <= tiny_demo.summary.n_identities[split]
        assert any(i.startswith("lfw-") for i in split_ids)
        assert any(not i.startswith("lfw-") for i in split_ids)
    with Image.open(root / images[0]) as img:
        assert (img.format, img.mode, img.size) == ("JPEG", "RGB", (128, 128))


def test_inbox_names_times_and_ground_truth(tiny_demo):
    inbox = tiny_demo.inbox
    frames = sorted(inbox.glob("*/*.jpg"))
    assert len(frames) == tiny_demo.summary.n_frames
    assert {f.parent.name for f in frames} == set(CAMERAS)
    for frame in frames:
        assert re.fullmatch(r"\d{8}T\d{6}\.jpg", frame.name)
        taken = dt.datetime.strptime(frame.stem, "%Y%m%dT%H%M%S")
        assert taken.date() == DEMO_DAY and 7 <= taken.hour < 19
    with tiny_demo.ground_truth.open() as fh:
        reader = csv.DictReader(fh)
        assert reader.fieldnames == ["image", "x1", "y1", "x2", "y2", "label"]
        rows = list(reader)
    assert len(rows) == tiny_demo.summary.n_faces > 0
    for row in rows:
        with Image.open(inbox / row["image"]) as img:
            width, height = img.size
        x1, y1, x2, y2 = (int(row[k]) for k in ("x1", "y1", "x2", "y2"))
        assert (width, height) == (640, 480)
        assert 0 <= x1 < x2 < width and 0 <= y1 < y2 < height
        assert 25 <= x2 - x1 <= 150 and 30 <= y2 - y1 <= 180
        assert row["label"] in CLASSES
    per_frame = {}
    for row in rows:
        per_frame[row["image"]] = per_frame.get(row["image"], 0) + 1
    assert max(per_frame.values()) <= 4


def test_refuses_to_overwrite_a_foreign_directory(tmp_path):
    root = tmp_path / "photos"
    root.mkdir()
    (root / "holiday.jpg").write_bytes(b"not ours")
    with pytest.raises(MaskjobError, match="not written by `maskjob demo-data`"):
        build_demo(tiny_settings(tmp_path / "data"), root=root, inbox=tmp_path / "inbox")
    assert (root / "holiday.jpg").read_bytes() == b"not ours"


def test_cli_reports_the_error_and_exits_2(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MASKJOB_ASSETS_DIR", str(tmp_path / "no-assets"))
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    (inbox / "frame.jpg").write_bytes(b"x")
    status = main(["--data-dir", str(tmp_path / "data"), "demo-data", str(tmp_path / "ds"),
                   "--inbox", str(inbox), "--scale", "0.01", "--seed", "3"])
    assert status == 2
    assert "pass an empty or new directory" in capsys.readouterr().err


def test_source_landmarks_are_the_ones_facenet_pytorch_finds(tiny_demo):
    """maskjob's MTCNN (faithful mode) gives facenet-pytorch's ``detect`` landmarks exactly, so
    the demo data is what it was when the builder used facenet-pytorch (test-only reference)."""
    import numpy as np
    import torch
    from facenet_pytorch import MTCNN

    from maskjob.assets import asset_path
    from maskjob.demo import facesynth

    settings = tiny_demo.settings
    paths = tuple(asset_path(settings, name) for name in facesynth.PHOTO_ASSETS.values())
    lfw, photos = facesynth._source_images(asset_path(settings, "lfw_subset"), paths, 4)
    reference = MTCNN(keep_all=True, device="cpu")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        found = [reference.detect(np.stack(lfw), landmarks=True)]
        found += [reference.detect(np.stack([rgb]), landmarks=True) for rgb in photos.values()]
    finally:
        torch.set_num_threads(threads)
    want = []
    for boxes, probs, points in found:
        for frame_boxes, frame_probs, frame_points in zip(boxes, probs, points):
            if frame_boxes is None:
                want.append(None)
                continue
            sure = np.asarray(frame_probs, float) >= 0.95
            want.append((np.asarray(frame_boxes, float)[sure], np.asarray(frame_points, float)[sure]))
    faces = {f.identity: f.landmarks for f in facesynth.load_faces(settings)}
    assert len(faces) == 110
    for i, got in enumerate(want[:100]):
        if got is not None and len(got[1]):
            np.testing.assert_array_equal(faces[f"lfw-{i:03d}"], np.round(got[1][0], 1))
    t1_boxes, t1_points = want[100]
    for k, j in enumerate(np.argsort(t1_boxes[:, 0])):
        np.testing.assert_array_equal(faces[f"t1-{k}"], np.round(t1_points[j], 1))
    for name, got in zip(list(facesynth.PHOTO_ASSETS)[1:], want[101:]):
        np.testing.assert_array_equal(faces[name], np.round(got[1][0], 1))
