"""Whole DAG runs in-process (``dag.test()``) on the tiny demo: train, promote, score, report,
skip training when nothing changed, re-run idempotently, retrain on exported reviews and rank
on the site split, and fail on a broken dataset."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
import sqlalchemy as sa

from maskjob.errors import MaskjobError
from tests.fixtures.net import free_port
from tests.fixtures.paths import REPO_ASSETS, REPO_ROOT, REPO_TORCH_HOME

pytestmark = [
    pytest.mark.slow,
    # Airflow's in-process execution API imports starlette's TestClient, which warns about httpx.
    pytest.mark.filterwarnings("ignore:Using `httpx` with `starlette.testclient` is deprecated"),
    pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS"),
]

DAG_ID = "mask_compliance"
DAY = date(2026, 11, 24)
OTHER_DAY = date(2026, 11, 26)
# The 24 hours before the logical date: exactly DAY in UTC.
LOGICAL_DATE = datetime(2026, 11, 25, tzinfo=UTC)
OTHER_LOGICAL_DATE = datetime(2026, 11, 27, tzinfo=UTC)
# dag.test() clears earlier runs of the same logical date: later runs get their own.
BROKEN_LOGICAL_DATE = datetime(2026, 11, 21, tzinfo=UTC)
ALERTED_BROKEN_LOGICAL_DATE = datetime(2026, 11, 19, tzinfo=UTC)
ALERT_TO = "safety@site.example"
POSTGRES_LOGICAL_DATE = datetime(2026, 11, 25, 1, tzinfo=UTC)  # its interval still holds all of DAY
REVIEWS_LOGICAL_DATE = datetime(2026, 11, 23, tzinfo=UTC)

# The tasks run in this process and read maskjob settings from the environment: reuse the
# fetched assets and weights, and let a 1-epoch model pass the promotion bars.
TASK_ENV = {
    "MASKJOB_ASSETS_DIR": str(REPO_ASSETS),
    "MASKJOB_TORCH_HOME": str(REPO_TORCH_HOME),
    "MASKJOB_NUM_WORKERS": "0",
    "MASKJOB_MIN_MACRO_F1": "0",
    "MASKJOB_MIN_CLASS_RECALL": "0",
    "MASKJOB_TRANSFER_ARCH": "mobilenet_v2",  # the ImageNet file the offline assets provide
}
NO_WEIGHTS_LOGICAL_DATE = datetime(2026, 11, 17, tzinfo=UTC)


@pytest.fixture(scope="module")
def airflow_dag() -> Iterator[Callable[..., Any]]:
    """Run the real DAG once with ``dag.test()``; Airflow's metadata database is made ready.

    Each run parses the DAG afresh: ``dag.test()`` folds a run's conf into the DAG object's
    params, so reusing one object would leak a run's conf into the next.
    """
    saved = {k: os.environ.get(k) for k in (*TASK_ENV, "AIRFLOW__DAG_PROCESSOR__DAG_BUNDLE_CONFIG_LIST")}
    os.environ.update(TASK_ENV)
    # dag.test() syncs the DAG through the dags-folder bundle: point it at the repo's dags/.
    os.environ["AIRFLOW__DAG_PROCESSOR__DAG_BUNDLE_CONFIG_LIST"] = json.dumps([{
        "name": "dags-folder",
        "classpath": "airflow.dag_processing.bundles.local.LocalDagBundle",
        "kwargs": {"path": str(REPO_ROOT / "dags")},
    }])
    from airflow.dag_processing.dagbag import DagBag
    from airflow.utils import db as airflow_db

    airflow_db.initdb()

    def run(logical_date: datetime, conf: dict[str, Any]) -> Any:
        bag = DagBag(dag_folder=str(REPO_ROOT / "dags"))
        assert bag.import_errors == {}
        return bag.dags[DAG_ID].test(logical_date=logical_date, run_conf=conf)

    yield run
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def _states(run: Any) -> dict[str, list[str]]:
    states: dict[str, list[str]] = {}
    for ti in sorted(run.get_task_instances(), key=lambda t: (t.task_id, t.map_index)):
        states.setdefault(ti.task_id, []).append(str(ti.state))
    return states


def _xcom(run: Any, task_id: str) -> Any:
    """The task's return value; a list of them, by map index, for a mapped task."""
    tis = sorted((t for t in run.get_task_instances() if t.task_id == task_id), key=lambda t: t.map_index)
    if tis[0].map_index < 0:
        return tis[0].xcom_pull(task_ids=task_id)
    return [t.xcom_pull(task_ids=task_id, map_indexes=t.map_index) for t in tis]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory, tiny_demo: Any) -> dict[str, Any]:
    """A data dir of our own: the tiny dataset, and a copy of its inbox plus one frame on OTHER_DAY."""
    data_dir = tmp_path_factory.mktemp("dag-run") / "data"
    inbox = data_dir / "inbox"
    shutil.copytree(tiny_demo.inbox, inbox)
    first = sorted(inbox.glob("*/*.jpg"))[0]
    shutil.copy(first, inbox / first.parent.name / f"{OTHER_DAY:%Y%m%d}T120000.jpg")
    conf = {
        "data_dir": str(data_dir),
        "dataset_root": str(tiny_demo.root),
        "inbox_dir": str(inbox),
        "max_epochs": 1,
        "image_size": 32,
        "shards": 2,
    }
    return {"data_dir": data_dir, "inbox": inbox, "conf": conf, "db_url": f"sqlite:///{data_dir / 'maskjob.db'}"}


