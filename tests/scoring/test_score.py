"""Scoring the demo inbox into SQLite and PostgreSQL: ground truth, idempotence, intervals,
model choice, the scoring_runs record and the CLI."""

from __future__ import annotations

import csv
import os
import shutil
import socket
from collections import defaultdict
from datetime import datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

from maskjob import CLASSES, timeutil
from maskjob.config import Settings, replace
from maskjob.errors import MaskjobError
from maskjob.imageio import read_rgb
from maskjob.ml.checkpoint import load_classifier
from maskjob.scoring.detectors import create_detector
from maskjob.scoring.faces import classify_faces, crop_face
from maskjob.scoring.frames import discover_frames
from maskjob.scoring.matching import match_boxes
from maskjob.scoring.score import classify_batches, score
from maskjob.storage import database, schema
from maskjob.storage.registry import register

# The detector the tests score with; README "Face detector" explains the choice.
TEST_DETECTOR = "mtcnn"


def score_settings(settings: Settings, **changes: object) -> Settings:
    return replace(settings, detector=TEST_DETECTOR, **changes)


def use_champion(url: str, checkpoint: Path) -> str:
    """Migrate ``url``, register ``checkpoint`` and make it the champion; returns its version."""
    database.upgrade(url)
    engine = database.make_engine(url)
    try:
        version = register(engine, checkpoint)
        with engine.begin() as conn:
            conn.execute(sa.update(schema.ModelVersion).where(schema.ModelVersion.id == version.id)
                         .values(status="champion", promoted_at=timeutil.utcnow()))
        return version.version
    finally:
        engine.dispose()


def table_rows(url: str) -> dict[str, set[tuple]]:
    """Images and faces as comparable tuples (no ids, run ids or times)."""
    engine = database.make_engine(url)
    try:
        with engine.connect() as conn:
            images = conn.execute(sa.select(
                schema.Image.path, schema.Image.status, schema.Image.n_faces, schema.Image.width, schema.Image.height,
                schema.Image.camera_id, schema.Image.captured_at, schema.Image.content_sha256)).all()
            faces = conn.execute(sa.select(
                schema.Image.path, schema.Face.face_index, schema.Face.x1, schema.Face.y1, schema.Face.x2, schema.Face.y2, schema.Face.label)
                .join(schema.Image, schema.Face.image_id == schema.Image.id)).all()
        return {"images": {tuple(r) for r in images}, "faces": {tuple(r) for r in faces}}
    finally:
        engine.dispose()


def counts(url: str) -> tuple[int, int]:
    engine = database.make_engine(url)
    try:
        with engine.connect() as conn:
            return (conn.scalar(sa.select(sa.func.count()).select_from(schema.Image)),
                    conn.scalar(sa.select(sa.func.count()).select_from(schema.Face)))
    finally:
        engine.dispose()


def read_truth(path: Path) -> dict[str, list[tuple[tuple[int, int, int, int], str]]]:
    truth: dict[str, list] = defaultdict(list)
    with path.open() as fh:
        for row in csv.DictReader(fh):
            truth[row["image"]].append(((int(row["x1"]), int(row["y1"]), int(row["x2"]), int(row["y2"])), row["label"]))
    return truth


def failing_detector(real, shape: tuple[int, int], message: str):
    """Fault injection: ``real``, made to raise ``RuntimeError(message)`` on (H, W) ``shape`` frames."""

    class Failing:
        name, crop_scale = real.name, real.crop_scale

        def detect_batch(self, images):
            if any(img.shape[:2] == shape for img in images):
                raise RuntimeError(message)
            return real.detect_batch(images)

    return Failing()


def copy_inbox(src: Path, dst: Path, copies: int = 1) -> Path:
    """A private copy of an inbox; ``copies`` > 1 repeats each frame one second later."""
    for frame in discover_frames(src):
        for k in range(copies):
            name = f"{frame.captured_at.replace(second=(frame.captured_at.second + k) % 60):%Y%m%dT%H%M%S}_{k}.jpg"
            target = dst / frame.camera_id / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(frame.path, target)
    return dst


@pytest.fixture
def champion_url(migrated_db_url, tiny_checkpoints) -> str:
    use_champion(migrated_db_url, tiny_checkpoints["mobilenet_v2"])
    return migrated_db_url


