"""Killing ``maskjob score`` at any moment loses and duplicates nothing; shards running at
once against PostgreSQL write exactly the rows of one unsharded run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import sqlalchemy as sa

from maskjob.scoring.frames import discover_frames
from maskjob.scoring.score import score
from maskjob.storage import database, schema
from tests.scoring.test_score import TEST_DETECTOR, copy_inbox, counts, score_settings, table_rows, use_champion

REPO = Path(__file__).resolve().parents[2]


def score_process(url: str, inbox: Path, data_dir: Path, *extra: str) -> subprocess.Popen[str]:
    env = {**os.environ, "MASKJOB_DATABASE_URL": url, "MASKJOB_DETECTOR": TEST_DETECTOR,
           "MASKJOB_ASSETS_DIR": str(REPO / "data" / "assets"), "MASKJOB_SCORE_BATCH_FRAMES": "2"}
    cmd = [sys.executable, "-m", "maskjob", "--data-dir", str(data_dir), "score", "--inbox", str(inbox), *extra]
    return subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def reference_rows(tmp_path: Path, settings, inbox: Path, checkpoint: Path) -> dict[str, set[tuple]]:
    """The rows of one clean, unsharded, uninterrupted run."""
    url = f"sqlite:///{tmp_path / 'reference.db'}"
    use_champion(url, checkpoint)
    engine = database.make_engine(url)
    score(engine, score_settings(settings), inbox)
    engine.dispose()
    return table_rows(url)


def assert_no_partial_images(url: str) -> None:
    engine = database.make_engine(url)
    with engine.connect() as conn:
        per_image = conn.execute(
            sa.select(schema.Image.n_faces, sa.func.count(schema.Face.id))
            .outerjoin(schema.Face, schema.Face.image_id == schema.Image.id).group_by(schema.Image.id)).all()
    engine.dispose()
    assert all(n_faces == n_rows for n_faces, n_rows in per_image)


def test_kill_mid_run_then_rerun_equals_a_clean_run(db_url, tiny_demo, tiny_checkpoints, tmp_path):
    inbox = copy_inbox(tiny_demo.inbox, tmp_path / "inbox", copies=4)
    n_frames = len(discover_frames(inbox))
    use_champion(db_url, tiny_checkpoints["cnn"])

    proc = score_process(db_url, inbox, tmp_path / "data")
    deadline = time.monotonic() + 240
    while counts(db_url)[0] == 0:
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.monotonic() < deadline, "no batch was committed in time"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    done_at_kill = counts(db_url)[0]
    assert 0 < done_at_kill < n_frames, "the run finished before it was killed; use more frames"
    assert_no_partial_images(db_url)

    rerun = score_process(db_url, inbox, tmp_path / "data")
    out, err = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, err[-3000:]
    assert f"scored {n_frames - done_at_kill} frames" in out and f"{done_at_kill} already scored" in out

    expected = reference_rows(tmp_path, tiny_demo.settings, inbox, tiny_checkpoints["cnn"])
    assert table_rows(db_url) == expected
    assert counts(db_url) == (len(expected["images"]), len(expected["faces"]))
    engine = database.make_engine(db_url)
    with engine.connect() as conn:
        runs = conn.execute(sa.select(schema.ScoringRun).order_by(schema.ScoringRun.id)).all()
    engine.dispose()
    # The killed run could not finish; the rerun of the same shard and interval closed it.
    assert [r.status for r in runs] == ["failed", "succeeded"]
    assert runs[0].error.startswith(f"interrupted: still running when run {runs[1].id} started")
    assert runs[0].finished_at is None
    assert runs[0].n_frames == done_at_kill and runs[1].n_frames + done_at_kill == n_frames


def test_two_shards_in_parallel_on_postgres_equal_one_run(pg_url, tiny_demo, tiny_checkpoints, tmp_path):
    inbox = copy_inbox(tiny_demo.inbox, tmp_path / "inbox", copies=2)
    use_champion(pg_url, tiny_checkpoints["cnn"])
    procs = [score_process(pg_url, inbox, tmp_path / "data", "--shard", f"{i}/2") for i in range(2)]
    for proc in procs:
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-3000:]

    expected = reference_rows(tmp_path, tiny_demo.settings, inbox, tiny_checkpoints["cnn"])
    assert table_rows(pg_url) == expected
    assert counts(pg_url) == (len(expected["images"]), len(expected["faces"]))
    engine = database.make_engine(pg_url)
    with engine.connect() as conn:
        runs = conn.execute(sa.select(schema.ScoringRun).order_by(schema.ScoringRun.shard_index)).all()
    engine.dispose()
    assert [(r.shard_index, r.shard_count, r.status) for r in runs] == [(0, 2, "succeeded"), (1, 2, "succeeded")]
    assert runs[0].n_frames > 0 and runs[1].n_frames > 0
    assert runs[0].n_frames + runs[1].n_frames == len(expected["images"])