def _counts(db_url: str) -> dict[str, Any]:
    engine = sa.create_engine(db_url)
    with engine.connect() as conn:
        images = conn.execute(sa.text(
            "SELECT id, path, model_version_id, scored_at FROM images ORDER BY id")).all()
        counts = {
            "images": [tuple(r) for r in images],
            "faces": conn.execute(sa.text("SELECT count(*) FROM faces")).scalar_one(),
            "versions": conn.execute(sa.text("SELECT arch, status FROM model_versions ORDER BY id")).all(),
            "day_rows": conn.execute(sa.text(
                "SELECT camera_id, images, faces FROM daily_compliance ORDER BY day, camera_id")).all(),
        }
    engine.dispose()
    return counts


@pytest.fixture(scope="module")
def first_run(airflow_dag: Any, workspace: dict[str, Any]) -> Any:
    return airflow_dag(LOGICAL_DATE, workspace["conf"])


def test_first_run_trains_both_promotes_one_scores_the_interval_and_reports(first_run, workspace, tiny_demo):
    from maskjob.scoring.frames import discover_frames

    states = _states(first_run)
    assert first_run.state == "success", states
    assert all(s == ["success"] for t, s in states.items() if t != "score_shard"), states
    assert first_run.data_interval_start == LOGICAL_DATE - timedelta(days=1)

    promotion = _xcom(first_run, "register_and_promote")
    assert len(promotion["registered"]) == 2 and promotion["champion"] in promotion["registered"]
    counts = _counts(workspace["db_url"])
    assert sorted(arch for arch, _ in counts["versions"]) == ["cnn", "mobilenet_v2"]
    assert [status for _, status in counts["versions"]].count("champion") == 1

    expected = {f.rel_path for f in discover_frames(workspace["inbox"],
                                                      datetime(2026, 11, 24), datetime(2026, 11, 25))}
    assert len(expected) == tiny_demo.summary.n_frames
    assert {path for _, path, _, _ in counts["images"]} == expected  # the OTHER_DAY frame is not scored
    shards = _xcom(first_run, "plan_scoring")
    assert sum(s["n_frames"] for s in shards) == len(expected)
    assert states["score_shard"] == ["success"] * len(shards)
    assert sum(images for _, images, _ in counts["day_rows"]) == len(expected)
    assert counts["faces"] > 0

    reports = _xcom(first_run, "render_reports")
    compliance = Path(reports["compliance_report"])
    assert compliance.is_file() and compliance.parent == workspace["data_dir"] / "reports"
    assert "2026-11-24" in compliance.read_text(encoding="utf-8")
    assert reports["model_report"] and Path(reports["model_report"]).is_file()


