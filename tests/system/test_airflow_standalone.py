"""The DAG under a real Airflow: ``airflow standalone`` (scheduler, dag-processor, triggerer,
api-server, LocalExecutor) on a free loopback port, driven through the REST API v2."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any, Iterator

import httpx
import pytest
import sqlalchemy as sa

from tests.fixtures.net import free_port
from tests.fixtures.paths import REPO_ASSETS, REPO_ROOT, REPO_TORCH_HOME

pytestmark = pytest.mark.slow

DAG_ID = "mask_compliance"
READY_TIMEOUT_S = 120
RUN_TIMEOUT_S = 480
STOP_GRACE_S = 30
# Fires only on 29 February: unpausing creates no scheduled run next to the triggered one.
QUIET_SCHEDULE = "0 2 29 2 *"


@dataclass
class Standalone:
    process: subprocess.Popen[bytes]
    home: Path
    base_url: str
    log_path: Path

    def log_tail(self, n_chars: int = 6000) -> str:
        return self.log_path.read_text(errors="replace")[-n_chars:]


def _processes_with_home(home: Path) -> list[int]:
    """Our own processes whose environment has ``AIRFLOW_HOME=home`` (task runners included)."""
    needle = f"AIRFLOW_HOME={home}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if needle in (entry / "environ").read_bytes().split(b"\0"):
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def _stop(proc: subprocess.Popen[bytes], home: Path) -> None:
    """SIGINT to the process group (standalone shuts its components down), SIGKILL after a grace."""
    try:
        os.killpg(proc.pid, signal.SIGINT)
    except ProcessLookupError:
        pass
    try:
        proc.wait(timeout=STOP_GRACE_S)
    except subprocess.TimeoutExpired:
        pass
    deadline = time.monotonic() + 10
    while _processes_with_home(home) and time.monotonic() < deadline:
        time.sleep(0.5)
    for pid in _processes_with_home(home):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


@pytest.fixture
def standalone(tmp_path: Path) -> Iterator[Standalone]:
    home = tmp_path / "airflow"
    home.mkdir()
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    bin_dir = Path(sys.executable).parent
    env = {
        **os.environ,
        "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__DAGS_FOLDER": str(REPO_ROOT / "dags"),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN_ASYNC": f"sqlite+aiosqlite:///{home / 'airflow.db'}",
        "AIRFLOW__DAG_PROCESSOR__DAG_BUNDLE_CONFIG_LIST": json.dumps([{
            "name": "dags-folder",
            "classpath": "airflow.dag_processing.bundles.local.LocalDagBundle",
            "kwargs": {"path": str(REPO_ROOT / "dags")},
        }]),
        "AIRFLOW__API__PORT": str(port),
        "AIRFLOW__API__HOST": "127.0.0.1",
        "AIRFLOW__API__BASE_URL": base_url,
        "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
        "MASKJOB_DAG_SCHEDULE": QUIET_SCHEDULE,
        "MASKJOB_ASSETS_DIR": str(REPO_ASSETS),
        "MASKJOB_TORCH_HOME": str(REPO_TORCH_HOME),
        "MASKJOB_TRANSFER_ARCH": "mobilenet_v2",  # the ImageNet file the offline assets provide
        "MASKJOB_NUM_WORKERS": "0",
        # A 1-epoch model must be allowed to become champion for scoring to happen.
        "MASKJOB_MIN_MACRO_F1": "0",
        "MASKJOB_MIN_CLASS_RECALL": "0",
    }
    log_path = tmp_path / "standalone.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [str(bin_dir / "airflow"), "standalone"], cwd=tmp_path, env=env,
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
    try:
        yield Standalone(proc, home, base_url, log_path)
    finally:
        _stop(proc, home)


def _wait_for_api(airflow: Standalone) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if airflow.process.poll() is not None:
            pytest.fail(f"airflow standalone exited with {airflow.process.returncode}:\n{airflow.log_tail()}")
        try:
            if httpx.get(f"{airflow.base_url}/api/v2/monitor/health", timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(1)
    pytest.fail(f"the API did not come up in {READY_TIMEOUT_S} s:\n{airflow.log_tail()}")


def _token(airflow: Standalone) -> str:
    """A JWT for the generated admin user (simple auth manager), from POST /auth/token."""
    password_file = airflow.home / "simple_auth_manager_passwords.json.generated"
    deadline = time.monotonic() + 30
    while not password_file.is_file() and time.monotonic() < deadline:
        time.sleep(0.5)
    password = json.loads(password_file.read_text())["admin"]
    response = httpx.post(f"{airflow.base_url}/auth/token", json={"username": "admin", "password": password}, timeout=30)
    assert response.status_code == 201, response.text
    return response.json()["access_token"]


def _wait_for_dag(client: httpx.Client, airflow: Standalone) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        response = client.get(f"/api/v2/dags/{DAG_ID}")
        if response.status_code == 200:
            return
        time.sleep(2)
    errors = client.get("/api/v2/importErrors").text
    pytest.fail(f"the dag-processor did not register {DAG_ID}; import errors: {errors}\n{airflow.log_tail()}")


def _wait_for_run(client: httpx.Client, airflow: Standalone, run_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while time.monotonic() < deadline:
        run = client.get(f"/api/v2/dags/{DAG_ID}/dagRuns/{run_id}").json()
        if run["state"] in {"success", "failed"}:
            return run
        time.sleep(3)
    tis = client.get(f"/api/v2/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances").json()
    pytest.fail(f"run {run_id} did not finish in {RUN_TIMEOUT_S} s: {tis}\n{airflow.log_tail()}")


def test_scheduler_runs_the_triggered_dag_end_to_end(standalone: Standalone, tiny_demo: Any, tmp_path: Path):
    data_dir = tmp_path / "data"
    conf = {
        "data_dir": str(data_dir),
        "dataset_root": str(tiny_demo.root),
        "inbox_dir": str(tiny_demo.inbox),
        "max_epochs": 1,
        "image_size": 32,
        "shards": 2,
    }
    _wait_for_api(standalone)
    headers = {"Authorization": f"Bearer {_token(standalone)}"}
    with httpx.Client(base_url=standalone.base_url, headers=headers, timeout=30) as client:
        assert client.get("/api/v2/dags", params={"limit": 1}).status_code == 200
        _wait_for_dag(client, standalone)
        response = client.patch(f"/api/v2/dags/{DAG_ID}", json={"is_paused": False})
        assert response.status_code == 200 and response.json()["is_paused"] is False, response.text
        response = client.post(f"/api/v2/dags/{DAG_ID}/dagRuns",
                               json={"logical_date": "2026-11-25T00:00:00Z", "data_interval_start": "2026-11-24T00:00:00Z",
                                     "data_interval_end": "2026-11-25T00:00:00Z", "conf": conf})
        assert response.status_code == 200, response.text
        run_id = response.json()["dag_run_id"]
        run = _wait_for_run(client, standalone, run_id)
        tis = client.get(f"/api/v2/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances").json()["task_instances"]
        states = {(ti["task_id"], ti["map_index"]): ti["state"] for ti in tis}
        assert run["state"] == "success", f"{states}\n{standalone.log_tail()}"
        runs = client.get(f"/api/v2/dags/{DAG_ID}/dagRuns").json()
        assert runs["total_entries"] == 1  # the quiet schedule added no run of its own

    assert {state for (task, _), state in states.items()} == {"success"}
    shard_tis = [key for key in states if key[0] == "score_shard"]
    assert len(shard_tis) >= 1 and all(index >= 0 for _, index in shard_tis)

    engine = sa.create_engine(f"sqlite:///{data_dir / 'maskjob.db'}")
    with engine.connect() as conn:
        n_images = conn.execute(sa.text("SELECT count(*) FROM images")).scalar_one()
        days = conn.execute(sa.text("SELECT DISTINCT day FROM daily_compliance")).scalars().all()
        champions = conn.execute(sa.text("SELECT count(*) FROM model_versions WHERE status = 'champion'")).scalar_one()
    engine.dispose()
    assert n_images == tiny_demo.summary.n_frames
    assert [str(day) for day in days] == [str(date(2026, 11, 24))]
    assert champions == 1
    reports = sorted((data_dir / "reports").glob("compliance_*.html"))
    assert len(reports) == 1 and reports[0].stat().st_size > 0