def test_scoring_finds_the_demo_faces_and_labels(champion_url, tiny_demo, tiny_checkpoints):
    settings = score_settings(tiny_demo.settings, score_batch_frames=4)
    engine = database.make_engine(champion_url)
    summary = score(engine, settings, tiny_demo.inbox)
    truth = read_truth(tiny_demo.ground_truth)
    with engine.connect() as conn:
        images = {r.path: r for r in conn.execute(sa.select(schema.Image))}
        faces = defaultdict(list)
        for r in conn.execute(sa.select(schema.Image.path, schema.Face).join(schema.Image, schema.Face.image_id == schema.Image.id)
                              .order_by(schema.Face.face_index)):
            faces[r.path].append(r)
    engine.dispose()

    frames = discover_frames(tiny_demo.inbox)
    assert sorted(images) == sorted(f.rel_path for f in frames)
    assert summary.n_frames == len(frames) and summary.n_unreadable == 0
    assert summary.n_faces == sum(len(v) for v in faces.values()) == sum(summary.per_class.values())
    n_truth = sum(len(v) for v in truth.values())
    classifier = load_classifier(tiny_checkpoints["mobilenet_v2"])
    scale = create_detector(TEST_DETECTOR, settings).crop_scale
    matched = 0
    for path, image in images.items():
        assert (image.width, image.height) == (640, 480)
        assert image.status == ("ok" if faces[path] else "no_face") and image.n_faces == len(faces[path])
        gt = truth.get(path, [])
        found = faces[path]
        rgb = read_rgb(tiny_demo.inbox / path)
        for f in found:
            probs = [f.p_with_mask, f.p_without_mask, f.p_partial_mask]
            assert f.label == CLASSES[probs.index(max(probs))] and f.confidence == max(probs)
            # Each face row holds its own crop's probabilities, although a whole batch of
            # frames went through the classifier in one pass.
            alone = classifier.predict_proba([crop_face(rgb, (f.x1, f.y1, f.x2, f.y2), scale)])[0]
            assert probs == pytest.approx(alone.tolist(), abs=1e-4)
        matched += len(match_boxes([b for b, _ in gt], [(f.x1, f.y1, f.x2, f.y2) for f in found]))
    # The tiny 1-epoch checkpoints classify near chance, so labels are checked for
    # consistency above, not accuracy; the detector's boxes are checked against the truth.
    assert matched / n_truth >= 0.7, f"recall {matched}/{n_truth}"
    assert matched / max(1, summary.n_faces) >= 0.8, "precision"


@pytest.mark.parametrize("name", ["mtcnn", "res10", "ultralight"])
def test_batches_in_parallel_equal_batches_one_at_a_time(name, tiny_demo, tiny_checkpoints):
    import torch

    detector = create_detector(name, replace(tiny_demo.settings, detector=name))
    classifier = load_classifier(tiny_checkpoints["cnn"])
    images = [read_rgb(f.path) for f in discover_frames(tiny_demo.inbox)]
    batches = [images[i:i + 3] for i in range(0, len(images), 3)]
    threads = torch.get_num_threads()
    parallel = list(classify_batches(batches, detector, classifier, workers=3))
    assert torch.get_num_threads() == threads  # the workers' single-threading does not leak
    alone = [classify_faces(batch, detector, classifier) for batch in batches]
    assert [[[det.box for det, _ in faces] for faces in b] for b in parallel] == \
        [[[det.box for det, _ in faces] for faces in b] for b in alone]
    for got, want in zip(parallel, alone):
        for got_faces, want_faces in zip(got, want):
            for (_, got_probs), (_, want_probs) in zip(got_faces, want_faces):
                assert got_probs.tolist() == pytest.approx(want_probs.tolist(), abs=1e-4)


def test_rescoring_adds_nothing_and_records_each_run(champion_url, tiny_demo):
    settings = score_settings(tiny_demo.settings, score_batch_frames=3)
    engine = database.make_engine(champion_url)
    first = score(engine, settings, tiny_demo.inbox)
    before = table_rows(champion_url)
    second = score(engine, settings, tiny_demo.inbox)
    with engine.connect() as conn:
        runs = conn.execute(sa.select(schema.ScoringRun).order_by(schema.ScoringRun.id)).all()
    engine.dispose()

    assert table_rows(champion_url) == before
    assert counts(champion_url) == (first.n_frames, first.n_faces)
    assert (second.n_frames, second.n_faces, second.n_skipped) == (0, 0, first.n_frames)
    assert [r.status for r in runs] == ["succeeded", "succeeded"]
    assert (runs[0].n_frames, runs[0].n_faces, runs[0].n_no_face, runs[0].n_skipped) == (
        first.n_frames, first.n_faces, first.n_no_face, 0)
    assert (runs[1].n_frames, runs[1].n_skipped) == (0, first.n_frames)
    assert runs[0].finished_at >= runs[0].started_at and runs[0].shard_count == 1


def test_only_frames_in_the_interval_are_scored(champion_url, tiny_demo):
    frames = discover_frames(tiny_demo.inbox)
    since, until = frames[2].captured_at, frames[-2].captured_at
    engine = database.make_engine(champion_url)
    summary = score(engine, score_settings(tiny_demo.settings), tiny_demo.inbox, since, until)
    with engine.connect() as conn:
        stored = conn.execute(sa.select(schema.Image.path, schema.Image.captured_at)).all()
        run = conn.execute(sa.select(schema.ScoringRun)).one()
    engine.dispose()
    expected = {f.rel_path for f in frames if since <= f.captured_at < until}
    assert {p for p, _ in stored} == expected and summary.n_frames == len(expected) == len(frames) - 4
    assert all(since <= timeutil.to_naive_utc(t) < until for _, t in stored)
    assert (run.interval_start, run.interval_end) == (timeutil.to_utc(since), timeutil.to_utc(until))