def test_compliance_report_is_published_as_an_asset_event(first_run):
    from airflow.models.asset import AssetEvent, AssetModel
    from airflow.utils.session import create_session

    with create_session() as session:
        events = session.scalars(
            sa.select(AssetEvent).join(AssetModel, AssetEvent.asset_id == AssetModel.id)
            .where(AssetModel.name == "maskjob_compliance_report", AssetEvent.source_run_id == first_run.run_id)
        ).all()
        extras = [e.extra for e in events]
    assert len(extras) == 1
    assert extras[0]["path"] == _xcom(first_run, "render_reports")["compliance_report"]
    assert extras[0]["interval_start"].startswith("2026-11-24T00:00:00")


@pytest.fixture(scope="module")
def rerun(airflow_dag: Any, workspace: dict[str, Any], first_run: Any) -> tuple[Any, dict, dict]:
    before = _counts(workspace["db_url"])
    run = airflow_dag(LOGICAL_DATE, workspace["conf"])
    return run, before, _counts(workspace["db_url"])


def test_second_run_with_unchanged_dataset_skips_training_but_scores(rerun):
    run, _, _ = rerun
    states = _states(run)
    assert run.state == "success", states
    assert states["train_cnn"] == states["train_transfer"] == ["skipped"]
    assert states["register_and_promote"] == ["skipped"]
    assert states["plan_scoring"] == ["success"] and states["render_reports"] == ["success"]
    assert set(states["score_shard"]) == {"success"}
    assert _xcom(run, "render_reports")["model_report"] is None


def test_rerunning_the_same_logical_date_changes_no_rows(rerun):
    run, before, after = rerun
    assert after == before
    summaries = _xcom(run, "score_shard")
    assert sum(s["n_frames"] for s in summaries) == 0
    assert sum(s["n_skipped"] for s in summaries) == len(before["images"])


def test_another_interval_scores_only_its_frames_and_leaves_other_days_alone(airflow_dag, workspace, rerun):
    _, _, before = rerun
    run = airflow_dag(OTHER_LOGICAL_DATE, workspace["conf"])
    assert run.state == "success", _states(run)
    after = _counts(workspace["db_url"])
    assert after["images"][: len(before["images"])] == before["images"]
    new = after["images"][len(before["images"]):]
    assert [path.rsplit("/", 1)[1] for _, path, _, _ in new] == [f"{OTHER_DAY:%Y%m%d}T120000.jpg"]
    assert _xcom(run, "render_reports")["compliance_report"] != _xcom(rerun[0], "render_reports")["compliance_report"]


def test_retrain_decision_follows_fingerprint_age_and_force(workspace, rerun, tiny_demo):
    from maskjob.ml.dataset import dataset_fingerprint
    from maskjob.pipeline import decide_retrain

    conf = workspace["conf"]
    fingerprint = dataset_fingerprint(tiny_demo.root)
    assert decide_retrain(conf, fingerprint)["retrain"] is False
    changed = decide_retrain(conf, "0" * 64)
    assert changed["retrain"] and "dataset changed" in changed["reason"]
    later = (datetime.now(UTC) + timedelta(days=30)).isoformat()
    stale = decide_retrain({**conf, "retrain_max_age_days": 7}, fingerprint, now=later)
    assert stale["retrain"] and "over the 7-day limit" in stale["reason"]
    assert decide_retrain(conf, fingerprint, force=True)["retrain"] is True


