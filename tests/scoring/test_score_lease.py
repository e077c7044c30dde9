"""Scoring runs hold a lease on (model, shard, interval): a second process on the same key
waits or exits with a clear error, a live run is never marked interrupted, and taking the
lease is race-free, on SQLite and PostgreSQL."""

from __future__ import annotations

import socket
import threading
import time
from datetime import timedelta

import pytest
import sqlalchemy as sa

import maskjob.scoring.score as score_module
from maskjob import timeutil
from maskjob.config import load_settings
from maskjob.errors import MaskjobError
from maskjob.scoring import lease
from maskjob.scoring.frames import discover_frames
from maskjob.scoring.score import ShardBusy, score
from maskjob.scoring.signals import Stop
from maskjob.storage import database, schema
from tests.scoring.test_score import copy_inbox, counts, score_settings, table_rows, use_champion
from tests.scoring.test_score_crash import (
    assert_counts_match_rows,
    reference_rows,
    run_rows,
    score_process,
    wait_for_rows,
)


@pytest.fixture
def champion_url(migrated_db_url, tiny_checkpoints) -> str:
    """A migrated database (SQLite and PostgreSQL) whose champion is the tiny ``cnn``."""
    use_champion(migrated_db_url, tiny_checkpoints["cnn"])
    return migrated_db_url


def test_a_second_process_on_a_live_shard_exits_or_waits_and_the_live_run_is_untouched(
        db_url, tiny_demo, tiny_checkpoints, tmp_path):
    inbox = copy_inbox(tiny_demo.inbox, tmp_path / "inbox", copies=4)
    n_frames = len(discover_frames(inbox))
    use_champion(db_url, tiny_checkpoints["cnn"])

    # The first run's lease (6 s) is much shorter than the run: only its heartbeat keeps it.
    first = score_process(db_url, inbox, tmp_path / "data", slow_batch_s=1.5, MASKJOB_SCORE_LEASE_S="6")
    wait_for_rows(db_url, first)
    refused = score_process(db_url, inbox, tmp_path / "data")
    waiting = score_process(db_url, inbox, tmp_path / "data", MASKJOB_SCORE_LEASE_WAIT_S="300")
    out, err = refused.communicate(timeout=300)
    assert refused.returncode == 2, err[-3000:]
    [run] = run_rows(db_url)
    assert f"is being scored by run {run.id} (pid {first.pid} on host {socket.gethostname()}, heartbeat " in err
    assert "shard 0/1 of [-inf, +inf)" in err and " s ago)" in err
    assert run.status == "running" and waiting.poll() is None  # still going; the other one waits
    beat = run.heartbeat_at
    time.sleep(3)
    assert run_rows(db_url)[0].heartbeat_at > beat  # refreshed every 1.5 s, batch or not

    out, err = first.communicate(timeout=300)
    assert first.returncode == 0, err[-3000:]
    out, err = waiting.communicate(timeout=120)
    assert waiting.returncode == 0, err[-3000:]
    assert "scored 0 frames" in out and f"{n_frames} already scored" in out

    runs = run_rows(db_url)
    assert [(r.status, r.error, r.n_frames) for r in runs] == [("succeeded", None, n_frames), ("succeeded", None, 0)]
    assert runs[1].n_skipped == n_frames and runs[1].started_at >= runs[0].finished_at - timedelta(seconds=1)
    assert_counts_match_rows(db_url, runs[0])
    assert table_rows(db_url) == reference_rows(tmp_path, tiny_demo.settings, inbox, tiny_checkpoints["cnn"])


def _key(engine, shard):
    with engine.connect() as conn:
        model_id, version = conn.execute(sa.select(schema.ModelVersion.id, schema.ModelVersion.version)).one()
    return lease.RunKey(model_id, version, shard, None, None)


