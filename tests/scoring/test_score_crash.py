"""Killing ``maskjob score`` at any moment loses and duplicates nothing; SIGTERM/SIGINT close
the run as interrupted after the batch in flight; a failing write (disk full) leaves a failed
run whose counts equal its committed rows; shards running at once against PostgreSQL write
exactly the rows of one unsharded run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import sqlalchemy as sa

import maskjob.scoring.score as score_module
from maskjob.scoring.frames import discover_frames
from maskjob.scoring.score import ScoringInterrupted, score
from maskjob.storage import database, schema
from tests.scoring.test_score import TEST_DETECTOR, copy_inbox, counts, score_settings, table_rows, use_champion

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def champion_url(migrated_db_url, tiny_checkpoints) -> str:
    """A migrated database (SQLite and PostgreSQL) whose champion is the tiny ``cnn``."""
    use_champion(migrated_db_url, tiny_checkpoints["cnn"])
    return migrated_db_url


# `maskjob ...` with every batch held back: an image_rows that first sleeps (outside the
# batch's transaction), so that a run lasts long enough for other processes to meet it.
SLOW_MAIN = """
import sys, time
import maskjob.scoring.score as score
real = score.image_rows
def slow(*args):
    time.sleep(SLOW)
    return real(*args)
score.image_rows = slow
from maskjob.cli import main
sys.exit(main(sys.argv[1:]))
"""


def score_process(url: str, inbox: Path, data_dir: Path, *extra: str, slow_batch_s: float = 0.0,
                  **env_vars: str) -> subprocess.Popen[str]:
    """``maskjob score`` in a new process; ``env_vars`` are more variables, e.g.
    ``MASKJOB_SCORE_LEASE_S="2"``; ``slow_batch_s`` holds each batch back that long."""
    env = {**os.environ, "MASKJOB_DATABASE_URL": url, "MASKJOB_DETECTOR": TEST_DETECTOR,
           "MASKJOB_ASSETS_DIR": str(REPO / "data" / "assets"), "MASKJOB_SCORE_BATCH_FRAMES": "2", **env_vars}
    args = ["--data-dir", str(data_dir), "score", "--inbox", str(inbox), *extra]
    cmd = [sys.executable, "-c", SLOW_MAIN.replace("SLOW", repr(slow_batch_s)), *args] if slow_batch_s \
        else [sys.executable, "-m", "maskjob", *args]
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


def wait_for_rows(url: str, proc: subprocess.Popen[str], n: int = 1) -> None:
    """Until ``proc`` has committed ``n`` image rows (it must still be running)."""
    deadline = time.monotonic() + 240
    while counts(url)[0] < n:
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.monotonic() < deadline, "no batch was committed in time"
        time.sleep(0.05)


def run_rows(url: str) -> list:
    engine = database.make_engine(url)
    try:
        with engine.connect() as conn:
            return conn.execute(sa.select(schema.ScoringRun).order_by(schema.ScoringRun.id)).all()
    finally:
        engine.dispose()


def committed_counts(url: str, run_id: int) -> tuple[int, int, int, int]:
    """``(frames, faces, no_face, unreadable)`` of the image rows run ``run_id`` committed."""
    engine = database.make_engine(url)
    try:
        with engine.connect() as conn:
            img = schema.Image
            row = conn.execute(sa.select(
                sa.func.count(), sa.func.coalesce(sa.func.sum(img.n_faces), 0),
                sa.func.count().filter(img.status == "no_face"), sa.func.count().filter(img.status == "unreadable"),
            ).where(img.scoring_run_id == run_id)).one()
            faces = conn.scalar(sa.select(sa.func.count()).select_from(schema.Face).join(img).where(
                img.scoring_run_id == run_id))
        assert faces == row[1]
        return tuple(row)
    finally:
        engine.dispose()


def assert_counts_match_rows(url: str, run) -> None:
    assert (run.n_frames, run.n_faces, run.n_no_face, run.n_unreadable) == committed_counts(url, run.id)


def test_kill_mid_run_then_rerun_equals_a_clean_run(db_url, tiny_demo, tiny_checkpoints, tmp_path):
    inbox = copy_inbox(tiny_demo.inbox, tmp_path / "inbox", copies=4)
    n_frames = len(discover_frames(inbox))
    use_champion(db_url, tiny_checkpoints["cnn"])

    # A short lease, so that the rerun may take over from the killed run seconds later.
    proc = score_process(db_url, inbox, tmp_path / "data", MASKJOB_SCORE_LEASE_S="2")
    wait_for_rows(db_url, proc)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    done_at_kill = counts(db_url)[0]
    assert 0 < done_at_kill < n_frames, "the run finished before it was killed; use more frames"
    assert_no_partial_images(db_url)

    rerun = score_process(db_url, inbox, tmp_path / "data", MASKJOB_SCORE_LEASE_WAIT_S="60")
    out, err = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, err[-3000:]
    assert f"scored {n_frames - done_at_kill} frames" in out and f"{done_at_kill} already scored" in out

    expected = reference_rows(tmp_path, tiny_demo.settings, inbox, tiny_checkpoints["cnn"])
    assert table_rows(db_url) == expected
    assert counts(db_url) == (len(expected["images"]), len(expected["faces"]))
    runs = run_rows(db_url)
    # The killed run could not finish; the rerun of the same shard and interval closed it
    # once its lease had run out.
    assert [r.status for r in runs] == ["failed", "succeeded"]
    assert runs[0].error.startswith(f"interrupted: still running when run {runs[1].id} started")
    assert f"pid {proc.pid} on host" in runs[0].error and "lease 2 s" in runs[0].error
    assert runs[0].finished_at is None
    assert runs[0].n_frames == done_at_kill and runs[1].n_frames + done_at_kill == n_frames
    for run in runs:
        assert_counts_match_rows(db_url, run)


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


@pytest.mark.parametrize("sig, returncode", [(signal.SIGTERM, -signal.SIGTERM), (signal.SIGINT, 130)],
                         ids=["SIGTERM", "SIGINT"])
def test_a_signal_closes_the_run_as_interrupted_after_its_batch(db_url, sig, returncode, tiny_demo, tiny_checkpoints,
                                                                tmp_path):
    inbox = copy_inbox(tiny_demo.inbox, tmp_path / "inbox", copies=4)
    n_frames = len(discover_frames(inbox))
    use_champion(db_url, tiny_checkpoints["cnn"])

    proc = score_process(db_url, inbox, tmp_path / "data")
    wait_for_rows(db_url, proc)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=120)
    # SIGTERM: the default action, once the run is closed; SIGINT: the CLI's KeyboardInterrupt exit.
    assert proc.returncode == returncode, err[-3000:]
    [run] = run_rows(db_url)
    assert (run.status, run.error) == ("failed", f"interrupted: {sig.name}")
    assert run.finished_at is not None and 0 < run.n_frames < n_frames
    assert_counts_match_rows(db_url, run)
    assert counts(db_url)[0] == run.n_frames
    assert_no_partial_images(db_url)

    if sig == signal.SIGTERM:  # nothing else is left behind: a rerun right away takes over and completes
        rerun = score_process(db_url, inbox, tmp_path / "data")
        out, err = rerun.communicate(timeout=300)
        assert rerun.returncode == 0, err[-3000:]
        assert f"scored {n_frames - run.n_frames} frames" in out
        assert table_rows(db_url) == reference_rows(tmp_path, tiny_demo.settings, inbox, tiny_checkpoints["cnn"])
        assert [r.status for r in run_rows(db_url)] == ["failed", "succeeded"]


def test_disk_full_leaves_a_failed_run_with_its_committed_counts(champion_url, tiny_demo, monkeypatch):
    settings = score_settings(tiny_demo.settings, score_batch_frames=3)
    real = score_module.insert_scored_images
    calls = []

    def second_batch_fails(conn, rows):
        calls.append(len(rows))
        stored = real(conn, rows)  # written in the transaction, then the commit never happens
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        return stored

    monkeypatch.setattr(score_module, "insert_scored_images", second_batch_fails)
    engine = database.make_engine(champion_url)
    with pytest.raises(OSError, match="No space left on device"):
        score(engine, settings, tiny_demo.inbox)
    engine.dispose()
    [run] = run_rows(champion_url)
    assert run.status == "failed" and run.error == "OSError: [Errno 28] No space left on device"
    assert run.n_frames == calls[0] == counts(champion_url)[0] == 3  # the first batch only
    assert_counts_match_rows(champion_url, run)

    monkeypatch.setattr(score_module, "insert_scored_images", real)
    engine = database.make_engine(champion_url)
    rerun = score(engine, settings, tiny_demo.inbox)
    engine.dispose()
    n_frames = len(discover_frames(tiny_demo.inbox))
    assert (rerun.n_frames, rerun.n_skipped) == (n_frames - 3, 3) and counts(champion_url)[0] == n_frames
    assert_counts_match_rows(champion_url, run_rows(champion_url)[1])


def test_in_process_signals_wait_for_the_batch_and_reach_the_previous_handler(champion_url, tiny_demo, monkeypatch):
    """In the main thread: the signal is held until the batch commits, the run is closed, then
    the handler that was installed before runs (and is back in place)."""
    settings = score_settings(tiny_demo.settings, score_batch_frames=2)
    real = score_module.insert_scored_images
    seen: list[tuple[int, int]] = []

    def previous(signum, frame):
        seen.append((signum, counts(champion_url)[0]))

    def signalling(conn, rows):
        stored = real(conn, rows)
        os.kill(os.getpid(), signal.SIGTERM)  # arrives while the batch's transaction is open
        return stored

    sigint = signal.getsignal(signal.SIGINT)
    old = signal.signal(signal.SIGTERM, previous)
    try:
        monkeypatch.setattr(score_module, "insert_scored_images", signalling)
        engine = database.make_engine(champion_url)
        with pytest.raises(ScoringInterrupted, match="interrupted by SIGTERM"):
            score(engine, settings, tiny_demo.inbox)
        engine.dispose()
        assert signal.getsignal(signal.SIGTERM) is previous
        assert signal.getsignal(signal.SIGINT) is sigint
    finally:
        signal.signal(signal.SIGTERM, old)
    [run] = run_rows(champion_url)
    assert (run.status, run.error, run.n_frames) == ("failed", "interrupted: SIGTERM", 2)
    assert seen == [(signal.SIGTERM, 2)]  # after the first batch committed and the run was closed
    assert_counts_match_rows(champion_url, run)


def test_a_second_signal_stops_at_once_and_rolls_the_batch_back(champion_url, tiny_demo, monkeypatch):
    settings = score_settings(tiny_demo.settings, score_batch_frames=2)
    real = score_module.insert_scored_images

    def signalling_twice(conn, rows):
        stored = real(conn, rows)
        os.kill(os.getpid(), signal.SIGINT)
        os.kill(os.getpid(), signal.SIGINT)  # the handler raises here, inside the transaction
        return stored

    monkeypatch.setattr(score_module, "insert_scored_images", signalling_twice)
    engine = database.make_engine(champion_url)
    with pytest.raises(KeyboardInterrupt):  # the previous SIGINT handler: Python's default
        score(engine, settings, tiny_demo.inbox)
    engine.dispose()
    [run] = run_rows(champion_url)
    assert (run.status, run.error, run.n_frames) == ("failed", "interrupted: SIGINT", 0)
    assert counts(champion_url) == (0, 0)


def test_score_in_a_thread_leaves_signal_handlers_alone(champion_url, tiny_demo):
    import threading

    before = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    result: list = []
    engine = database.make_engine(champion_url)
    thread = threading.Thread(target=lambda: result.append(score(engine, score_settings(tiny_demo.settings),
                                                                 tiny_demo.inbox)))
    thread.start()
    thread.join()
    engine.dispose()
    assert result and result[0].n_frames == len(discover_frames(tiny_demo.inbox))
    assert {sig: signal.getsignal(sig) for sig in before} == before