def test_reviews_are_exported_retrain_and_rank_promotion_on_the_site_split(airflow_dag, workspace, rerun, tiny_demo,
                                                                           tmp_path, monkeypatch):
    """Reviewed faces in the database: the run exports them (test_site only here), sees the
    changed fingerprint, retrains, and the promotion decision ranks on test_site."""
    from maskjob.storage.reviews import record_review

    dataset, db = tmp_path / "dataset", tmp_path / "maskjob.db"
    shutil.copytree(tiny_demo.root, dataset)  # same fingerprint as the champion's dataset
    shutil.copy(workspace["data_dir"] / "maskjob.db", db)
    url = f"sqlite:///{db}"
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        face_ids = conn.execute(sa.text(
            "SELECT f.id FROM faces f JOIN latest_scorings l ON l.image_id = f.image_id ORDER BY f.id")).scalars().all()
    assert len(face_ids) >= 3
    labels = ("with_mask", "without_mask", "partial_mask")
    for i, face_id in enumerate(face_ids):
        record_review(engine, face_id, "ana", labels[i % 3])
    engine.dispose()
    monkeypatch.setenv("MASKJOB_SITE_TEST_FRACTION", "1.0")  # every (camera, day) group held out
    monkeypatch.setenv("MASKJOB_SITE_SPLIT_MIN_PER_CLASS", "1")

    run = airflow_dag(REVIEWS_LOGICAL_DATE, {**workspace["conf"], "dataset_root": str(dataset), "database_url": url})
    states = _states(run)
    assert run.state == "success", states
    exported = _xcom(run, "export_corrections")
    assert exported["written"] == exported["total"] == len(face_ids) and exported["bad"] == []
    assert sum(exported["counts"]["test_site"].values()) == len(face_ids)
    assert (dataset / "site_provenance.jsonl").is_file()
    assert _xcom(run, "validate_dataset")["counts"]["test_site"] == exported["counts"]["test_site"]
    assert states["train_cnn"] == states["train_transfer"] == ["success"]
    decisions = _xcom(run, "register_and_promote")["decisions"]
    assert decisions and all(d["ranked_on"] == "test_site" for d in decisions), decisions
    assert any("test_site macro-F1" in d["reason"] and "(test " in d["reason"] for d in decisions), decisions


@pytest.mark.postgres
def test_run_writes_to_postgres_named_by_an_airflow_connection(airflow_dag, workspace, rerun, tiny_demo, pg_url,
                                                               monkeypatch):
    from maskjob.pipeline import run_settings
    from maskjob.storage import database, registry

    # The SQLite run's champion, registered and promoted in PostgreSQL: training is skipped.
    with sa.create_engine(workspace["db_url"]).connect() as conn:
        checkpoint = conn.execute(sa.text(
            "SELECT checkpoint_path FROM model_versions WHERE status = 'champion'")).scalar_one()
    database.upgrade(pg_url)
    engine = database.make_engine(pg_url)
    registry.register(engine, checkpoint)
    assert registry.promote(engine, tiny_demo.root, run_settings(workspace["conf"])).promoted is not None

    url = sa.make_url(pg_url)
    monkeypatch.setenv("AIRFLOW_CONN_MASKJOB_PREDICTIONS", json.dumps(
        {"conn_type": "postgres", "host": url.host, "port": url.port, "login": url.username, "schema": url.database}))
    sqlite_before = _counts(workspace["db_url"])
    run = airflow_dag(POSTGRES_LOGICAL_DATE, {**workspace["conf"], "database_conn_id": "maskjob_predictions"})
    states = _states(run)
    assert run.state == "success", states
    assert states["train_cnn"] == ["skipped"]
    with engine.connect() as conn:
        n_images = conn.execute(sa.text("SELECT count(*) FROM images")).scalar_one()
        days = conn.execute(sa.text("SELECT day, sum(images) FROM daily_compliance GROUP BY day")).all()
    engine.dispose()
    assert n_images == tiny_demo.summary.n_frames
    assert [(str(day), int(n)) for day, n in days] == [(str(DAY), tiny_demo.summary.n_frames)]
    assert _counts(workspace["db_url"]) == sqlite_before


def _maskjob_run(data_dir: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **TASK_ENV}
    return subprocess.run(
        [sys.executable, "-m", "maskjob", "--data-dir", str(data_dir), "run", "--epochs", "1", "--image-size", "32"],
        cwd=data_dir.parent, env=env, capture_output=True, text=True, timeout=600,
    )


