"""Reviewed faces exported as training crops: split by (camera, day), provenance, idempotence,
moves and removals, hostile names, and the dataset fingerprint; both databases."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from maskjob import CLASSES
from maskjob.cli import main
from maskjob.ml.dataset import check_dataset, dataset_fingerprint, scan_dataset
from maskjob.review.export import PROVENANCE_FILE, crop_scale, export_corrections, site_split
from maskjob.vocab import SITE_TEST_SPLIT, slug

FRAME_W, FRAME_H = 160, 120
BOX = (40, 30, 90, 90)
DAY = date(2026, 11, 20)


@dataclass
class Site:
    engine: Any
    settings: Any
    faces: dict[tuple[str, int, int], int]  # (camera, day index, face index) -> face id


def _frame(path: Path, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rgb = np.random.default_rng(seed).integers(0, 255, (FRAME_H, FRAME_W, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(path, format="PNG")  # lossless: crops compare exactly


def build_site(db_url: str, settings_factory: Any, tmp_path: Path, cameras: tuple[str, ...] = ("gate", "hall"),
               days: int = 3, faces_per_day: int = 2, *, paths: dict[str, str] | None = None,
               **overrides: Any) -> Site:
    """A migrated database whose scored frames (one face each) lie in ``tmp_path/inbox``;
    ``paths`` gives some cameras a stored frame path whose file is not written."""
    from maskjob.storage import database, schema

    database.upgrade(db_url)
    engine = database.make_engine(db_url)
    settings = settings_factory(inbox_dir=tmp_path / "inbox", dataset_root=tmp_path / "dataset", **overrides)
    faces: dict[tuple[str, int, int], int] = {}
    with database.session(engine) as s:
        model = schema.ModelVersion(version="cnn-0001", arch="cnn", checkpoint_path="/m/cnn.pt",
                                    checkpoint_sha256="c" * 64, metrics={}, test_macro_f1=0.9, diverged=False,
                                    created_at=datetime(2026, 11, 1, tzinfo=UTC), status="champion")
        s.add(model)
        s.flush()
        rows = []
        for c, camera in enumerate(cameras):
            for d in range(days):
                for k in range(faces_per_day):
                    day = DAY + timedelta(days=d)
                    rel = f"{slug(camera, 40, 'camera')}/{day:%Y-%m-%d}/{k:03d}.png"
                    if camera in (paths or {}):
                        rel = paths[camera]  # stored as given; no frame written
                    else:
                        _frame(settings.inbox_dir / rel, seed=100 * c + 10 * d + k)
                    when = datetime(day.year, day.month, day.day, 9, k, tzinfo=UTC)
                    image = schema.Image(path=rel, camera_id=camera, captured_at=when, width=FRAME_W, height=FRAME_H,
                                         status="ok", n_faces=1, n_with_mask=1, model_version_id=model.id,
                                         scored_at=when, timezone="UTC", utc_offset_s=0, local_day=day)
                    image.faces.append(schema.Face(
                        face_index=0, x1=BOX[0], y1=BOX[1], x2=BOX[2], y2=BOX[3], detector_score=0.9,
                        label="with_mask", p_with_mask=0.6, p_without_mask=0.3, p_partial_mask=0.1,
                        confidence=0.6, model_version_id=model.id))
                    s.add(image)
                    rows.append(((camera, d, k), image))
        s.flush()
        faces = {key: image.faces[0].id for key, image in rows}
    return Site(engine, settings, faces)


@pytest.fixture
def site(db_url, settings_factory, tmp_path):
    built = build_site(db_url, settings_factory, tmp_path, cameras=("gate", "hall", "dock", "yard"),
                       site_test_fraction=0.5)
    yield built
    built.engine.dispose()


def _review_all(site: Site) -> dict[int, int]:
    from maskjob.storage.reviews import record_review

    reviews = {}
    for i, ((_, _, _), face_id) in enumerate(sorted(site.faces.items())):
        reviews[face_id] = record_review(site.engine, face_id, "ana", CLASSES[i % 3])
    return reviews


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("site-*.jpg"))}


def _provenance(root: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (root / PROVENANCE_FILE).read_text().splitlines()]


def test_export_splits_by_camera_and_day_with_provenance(site):
    reviews = _review_all(site)
    result = export_corrections(site.engine, site.settings)
    root = site.settings.dataset_root.resolve()
    assert result.written == len(reviews) == result.total and not result.bad
    rows = _provenance(root)
    assert [r["file"] for r in rows] == sorted(_files(root))
    sides: dict[tuple[str, str], set[str]] = {}
    for row in rows:
        sides.setdefault((row["camera_id"], row["local_day"]), set()).add(row["split"])
        assert row["split"] == site_split(row["camera_id"], row["local_day"], 0.5)
        assert row["file"].startswith(f"{row['split']}/{row['label']}/site-{row['review_id']}-{row['camera_id']}-")
        assert row["reviewer"] == "ana" and row["model_label"] == "with_mask" and row["box"] == list(BOX)
        assert row["image_path"].endswith(".png") and datetime.fromisoformat(row["reviewed_at"]).tzinfo is not None
    assert all(len(s) == 1 for s in sides.values()), "a (camera, day) group sits on both sides"
    assert {s for (only,) in sides.values() for s in [only]} == {"train", SITE_TEST_SPLIT}
    assert sum(result.counts[s][c] for s in result.counts for c in CLASSES) == len(rows)

    # The crop is the scorer's: a square of crop_scale times the box's longer side.
    side = round(max(BOX[2] - BOX[0], BOX[3] - BOX[1]) * crop_scale(site.settings.detector))
    with Image.open(root / rows[0]["file"]) as img:
        assert img.size == (side, side)


def test_split_is_deterministic_and_follows_the_fraction():
    groups = [(f"cam{c}", DAY + timedelta(days=d)) for c in range(20) for d in range(30)]
    first = [site_split(c, d, 0.3) for c, d in groups]
    assert first == [site_split(c, d.isoformat(), 0.3) for c, d in groups]
    assert 0.22 < first.count(SITE_TEST_SPLIT) / len(groups) < 0.38
    assert {site_split(c, d, 0.0) for c, d in groups} == {"train"}
    assert {site_split(c, d, 1.0) for c, d in groups} == {SITE_TEST_SPLIT}


def test_reexport_is_idempotent_and_follows_rereviews_and_undos(site):
    from maskjob.storage.reviews import record_review, undo_review

    reviews = _review_all(site)
    export_corrections(site.engine, site.settings)
    root = site.settings.dataset_root.resolve()
    before, provenance = _files(root), (root / PROVENANCE_FILE).read_bytes()
    stamps = {p: (root / p).stat().st_mtime_ns for p in before}
    again = export_corrections(site.engine, site.settings)
    assert (again.written, again.removed, again.unchanged) == (0, 0, len(before))
    assert _files(root) == before and (root / PROVENANCE_FILE).read_bytes() == provenance
    assert {p: (root / p).stat().st_mtime_ns for p in before} == stamps

    moved_face, undone_face, gone_face = sorted(reviews)[:3]
    old = {r["review_id"]: r["file"] for r in _provenance(root)}
    new_review = record_review(site.engine, moved_face, "ben", "partial_mask")
    undo_review(site.engine, reviews[undone_face], "ana")
    record_review(site.engine, gone_face, "ben", "not_a_face")
    result = export_corrections(site.engine, site.settings)
    assert (result.written, result.removed) == (1, 3)
    files = _files(root)
    assert old[reviews[moved_face]] not in files and old[reviews[undone_face]] not in files
    assert old[reviews[gone_face]] not in files
    moved = next(r for r in _provenance(root) if r["review_id"] == new_review)
    assert moved["file"].split("/")[1] == "partial_mask" and moved["reviewer"] == "ben"
    assert moved["file"] in files and len(files) == len(before) - 2


def test_hostile_names_stay_inside_the_dataset_and_bad_frames_are_listed(db_url, settings_factory, tmp_path):
    from maskjob.storage.reviews import record_review

    hostile = "../../etc/<script>alert(1)</script>\u202e"
    built = build_site(db_url, settings_factory, tmp_path, cameras=(hostile, "gate", "lost"), days=1,
                       faces_per_day=1, paths={"gate": "../outside.png", "lost": "lost/never-uploaded.png"})
    _frame(tmp_path / "outside.png", seed=1)  # exists, but outside the inbox
    try:
        for face_id in built.faces.values():
            record_review(built.engine, face_id, "ana", "without_mask")
        result = export_corrections(built.engine, built.settings)
        root = built.settings.dataset_root.resolve()
        files = list(root.rglob("*.jpg"))
        assert len(files) == 1 and files[0].resolve().is_relative_to(root)
        assert "/" not in files[0].name and "<" not in files[0].name and ".." not in files[0].name
        reasons = sorted(b["reason"] for b in result.bad)
        assert len(reasons) == 2
        assert any("not inside the inbox" in r for r in reasons)
        assert any("file not found" in r for r in reasons)
        assert not (tmp_path / "etc").exists()
        assert _provenance(root)[0]["camera_id"] == hostile  # kept as data, never as a path
        assert "not exported 2" in result.format_text()
    finally:
        built.engine.dispose()


def test_export_changes_the_fingerprint_and_the_check_sees_the_site_split(db_url, settings_factory, tmp_path,
                                                                          synthetic_dataset):
    dataset = synthetic_dataset(n_train=3, n_test=2)
    built = build_site(db_url, settings_factory, tmp_path, cameras=("gate", "hall", "dock"), days=4,
                       faces_per_day=1, site_test_fraction=0.5)
    try:
        before = dataset_fingerprint(dataset)
        assert export_corrections(built.engine, built.settings, dataset_root=dataset).total == 0
        assert dataset_fingerprint(dataset) == before  # nothing reviewed: nothing written
        _review_all(built)
        result = export_corrections(built.engine, built.settings, dataset_root=dataset)
        assert result.counts[SITE_TEST_SPLIT] and result.total == 12
        after = dataset_fingerprint(dataset)
        assert after != before
        check = check_dataset(dataset, 10_000_000)
        assert check.ok and check.fingerprint == after
        site_total = sum(result.counts[SITE_TEST_SPLIT].values())
        assert sum(check.counts.get(SITE_TEST_SPLIT, {}).values()) == site_total
        assert sum(scan_dataset(dataset).counts()["train"].values()) == 3 * 3 + sum(result.counts["train"].values())
        assert (SITE_TEST_SPLIT in check.format_text()) == (site_total > 0)
    finally:
        built.engine.dispose()


def test_cli_export_prints_the_counts(db_url, settings_factory, tmp_path, capsys):
    built = build_site(db_url, settings_factory, tmp_path, cameras=("gate",), days=1, faces_per_day=2)
    try:
        _review_all(built)
        flags = ["--data-dir", str(built.settings.data_dir), "corrections", "export", "--database-url", db_url,
                 "--inbox", str(built.settings.inbox_dir)]
        out_dir = tmp_path / "elsewhere"
        assert main([*flags, "--dataset", str(out_dir)]) == 0
        text = capsys.readouterr().out
        assert "written 2" in text and "with_mask" in text
        assert len(list(out_dir.rglob("site-*.jpg"))) == 2
        assert main([*flags, "--dataset", str(out_dir), "--json"]) == 0
        assert json.loads(capsys.readouterr().out)["written"] == 0
    finally:
        built.engine.dispose()