def test_model_version_choice_and_errors(migrated_db_url, tiny_demo, tiny_checkpoints):
    settings = score_settings(tiny_demo.settings)
    engine = database.make_engine(migrated_db_url)
    with pytest.raises(MaskjobError, match="no champion"):
        score(engine, settings, tiny_demo.inbox)
    cnn = register(engine, tiny_checkpoints["cnn"]).version
    with pytest.raises(MaskjobError, match="no model version 'nope'.*" + cnn):
        score(engine, settings, tiny_demo.inbox, model_version="nope")
    summary = score(engine, settings, tiny_demo.inbox, datetime(2026, 11, 24, 7), datetime(2026, 11, 24, 12),
                    model_version=cnn)
    with engine.connect() as conn:
        versions = conn.execute(sa.select(schema.ModelVersion.version).join(
            schema.Image, schema.Image.model_version_id == schema.ModelVersion.id).distinct()).scalars().all()
    engine.dispose()
    assert summary.model_version == cnn and versions == [cnn]


def test_changed_checkpoint_is_refused(migrated_db_url, tiny_demo, tiny_checkpoints, tmp_path):
    ckpt = tmp_path / "cnn.pt"
    shutil.copyfile(tiny_checkpoints["cnn"], ckpt)
    use_champion(migrated_db_url, ckpt)
    with ckpt.open("ab") as fh:
        fh.write(b"\0")
    engine = database.make_engine(migrated_db_url)
    with pytest.raises(MaskjobError, match="changed since it was registered"):
        score(engine, score_settings(tiny_demo.settings), tiny_demo.inbox)
    engine.dispose()


def test_score_command(tmp_path, tiny_demo, tiny_checkpoints, monkeypatch, capsys):
    from maskjob.cli import main

    url = f"sqlite:///{tmp_path / 'cli.db'}"
    use_champion(url, tiny_checkpoints["cnn"])
    monkeypatch.setenv("MASKJOB_DATABASE_URL", url)
    monkeypatch.setenv("MASKJOB_DETECTOR", TEST_DETECTOR)
    monkeypatch.setenv("MASKJOB_ASSETS_DIR", str(tiny_demo.settings.assets_dir))
    argv = ["--data-dir", str(tmp_path / "data"), "score", "--inbox", str(tiny_demo.inbox),
            "--since", "2026-11-24T07:00:00Z", "--until", "2026-11-24T19:00:00Z"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    n_frames = len(discover_frames(tiny_demo.inbox))
    assert f"scored {n_frames} frames" in out and "frames/s" in out and "without_mask" in out
    assert counts(url)[0] == n_frames
    assert main([*argv[:-4], "--since", "2026-11-25", "--until", "2026-11-24"]) == 2
    assert "not before --until" in capsys.readouterr().err


def test_a_new_run_closes_interrupted_runs_of_its_shard_and_interval_only(champion_url, tiny_demo):
    """Runs left ``running`` by a dead process: heartbeat older than their lease (see
    test_score_crash for a real kill -9, test_score_lease for live runs)."""
    engine = database.make_engine(champion_url)
    since, until = datetime(2026, 11, 24), datetime(2026, 11, 25)
    long_ago = timeutil.utcnow() - timedelta(hours=2)
    with engine.begin() as conn:
        version_id = conn.scalar(sa.select(schema.ModelVersion.id))
        base = {"model_version_id": version_id, "started_at": long_ago, "shard_count": 2,
                "heartbeat_at": None, "lease_s": None, "pid": None, "hostname": None}
        conn.execute(sa.insert(schema.ScoringRun), [
            dict(base, shard_index=0, interval_start=since, interval_end=until, status="running"),
            dict(base, shard_index=1, interval_start=since, interval_end=until, status="running"),
            dict(base, shard_index=0, interval_start=None, interval_end=until, status="running"),
            dict(base, shard_index=0, interval_start=since, interval_end=until, status="succeeded"),
            # From a process with a heartbeat and pid: dead once its own 30 s lease ran out.
            dict(base, shard_index=0, interval_start=since, interval_end=until, status="running",
                 heartbeat_at=timeutil.utcnow() - timedelta(seconds=31), lease_s=30.0, pid=4242, hostname="worker-7"),
        ])
    summary = score(engine, score_settings(tiny_demo.settings), tiny_demo.inbox, since, until, shard=(0, 2))
    with engine.connect() as conn:
        runs = conn.execute(sa.select(schema.ScoringRun).order_by(schema.ScoringRun.id)).all()
    engine.dispose()
    assert [r.status for r in runs] == ["failed", "running", "running", "succeeded", "failed", "succeeded"]
    assert runs[0].error.startswith(f"interrupted: still running when run {summary.run_id} started")
    assert "pid 4242 on host worker-7" in runs[4].error and "lease 30 s" in runs[4].error
    assert runs[5].id == summary.run_id and runs[3].error is None
    assert runs[5].pid == os.getpid() and runs[5].hostname == socket.gethostname() and runs[5].lease_s == 60
    assert runs[5].heartbeat_at >= runs[5].started_at - timedelta(seconds=5)