def test_maskjob_run_is_the_main_job_end_to_end(workspace, rerun, tiny_demo, tmp_path):
    """``maskjob run`` on existing data: one DAG run in its own Airflow home, then the results."""
    data_dir = tmp_path / "data"
    shutil.copytree(tiny_demo.root, data_dir / "dataset")
    shutil.copytree(tiny_demo.inbox, data_dir / "inbox")
    # The DAG runs' predictions database: its champion was trained on this very dataset.
    shutil.copy(workspace["data_dir"] / "maskjob.db", data_dir / "maskjob.db")

    done = _maskjob_run(data_dir)
    assert done.returncode == 0, done.stderr[-4000:]
    out = done.stdout
    assert "train_cnn skipped" in out and "validate_dataset success" in out
    lines = out.splitlines()
    table = lines[lines.index(next(line for line in lines if line.startswith("daily compliance for 2026-11-24"))) + 1:]
    assert table[0].split()[:3] == ["day", "camera_id", "images"]
    rows = [row.split() for row in table[1:] if row.startswith("2026-11-24")]
    assert sum(int(cells[2]) for cells in rows) == tiny_demo.summary.n_frames
    assert f"database: sqlite:///{data_dir / 'maskjob.db'}" in out
    report = Path(next(line for line in lines if line.startswith("compliance report: ")).split(": ", 1)[1])
    assert report.is_file() and report.parent == data_dir / "reports"
    assert (data_dir / "airflow" / "airflow.db").is_file()


def test_maskjob_run_reports_a_failed_dag_run_without_a_traceback(tmp_path, tiny_demo):
    data_dir = tmp_path / "data"
    shutil.copytree(tiny_demo.root, data_dir / "dataset")
    shutil.copytree(tiny_demo.inbox, data_dir / "inbox")
    (data_dir / "dataset" / "test" / "partial_mask" / "empty.jpg").write_bytes(b"")

    done = _maskjob_run(data_dir)
    assert done.returncode == 2
    assert "maskjob: error: the DAG run failed at validate_dataset" in done.stderr
    assert "train_cnn upstream_failed" in done.stdout


@pytest.fixture
def broken_dataset(tmp_path: Path, tiny_demo: Any) -> tuple[Path, str]:
    root = tmp_path / "dataset"
    shutil.copytree(tiny_demo.root, root)
    victim = sorted((root / "train" / "with_mask").glob("*.jpg"))[0]
    victim.write_bytes(b"not a jpeg at all")
    return root, victim.name


def test_broken_dataset_fails_the_validation_task_with_its_message(airflow_dag, workspace, broken_dataset, capfd):
    root, victim = broken_dataset
    from maskjob.pipeline import validate_dataset

    conf = {**workspace["conf"], "dataset_root": str(root)}
    with pytest.raises(MaskjobError, match="is broken") as raised:
        validate_dataset(conf)
    assert victim in str(raised.value)

    capfd.readouterr()
    run = airflow_dag(BROKEN_LOGICAL_DATE, conf)
    states = _states(run)
    assert run.state == "failed"
    assert states["validate_dataset"] == ["failed"]
    # The grace sensor does not depend on the dataset, nor the export before validation
    # (nothing to export); everything downstream of validation stops.
    assert states.pop("wait_for_late_uploads") == ["success"]
    assert states.pop("export_corrections") == ["success"]
    assert all(s == ["upstream_failed"] for t, s in states.items() if t != "validate_dataset"), states
    out = capfd.readouterr()
    log = out.out + out.err
    assert "is broken" in log and victim in log
    # A MaskjobError is not retried: the first try is final.
    ti = next(t for t in run.get_task_instances() if t.task_id == "validate_dataset")
    assert ti.try_number == 1


