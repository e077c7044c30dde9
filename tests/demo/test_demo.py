"""The demo builder: determinism, layout, identity- and style-disjoint splits and the CCTV inbox."""

from __future__ import annotations

import csv
import datetime as dt
import re
from pathlib import Path

import pytest
from PIL import Image

from maskjob import CLASSES
from maskjob.cli import main
from maskjob.demo.builder import CAMERAS, DEMO_DAY, MANIFEST, MANIFEST_FIELDS, build_demo
from maskjob.demo.facesynth import SEEN_STYLE, SOLIDS, UNSEEN_STYLE
from maskjob.errors import MaskjobError
from maskjob.imageio import sha256_file
from maskjob.vocab import HELDOUT_SPLIT
from tests.fixtures.demo import TINY_SCALE, TINY_SEED, tiny_settings


def _hashes(*dirs: Path) -> dict[str, str]:
    return {
        f"{d.name}/{p.relative_to(d).as_posix()}": sha256_file(p)
        for d in dirs for p in sorted(d.rglob("*")) if p.is_file()
    }


def _manifest(root: Path) -> list[dict[str, str]]:
    with (root / MANIFEST).open() as fh:
        reader = csv.DictReader(fh)
        assert tuple(reader.fieldnames or ()) == MANIFEST_FIELDS
        return list(reader)


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
    assert summary.counts == {"train": {c: 20 for c in CLASSES}, "test": {c: 6 for c in CLASSES},
                              HELDOUT_SPLIT: {c: 6 for c in CLASSES}}
    assert tiny_demo.summary.counts == {"train": {c: 40 for c in CLASSES}, "test": {c: 12 for c in CLASSES},
                                        HELDOUT_SPLIT: {c: 12 for c in CLASSES}}
    assert summary.n_frames < tiny_demo.summary.n_frames
    assert len(list((tmp_path / "inbox").glob("*/*.jpg"))) == summary.n_frames
    ours = {h for name, h in _hashes(tmp_path / "ds").items() if name.endswith(".jpg")}
    assert ours and not ours & set(_hashes(tiny_demo.root).values())
    split_of = {r["identity"]: r["split"] for r in _manifest(tmp_path / "ds")}
    tiny_split_of = {r["identity"]: r["split"] for r in _manifest(tiny_demo.root)}
    assert any(split_of[i] != tiny_split_of[i] for i in split_of.keys() & tiny_split_of.keys())


def test_layout_classes_and_identity_disjoint_splits(tiny_demo):
    root = tiny_demo.root
    assert sorted(p.name for p in root.iterdir() if p.is_dir()) == ["test", HELDOUT_SPLIT, "train"]
    images = sorted(p.relative_to(root).as_posix() for p in root.rglob("*.jpg"))
    for split in ("train", "test", HELDOUT_SPLIT):
        assert sorted(p.name for p in (root / split).iterdir()) == sorted(CLASSES)
        for cls in CLASSES:
            n = len(list((root / split / cls).glob("*.jpg")))
            assert n == tiny_demo.summary.counts[split][cls] > 0
    rows = _manifest(root)
    assert sorted(r["file"] for r in rows) == images
    assert all(r["file"].split("/")[:2] == [r["split"], r["label"]] for r in rows)
    ids = {s: {r["identity"] for r in rows if r["split"] == s} for s in ("train", "test", HELDOUT_SPLIT)}
    assert not ids["train"] & ids["test"] and not ids["train"] & ids[HELDOUT_SPLIT]
    assert not ids["test"] & ids[HELDOUT_SPLIT]
    for split, split_ids in ids.items():
        assert len(split_ids) <= tiny_demo.summary.n_identities[split]
        assert any(i.startswith("lfw-") for i in split_ids)
        assert any(not i.startswith("lfw-") for i in split_ids)
    with Image.open(root / images[0]) as img:
        assert (img.format, img.mode, img.size) == ("JPEG", "RGB", (128, 128))


def _style_values(rows: list[dict[str, str]], split: str) -> dict[str, set[str]]:
    """Each style column's values in one split: mask shapes, and the fabrics and colours of masks
    and scarves, empty values left out."""
    drawn = [r for r in rows if r["split"] == split]
    values = {key: {r[key] for r in drawn} - {""} for key in ("texture", "colour", "partial_band")}
    return {"shape": {r["shape"] for r in drawn if r["label"] != "without_mask"}, **values}


def _hex(index: int) -> str:
    return "#%02x%02x%02x" % tuple(int(v) for v in SOLIDS[index])


def test_unseen_split_shares_no_reserved_style_with_train_or_test(tiny_demo):
    rows = _manifest(tiny_demo.root)
    seen = {s: _style_values(rows, s) for s in ("train", "test")}
    unseen = _style_values(rows, HELDOUT_SPLIT)
    # Every style value test_unseen shows is reserved: neither train nor test has any of them.
    for split_values in seen.values():
        for key, values in unseen.items():
            assert values and not values & split_values[key], (key, values & split_values[key])
    assert unseen["shape"] <= set(UNSEEN_STYLE.shapes) and {"gaiter", "bandana"} & unseen["shape"]
    assert seen["train"]["shape"] == set(SEEN_STYLE.shapes)
    assert unseen["colour"] <= {_hex(i) for i in UNSEEN_STYLE.colours}
    assert not {_hex(i) for i in UNSEEN_STYLE.colours} & (seen["train"]["colour"] | seen["test"]["colour"])
    assert seen["train"]["partial_band"] == {"0.25-0.60"}
    assert any(band.endswith("+slip") for band in unseen["partial_band"])
    labelled = {(r["label"], r["partial_band"] != "") for r in rows}
    assert labelled == {("with_mask", False), ("without_mask", False), ("partial_mask", True)}


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
