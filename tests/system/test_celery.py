"""The DAG on CeleryExecutor, end to end on this machine, as docs/CELERY.md describes it.

Redis broker, PostgreSQL for Airflow's metadata and for maskjob's predictions (named by the
Airflow connection ``maskjob_db``, its password only in ``AIRFLOW_CONN_MASKJOB_DB``), an API
server, a scheduler, a DAG processor and two Celery workers, each in its own venv with
maskjob from the wheel (``tests/fixtures/celery_site.py``).

Why both workers run shards, without sleeps: each worker has ``--concurrency 1`` and Airflow's
Celery defaults (``task_acks_late``, ``worker_prefetch_multiplier = 1``) let a busy worker hold
only the message it is running. The run is triggered only once both workers answer a Celery
ping, and the scheduler queues the four ``score_shard`` tasks together, so while one worker
runs a shard the next is delivered to the other.

Training is skipped on purpose (a champion trained on the same dataset is registered first):
the test is about distribution, and the in-process DAG tests cover training.
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from maskjob.scoring.frames import discover_frames, shard_frames
from tests.fixtures.celery_site import CONN_ID, WORKERS, CelerySite
from tests.fixtures.demo import tiny_settings

pytestmark = [pytest.mark.slow, pytest.mark.postgres, pytest.mark.timeout(600)]

DAG_ID = "mask_compliance"
SHARDS = 4
# The run's data interval: the 24 hours before its logical date, the demo's capture day (naive UTC).
DAY_START, DAY_END = datetime(2026, 11, 24), datetime(2026, 11, 25)
READY_TIMEOUT_S = 180
RUN_TIMEOUT_S = 360

IMAGE_ROWS = sa.text(
    "SELECT i.path, i.content_sha256, i.camera_id, i.captured_at, i.width, i.height, i.status, i.reason, "
    "i.n_faces, mv.version FROM images i JOIN model_versions mv ON mv.id = i.model_version_id ORDER BY i.path")
FACE_ROWS = sa.text(
    "SELECT i.path, f.face_index, f.x1, f.y1, f.x2, f.y2, f.label, mv.version, f.detector_score, f.p_with_mask, "
    "f.p_without_mask, f.p_partial_mask, f.confidence FROM faces f JOIN images i ON i.id = f.image_id "
    "JOIN model_versions mv ON mv.id = f.model_version_id ORDER BY i.path, f.face_index")
N_EXACT_FACE_COLUMNS = 8  # the rest are floats: equal up to float32 rounding across batch shapes


def _champion(url: str, checkpoint: Path, settings: Any) -> str:
    """A migrated predictions database whose champion is ``checkpoint``; its version."""
    from maskjob.storage.database import database, upgrade
    from maskjob.storage.registry import promote, register

    upgrade(url)
    with database(url) as engine:
        register(engine, checkpoint)
        result = promote(engine, settings.dataset_root, settings)
    assert result.promoted is not None, result.decisions
    return result.promoted.version


def _single_process_rows(url: str, checkpoint: Path, settings: Any) -> tuple[list[tuple], list[tuple]]:
    """The same frames scored in this process, one shard, into the database at ``url``."""
    from maskjob.scoring.score import score
    from maskjob.storage.database import database

    version = _champion(url, checkpoint, settings)
    with database(url) as engine:
        summary = score(engine, settings, settings.inbox_dir, DAY_START, DAY_END, shard=(0, 1), model_version=version)
        assert summary.n_frames > 0
    return _rows(url)


def _rows(url: str) -> tuple[list[tuple], list[tuple]]:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            return [tuple(r) for r in conn.execute(IMAGE_ROWS)], [tuple(r) for r in conn.execute(FACE_ROWS)]
    finally:
        engine.dispose()


def _wait(what: str, site: CelerySite, probe: Any, timeout_s: float, interval_s: float = 1.0) -> Any:
    """``probe()`` until it returns something truthy; fail with every component's log otherwise."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for name, proc in site.processes.items():
            if proc.poll() is not None:
                pytest.fail(f"{name} exited with {proc.returncode} while waiting for {what}:\n{site.logs()}")
        result = probe()
        if result:
            return result
        time.sleep(interval_s)
    pytest.fail(f"timed out after {timeout_s:.0f} s waiting for {what}:\n{site.logs()}")


def _get(url: str, **kwargs: Any) -> httpx.Response | None:
    try:
        return httpx.get(url, timeout=5, **kwargs)
    except httpx.HTTPError:
        return None


def _workers_ready(site: CelerySite) -> set[str]:
    """The Celery node names answering a ping on the broker."""
    from celery import Celery

    app = Celery(broker=site.broker_url)
    try:
        replies = app.control.ping(timeout=1.0)
    finally:
        app.close()
    names = {name for reply in replies for name in reply}
    return names if names >= {f"celery@{host}" for host in WORKERS} else set()


def _logged_shards(site: CelerySite, host: str) -> set[int]:
    """The ``score_shard`` map indexes whose task log is in ``host``'s own log folder."""
    logs = site.work / host / "airflow" / "logs"
    pattern = f"dag_id={DAG_ID}/run_id=*/task_id=score_shard/map_index=*/attempt=*.log"
    return {int(path.parent.name.removeprefix("map_index=")) for path in logs.glob(pattern)}