def test_taking_the_lease_is_race_free(champion_url):
    """Eight threads, released at once, race for each of three keys: exactly one wins each."""
    engine = database.make_engine(champion_url)
    try:
        for shard in ((0, 3), (1, 3), (2, 3)):
            key = _key(engine, shard)
            barrier = threading.Barrier(8)
            won: list[int] = []
            busy: list[str] = []
            errors: list[BaseException] = []

            def race() -> None:
                try:
                    barrier.wait()
                    won.append(lease.take_lease(engine, key, 30.0, 0.0, Stop()))
                except ShardBusy as exc:
                    busy.append(str(exc))
                except BaseException as exc:  # noqa: BLE001 - re-raised in the main thread
                    errors.append(exc)

            threads = [threading.Thread(target=race) for _ in range(8)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            assert errors == [] and len(won) == 1 and len(busy) == 7
            assert all(f"is being scored by run {won[0]} " in m for m in busy)
        with engine.connect() as conn:
            running = conn.execute(sa.select(schema.ScoringRun.shard_index).where(
                schema.ScoringRun.status == "running")).scalars().all()
        assert sorted(running) == [0, 1, 2]
    finally:
        engine.dispose()


def test_a_waiting_run_takes_over_once_the_lease_runs_out(champion_url, tiny_demo):
    """A run whose process stopped heartbeating (hand-made row, lease 2 s) is waited for, then
    closed; one with a fresh heartbeat and a long lease makes the waiter give up with the error."""
    engine = database.make_engine(champion_url)
    key = _key(engine, (0, 1))
    now = timeutil.utcnow()
    with engine.begin() as conn:
        dying = conn.execute(sa.insert(schema.ScoringRun).returning(schema.ScoringRun.id), {
            "model_version_id": key.model_id, "started_at": now, "heartbeat_at": now, "lease_s": 2.0,
            "pid": 999999, "hostname": "gone", "status": "running", "shard_index": 0, "shard_count": 1}).scalar_one()
    started = time.monotonic()
    summary = score(engine, score_settings(tiny_demo.settings), tiny_demo.inbox, wait_s=30)
    assert 1.0 <= time.monotonic() - started  # it waited for the lease to run out
    runs = run_rows(champion_url)
    assert runs[0].id == dying and runs[0].status == "failed"
    assert runs[0].error.startswith(f"interrupted: still running when run {summary.run_id} started")
    assert "pid 999999 on host gone" in runs[0].error and runs[1].status == "succeeded"

    with engine.begin() as conn:  # a live holder with a long lease: waiting 1 s is not enough
        conn.execute(sa.insert(schema.ScoringRun), {
            "model_version_id": key.model_id, "started_at": now, "heartbeat_at": timeutil.utcnow(),
            "lease_s": 600.0, "pid": 4321, "hostname": "busy-host", "status": "running", "shard_index": 0,
            "shard_count": 1})
    with pytest.raises(ShardBusy, match=r"pid 4321 on host busy-host, heartbeat \d+\.\d s ago; waited 1 s\)") as err:
        score(engine, score_settings(tiny_demo.settings), tiny_demo.inbox, wait_s=1)
    assert isinstance(err.value, MaskjobError)
    engine.dispose()
    assert [r.status for r in run_rows(champion_url)] == ["failed", "succeeded", "running"]


def test_a_run_that_lost_its_lease_stops_without_overwriting_its_row(champion_url, tiny_demo, monkeypatch):
    """If another run closed this one (say its heartbeat stalled past the lease), its next batch
    rolls back and it stops: two runs never write the same shard at once."""
    settings = score_settings(tiny_demo.settings, score_batch_frames=2)
    real = score_module.image_rows
    engine = database.make_engine(champion_url)
    batches: list[int] = []

    def taken_over_after_first_batch(*args):
        batches.append(1)
        if len(batches) == 2:  # the first batch has committed: another run closes this one
            with engine.begin() as other:
                other.execute(sa.update(schema.ScoringRun).values(status="failed", error="interrupted: taken over"))
        return real(*args)

    monkeypatch.setattr(score_module, "image_rows", taken_over_after_first_batch)
    with pytest.raises(score_module.LeaseLost, match="lost its lease"):
        score(engine, settings, tiny_demo.inbox)
    engine.dispose()
    [run] = run_rows(champion_url)
    assert (run.status, run.error, run.n_frames) == ("failed", "interrupted: taken over", 2)
    assert counts(champion_url)[0] == 2  # the second batch was rolled back


def test_lease_settings_are_checked(champion_url, tiny_demo, monkeypatch):
    engine = database.make_engine(champion_url)
    monkeypatch.setenv("MASKJOB_SCORE_LEASE_S", "soon")
    with pytest.raises(MaskjobError, match=r"bad setting score_lease_s from \$MASKJOB_SCORE_LEASE_S"):
        load_settings()
    monkeypatch.delenv("MASKJOB_SCORE_LEASE_S")
    with pytest.raises(MaskjobError, match="bad score_lease_wait_s -1"):
        score(engine, score_settings(tiny_demo.settings), tiny_demo.inbox, lease_s=5, wait_s=-1)
    engine.dispose()
    assert run_rows(champion_url) == []