def test_default_resnet18_without_weights_fails_the_validation_task_before_training(airflow_dag, workspace,
                                                                                     tmp_path, monkeypatch, capfd):
    import maskjob.ml.models as models

    def offline(url: str, dest: Path, timeout_s: float) -> None:
        raise OSError("network is unreachable")

    monkeypatch.setattr(models, "_download", offline)  # the tasks run in this process
    monkeypatch.setenv("MASKJOB_TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.delenv("MASKJOB_TRANSFER_ARCH")  # the default: resnet18
    capfd.readouterr()
    run = airflow_dag(NO_WEIGHTS_LOGICAL_DATE, {**workspace["conf"], "force_retrain": True})
    states = _states(run)
    assert run.state == "failed"
    assert states["validate_dataset"] == ["failed"]
    assert states["train_cnn"] == ["upstream_failed"] and states["train_transfer"] == ["upstream_failed"]
    out = capfd.readouterr()
    log = out.out + out.err
    assert "no pretrained weights for resnet18: resnet18-f37072fd.pth is not in the cache" in log
    assert "maskjob weights install resnet18 --from FILE" in log and "--transfer-arch mobilenet_v2" in log
    assert not (tmp_path / "torch" / "hub" / "checkpoints" / "resnet18-f37072fd.pth").exists()
    assert not list((workspace["data_dir"] / "models").glob("candidates/*-resnet18"))


@pytest.fixture
def alerts_on(smtp_server, monkeypatch) -> Any:  # noqa: F811
    """E-mail alerts to the test's SMTP server for this test's runs (tasks run in-process)."""
    smtp_server.clear()
    for key, value in smtp_server.connection_env().items():  # alert_conn_id: smtp_default
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("MASKJOB_ALERT_EMAIL_TO", ALERT_TO)
    return smtp_server


def test_a_failed_run_sends_exactly_one_message_naming_the_task_and_error(airflow_dag, workspace, broken_dataset,
                                                                          alerts_on):
    root, victim = broken_dataset
    run = airflow_dag(ALERTED_BROKEN_LOGICAL_DATE, {**workspace["conf"], "dataset_root": str(root)})
    states = _states(run)
    assert run.state == "failed" and states["validate_dataset"] == ["failed"]
    assert sum(s == ["upstream_failed"] for s in states.values()) >= 5  # many tasks down, one message
    [message] = alerts_on.received(settle_s=1.0)
    (workspace["data_dir"] / "failure-alert.eml").write_bytes(bytes(message))  # kept for a person to read
    assert message["To"] == ALERT_TO
    assert message["Subject"] == f"[maskjob] mask_compliance run failed at validate_dataset: {run.run_id}"
    body = message.get_body(("html",)).get_content()
    assert f"The mask_compliance run {run.run_id} failed at validate_dataset (after retries)." in body
    assert "Interval: 2026-11-18 00:00 UTC to 2026-11-19 00:00 UTC (UTC, 24 h)" in body
    assert "  - validate_dataset:\n      the training dataset at" in body and "is broken" in body and victim in body
    assert "No compliance report was published for this run." in body


def _set_cameras(db_url: str, **changes: Any) -> list[str]:
    from maskjob.storage.cameras import list_cameras, set_camera

    engine = sa.create_engine(db_url)
    with engine.begin() as conn:
        ids = [c.camera_id for c in list_cameras(conn)]
        for camera_id in ids:
            set_camera(conn, camera_id, **changes)
    engine.dispose()
    return ids


def test_a_run_where_every_camera_meets_its_target_sends_nothing(airflow_dag, workspace, rerun, alerts_on,
                                                                 monkeypatch):
    cameras = _set_cameras(workspace["db_url"], compliance_target=0.0, expected_frames_per_hour=None)
    assert cameras  # scoring registered the inbox's cameras
    monkeypatch.setenv("MASKJOB_ALERT_UNREADABLE_FRACTION", "1.0")
    run = airflow_dag(LOGICAL_DATE, workspace["conf"])
    assert run.state == "success", _states(run)
    assert _xcom(run, "alert_compliance") == {"alerted": False, "subject": None, "problems": {},
                                              "unreadable_spike": False}
    assert alerts_on.received(settle_s=1.0) == []


def test_a_low_compliance_run_sends_one_message_with_the_cameras_figures(airflow_dag, workspace, rerun, alerts_on):
    from maskjob.pipeline import run_settings
    from maskjob.storage.cameras import add_camera

    cameras = _set_cameras(workspace["db_url"], compliance_target=1.0)
    engine = sa.create_engine(workspace["db_url"])
    with engine.begin() as conn:
        add_camera(conn, "cam-silent", compliance_target=0.5, settings=run_settings(workspace["conf"]))
    engine.dispose()
    run = airflow_dag(LOGICAL_DATE, workspace["conf"])
    assert run.state == "success", _states(run)
    outcome = _xcom(run, "alert_compliance")
    assert outcome["alerted"] is True and outcome["problems"]["cam-silent"] == ["silent"]
    report = _xcom(run, "render_reports")["compliance_report"]
    [message] = alerts_on.received(settle_s=1.0)
    (workspace["data_dir"] / "compliance-alert.eml").write_bytes(bytes(message))  # kept for a person to read
    assert message["Subject"] == outcome["subject"]
    assert message["Subject"].startswith("[maskjob] compliance alert 24 Nov 2026: ")
    assert "1 silent" in message["Subject"]
    body = message.get_body(("html",)).get_content()
    assert f"Report: {report}" in body and f"DAG run: {run.run_id}" in body
    assert "Silent cameras (registered, no frame):\n  - cam-silent: compliance n/a (target 50.0%), 0 faces" in body
    below = [c for c, problems in outcome["problems"].items() if "below_target" in problems]
    assert below and set(below) <= set(cameras)
    for camera in below:  # each named with its compliance against its 100 % target
        assert re.search(rf"  - {re.escape(camera)}: compliance \d+\.\d% \(target 100\.0%\), \d+ faces", body)
    html = Path(report).read_text(encoding="utf-8")
    assert 'data-silent="cam-silent"' in html and 'data-metric="camera_target">100.0%' in html


@pytest.mark.timeout(420)
def test_under_a_real_scheduler_a_failed_run_sends_one_message(tmp_path, smtp_server):  # noqa: F811
    """`airflow standalone` (scheduler, DAG processor, LocalExecutor): the DAG processor runs the
    failure callback. With no dataset in its data dir, the run the scheduler creates for
    yesterday fails at validate_dataset."""
    import signal
    import time

    from maskjob.cli.run_cmds import airflow_environment

    smtp_server.clear()
    port = free_port()
    env = {
        **os.environ, **TASK_ENV, **airflow_environment(tmp_path / "airflow", REPO_ROOT / "dags"),
        **smtp_server.connection_env(),
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False", "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
        "AIRFLOW__API__PORT": str(port), "AIRFLOW__API__BASE_URL": f"http://127.0.0.1:{port}",
        "MASKJOB_DATA_DIR": str(tmp_path / "data"), "MASKJOB_ALERT_EMAIL_TO": ALERT_TO, "OMP_NUM_THREADS": "1",
    }
    log = (tmp_path / "standalone.log").open("wb")
    proc = subprocess.Popen([str(Path(sys.executable).parent / "airflow"), "standalone"], env=env, cwd=tmp_path,
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while not smtp_server.received(settle_s=2.0) and time.monotonic() < deadline and proc.poll() is None:
            pass
        time.sleep(10)  # room for a second message, which must not come
        messages = smtp_server.received()
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        log.close()
    tail = (tmp_path / "standalone.log").read_text(errors="replace")[-3000:]
    assert len(messages) == 1, tail
    subject = messages[0]["Subject"]
    assert subject.startswith("[maskjob] mask_compliance run failed at validate_dataset: scheduled__"), subject
    body = messages[0].get_body(("html",)).get_content()
    assert f"dataset root {tmp_path / 'data' / 'dataset'} does not exist" in body  # the error, via XCom
    assert f"log: http://127.0.0.1:{port}/dags/mask_compliance/runs/scheduled__" in body