def _token(site: CelerySite) -> str:
    passwords = site.work / "control" / "airflow" / "simple_auth_manager_passwords.json.generated"
    password = json.loads(passwords.read_text())["admin"]
    response = httpx.post(f"{site.api_url}/auth/token", json={"username": "admin", "password": password}, timeout=30)
    assert response.status_code == 201, response.text
    return response.json()["access_token"]


def _ready(site: CelerySite) -> httpx.Client:
    """An authenticated API client once the API, the DAG and both workers are up."""
    _wait("the API server", site, lambda: (r := _get(f"{site.api_url}/api/v2/monitor/health")) and r.status_code == 200,
          READY_TIMEOUT_S)
    client = httpx.Client(base_url=site.api_url, headers={"Authorization": f"Bearer {_token(site)}"}, timeout=30)
    _wait(f"the DAG {DAG_ID}", site, lambda: client.get(f"/api/v2/dags/{DAG_ID}").status_code == 200,
          READY_TIMEOUT_S, 2.0)
    _wait("both Celery workers", site, lambda: _workers_ready(site), READY_TIMEOUT_S)
    return client


def test_celery_workers_share_the_shards_and_match_a_single_process_run(
    celery_site: CelerySite, tiny_demo: Any, tiny_checkpoints: dict[str, Path], pg_url: str, tmp_path: Path
):
    started = time.monotonic()
    site = celery_site
    settings = tiny_settings(tmp_path / "single", dataset_root=tiny_demo.root, inbox_dir=tiny_demo.inbox,
                             min_macro_f1=0.0, min_class_recall=0.0)
    frames = discover_frames(tiny_demo.inbox, since=DAY_START, until=DAY_END)
    assert all(shard_frames(frames, index, SHARDS) for index in range(SHARDS)), "the tiny inbox leaves a shard empty"
    version = _champion(site.predictions_url, tiny_checkpoints["cnn"], settings)
    expected_images, expected_faces = _single_process_rows(pg_url, tiny_checkpoints["cnn"], settings)

    conf = {"data_dir": str(site.data_dir), "dataset_root": str(tiny_demo.root), "inbox_dir": str(tiny_demo.inbox),
            "shards": SHARDS, "database_conn_id": CONN_ID}
    client = _ready(site)
    try:
        assert client.patch(f"/api/v2/dags/{DAG_ID}", json={"is_paused": False}).status_code == 200
        response = client.post(f"/api/v2/dags/{DAG_ID}/dagRuns",
                               json={"logical_date": DAY_END.replace(tzinfo=UTC).isoformat(), "conf": conf,
                                     # explicit: the day's frames whatever the schedule's intervals are
                                     "data_interval_start": DAY_START.replace(tzinfo=UTC).isoformat(),
                                     "data_interval_end": DAY_END.replace(tzinfo=UTC).isoformat()})
        assert response.status_code == 200, response.text
        run_id = response.json()["dag_run_id"]
        run = _wait(f"run {run_id}", site, lambda: (r := client.get(f"/api/v2/dags/{DAG_ID}/dagRuns/{run_id}").json())
                    ["state"] in {"success", "failed"} and r, RUN_TIMEOUT_S, 3.0)
        tis = client.get(f"/api/v2/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances").json()["task_instances"]
    finally:
        client.close()
    states = {(ti["task_id"], ti["map_index"]): (ti["state"], ti["hostname"]) for ti in tis}
    assert run["state"] == "success", f"{states}\n{site.logs()}"

    shard_hosts = {index: host for (task, index), (_, host) in states.items() if task == "score_shard"}
    assert sorted(shard_hosts) == list(range(SHARDS)), states
    assert set(shard_hosts.values()) == set(WORKERS), f"shards by worker host: {shard_hosts}"
    for host in WORKERS:  # the records agree with where each worker wrote its task logs
        assert _logged_shards(site, host) == {i for i, h in shard_hosts.items() if h == host}, host
    assert states[("decide_training", -1)][0] == "success" and states[("train_cnn", -1)][0] == "skipped"
    assert all(host in WORKERS for state, host in states.values() if state == "success"), states

    images, faces = _rows(site.predictions_url)
    assert images == expected_images and len(images) == len(frames) and expected_faces
    assert {row[-1] for row in images} == {version}
    assert [row[:N_EXACT_FACE_COLUMNS] for row in faces] == [row[:N_EXACT_FACE_COLUMNS] for row in expected_faces]
    for got, want in zip(faces, expected_faces):
        assert got[N_EXACT_FACE_COLUMNS:] == pytest.approx(want[N_EXACT_FACE_COLUMNS:], abs=1e-5)

    left = site.stop()
    assert left == [], f"still running after stop: {left} (killed: {site.killed})"
    assert all(proc.poll() is not None for proc in site.processes.values())
    print(f"celery site test: {time.monotonic() - started:.0f} s; shards by host {shard_hosts}; "
          f"killed after the grace: {site.killed or 'none'}")
