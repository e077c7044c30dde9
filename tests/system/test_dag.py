"""The DAG file: loads cleanly and fast, has the documented shape, settings and params."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest

from maskjob import resources
from maskjob.config import BOUNDS, load_settings
from maskjob.errors import MaskjobError
from maskjob.pipeline import database_url_from_connection, run_settings
from maskjob.vocab import MAX_IMAGE_SIZE, MIN_IMAGE_SIZE, TRANSFER_ARCHS

REPO_ROOT = Path(__file__).resolve().parents[2]
DAGS_DIR = REPO_ROOT / "dags"


@pytest.fixture(scope="module")
def dagbag():
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(DAGS_DIR))


@pytest.fixture(scope="module")
def dag(dagbag):
    return dagbag.dags["mask_compliance"]


def test_dags_folder_has_no_import_errors_and_every_dag_has_tags_and_retries(dagbag):
    assert dagbag.import_errors == {}
    assert dagbag.dags, "no DAG found in dags/"
    for dag_id, one in dagbag.dags.items():
        assert one.tags, f"{dag_id} has no tags"
        assert one.default_args.get("retries", 0) >= 1, f"{dag_id} has no retries in default_args"
        for t in one.tasks:
            assert t.retries >= 1, f"{dag_id}.{t.task_id} does not retry"


def test_task_graph_has_the_documented_shape(dag):
    upstream = {t.task_id: set(t.upstream_task_ids) for t in dag.tasks}
    assert upstream == {
        "export_corrections": set(),
        "validate_dataset": {"export_corrections"},
        "decide_training": {"validate_dataset"},
        "train_cnn": {"decide_training"},
        "train_transfer": {"decide_training"},
        "register_and_promote": {"train_cnn", "train_transfer"},
        "wait_for_late_uploads": set(),
        "plan_scoring": {"decide_training", "register_and_promote", "wait_for_late_uploads"},
        "score_shard": {"plan_scoring"},
        "render_reports": {"score_shard", "register_and_promote"},
        "alert_compliance": {"render_reports"},
    }
    tasks = dag.task_dict
    # Reviews are exported before the dataset is checked; a failed export does not stop the run.
    assert tasks["validate_dataset"].trigger_rule == "all_done"
    # Training is a branch that can be skipped; scoring and reporting must still run then.
    assert tasks["decide_training"].inherits_from_skipmixin
    assert tasks["plan_scoring"].trigger_rule == "none_failed_min_one_success"
    assert tasks["render_reports"].trigger_rule == "none_failed"
    # The two trainings are independent of each other, so they run in parallel.
    assert "train_cnn" not in tasks["train_transfer"].upstream_task_ids | tasks["train_transfer"].downstream_task_ids
    # Shards fan out as mapped task instances.
    from airflow.sdk.definitions.mappedoperator import MappedOperator

    assert isinstance(tasks["score_shard"], MappedOperator)
    outlets = tasks["render_reports"].outlets
    assert [a.name for a in outlets] == ["maskjob_compliance_report"]


def test_dag_level_settings(dag):
    assert dag.catchup is False
    assert dag.max_active_runs == 1
    assert dag.doc_md and "catchup" in dag.doc_md
    assert dag.default_args["retry_exponential_backoff"] > 1
    from airflow.serialization.encoders import coerce_to_core_timetable

    timetable = coerce_to_core_timetable(dag.timetable)
    assert timetable.summary == "0 0 * * *"
    # With the default zone (UTC) a run covers the UTC day ending at its logical date.
    interval = timetable.infer_manual_data_interval(run_after=datetime(2026, 11, 25, 2, tzinfo=UTC))
    assert (interval.start.isoformat(), interval.end.isoformat()) == (
        "2026-11-24T00:00:00+00:00", "2026-11-25T00:00:00+00:00"
    )
    # One failure message per run (DAG callback); every task records its final error.
    from maskjob.alerts.run_alerts import RunFailureNotifier, record_task_error

    assert isinstance(dag.on_failure_callback, RunFailureNotifier)
    assert all(t.on_failure_callback in (record_task_error, [record_task_error]) for t in dag.tasks)
    assert dag.task_dict["wait_for_late_uploads"].deferrable is True


def test_maskjob_errors_fail_at_once_other_errors_retry(dag):
    from airflow.sdk import RetryAction

    policy = dag.default_args["retry_policy"]
    assert policy.evaluate(MaskjobError("broken dataset"), 1, 3).action == RetryAction.FAIL
    assert policy.evaluate(ConnectionError("db restarting"), 1, 3).action == RetryAction.DEFAULT


def test_param_defaults_come_from_maskjob_settings(dag):
    defaults = load_settings()
    params = dag.params
    assert params["data_dir"] == str(defaults.data_dir)
    assert params["shards"] == defaults.shards
    assert params["retrain_max_age_days"] == defaults.retrain_max_age_days
    assert params["promotion_margin"] == defaults.promotion_margin
    assert params["transfer_arch"] == defaults.transfer_arch == "resnet18"  # the design card's ResNet
    assert params["train_threads"] == defaults.train_threads == 0
    assert params["max_epochs"] == defaults.max_epochs
    assert params["retry_unreadable"] is defaults.retry_unreadable is False
    assert params["dataset_root"] is None and params["database_conn_id"] is None
    for name in params:
        assert params.get_param(name).description, f"param {name} has no description"


def test_params_reject_bad_per_run_values(dag):
    from airflow.sdk.definitions.param import ParamsDict
    from airflow.sdk.exceptions import ParamValidationError

    good = ParamsDict({**dag.params, "shards": 4})
    assert good.validate()["shards"] == 4
    for bad in ({"shards": 0}, {"transfer_arch": "vgg"}, {"force_retrain": "yes"}, {"retry_unreadable": "no"}):
        merged = ParamsDict(dag.params)
        with pytest.raises(ParamValidationError):
            for key, value in bad.items():
                merged[key] = value
            merged.validate()


BOUND_KEYWORDS = {"minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"}


def _bounds(dag, name: str) -> dict:
    return {k: v for k, v in dag.params.get_param(name).schema.items() if k in BOUND_KEYWORDS}


def test_param_bounds_and_choices_come_from_the_settings_and_vocab(dag):
    for name in ("shards", "max_epochs", "promotion_margin", "retrain_max_age_days", "train_threads"):
        assert _bounds(dag, name) == BOUNDS[name], name
    assert dag.params.get_param("transfer_arch").schema["enum"] == list(TRANSFER_ARCHS)
    assert _bounds(dag, "image_size") == {"minimum": MIN_IMAGE_SIZE, "maximum": MAX_IMAGE_SIZE}


@pytest.mark.parametrize(("name", "value", "ok"), [
    ("image_size", None, True), ("image_size", MIN_IMAGE_SIZE, True), ("image_size", MAX_IMAGE_SIZE, True),
    ("image_size", MIN_IMAGE_SIZE - 1, False), ("image_size", MAX_IMAGE_SIZE + 1, False),
    ("promotion_margin", 0.0, True), ("promotion_margin", 1.0, False),  # exclusiveMaximum, as the settings
    ("retrain_max_age_days", 0.5, True), ("retrain_max_age_days", 0, False),
    ("transfer_arch", TRANSFER_ARCHS[0], True), ("max_epochs", 0, False),
])
def test_params_validate_like_training_and_settings(dag, name, value, ok):
    from airflow.sdk.definitions.param import ParamsDict
    from airflow.sdk.exceptions import ParamValidationError

    params = ParamsDict(dag.params)
    if ok:
        params[name] = value
        assert params.validate()[name] == value
    else:
        with pytest.raises(ParamValidationError):
            params[name] = value
            params.validate()


def test_dag_file_is_a_thin_wrapper_and_each_parse_builds_a_new_dag():
    from airflow.dag_processing.dagbag import DagBag

    source = (DAGS_DIR / "mask_compliance.py").read_text()
    # DagBag's safe mode skips files without both words; the definition lives in maskjob.dag.
    assert "airflow" in source.lower() and "dag" in source.lower()
    assert "from maskjob.dag import build_dag" in source and "@task" not in source
    first, second = (DagBag(dag_folder=str(DAGS_DIR)).dags["mask_compliance"] for _ in range(2))
    assert first is not second  # dag.test() folds a run's conf into the object: never share one
    assert first.fileloc == str(DAGS_DIR / "mask_compliance.py")


def test_maskjob_run_loads_the_dag_from_the_installed_package(tmp_path):
    from maskjob.cli.run_cmds import DAG_ID, airflow_environment
    from maskjob.dag import DAG_ID as PACKAGE_DAG_ID

    assert DAG_ID == PACKAGE_DAG_ID
    folder = resources.dags_dir()
    # An editable install maps maskjob.dags onto the repository's dags/ (a wheel: site-packages/maskjob/dags).
    assert folder == DAGS_DIR and resources.dag_file() == DAGS_DIR / "mask_compliance.py"
    env = airflow_environment(tmp_path)
    assert env["AIRFLOW__CORE__DAGS_FOLDER"] == str(folder)
    assert json.loads(env["AIRFLOW__DAG_PROCESSOR__DAG_BUNDLE_CONFIG_LIST"])[0]["kwargs"]["path"] == str(folder)
    # dag.test() re-parses the whole bundle folder: it must hold nothing but the DAG file.
    assert sorted(p.name for p in folder.glob("*.py")) == ["mask_compliance.py"]


def _in_subprocess(code: str, **env: str) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, env={**os.environ, **env},
        capture_output=True, text=True, timeout=120, check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_parsing_is_fast_and_imports_no_model_code():
    result = _in_subprocess(
        "import json, sys, time\n"
        "import airflow.sdk, airflow.dag_processing.dagbag as d\n"
        "t = time.perf_counter()\n"
        f"bag = d.DagBag(dag_folder={str(DAGS_DIR)!r})\n"
        "parse_s = time.perf_counter() - t\n"
        "heavy = sorted(m for m in ('torch', 'torchvision', 'cv2', 'maskjob.pipeline', 'maskjob.ml.train') if m in sys.modules)\n"
        "print(json.dumps({'parse_s': parse_s, 'heavy': heavy, 'errors': len(bag.import_errors)}))\n"
    )
    assert result["errors"] == 0
    assert result["heavy"] == []
    assert result["parse_s"] < 1.0, f"parsing dags/ took {result['parse_s']:.2f} s"


def test_schedule_and_database_connection_are_configurable_from_the_environment():
    result = _in_subprocess(
        "import json\n"
        "from airflow.dag_processing.dagbag import DagBag\n"
        "from airflow.serialization.encoders import coerce_to_core_timetable\n"
        f"dag = DagBag(dag_folder={str(DAGS_DIR)!r}).dags['mask_compliance']\n"
        "print(json.dumps({'schedule': coerce_to_core_timetable(dag.timetable).summary,\n"
        "                  'conn_id': dag.params['database_conn_id']}))\n",
        MASKJOB_DAG_SCHEDULE="30 3 * * *", MASKJOB_DATABASE_CONN_ID="maskjob_predictions",
    )
    assert result == {"schedule": "30 3 * * *", "conn_id": "maskjob_predictions"}


def test_run_settings_apply_params_and_ignore_empty_values(tmp_path):
    settings = run_settings({
        "data_dir": str(tmp_path), "dataset_root": None, "inbox_dir": "", "shards": 3,
        "force_retrain": True, "image_size": 32, "retry_unreadable": True,
    })
    assert settings.retry_unreadable is True
    assert settings.dataset_root == tmp_path / "dataset"
    assert settings.inbox_dir == tmp_path / "inbox"
    assert settings.shards == 3
    with pytest.raises(MaskjobError, match="shards must be >= 1"):
        run_settings({"data_dir": str(tmp_path), "shards": 0})


def test_database_url_from_airflow_connection_fields(tmp_path):
    url = database_url_from_connection("postgres", host="db", schema="maskjob", login="u", password="p@ss", port=5432)
    assert url == "postgresql+psycopg://u:p%40ss@db:5432/maskjob"
    assert database_url_from_connection("sqlite", host=str(tmp_path / "m.db")) == f"sqlite:///{tmp_path / 'm.db'}"
    with pytest.raises(MaskjobError, match="host to the database file"):
        database_url_from_connection("sqlite")
    with pytest.raises(MaskjobError, match="not supported"):
        database_url_from_connection("mysql", host="db")


def _site_timetable(zone_name: str):
    from airflow.serialization.encoders import coerce_to_core_timetable

    from maskjob.dag import timetable

    return coerce_to_core_timetable(timetable(load_settings(overrides={"site_timezone": zone_name})))


@pytest.mark.parametrize(("zone_name", "day", "start_utc", "hours"), [
    ("Europe/Berlin", "2026-03-29", "2026-03-28T23:00:00+00:00", 23),  # clocks go forward
    ("Europe/Berlin", "2026-10-25", "2026-10-24T22:00:00+00:00", 25),  # clocks go back
    ("Europe/Berlin", "2026-11-24", "2026-11-23T23:00:00+00:00", 24),
    ("Asia/Kathmandu", "2026-11-24", "2026-11-23T18:15:00+00:00", 24),  # UTC+05:45
    ("Pacific/Kiritimati", "2026-11-24", "2026-11-23T10:00:00+00:00", 24),  # UTC+14
])
def test_each_run_covers_the_sites_local_day_dst_included(zone_name, day, start_utc, hours):
    from datetime import date, timedelta
    from datetime import time as dt_time
    from zoneinfo import ZoneInfo

    from airflow.timetables.base import DataInterval, TimeRestriction

    from maskjob.cli.run_cmds import logical_date_for

    table = _site_timetable(zone_name)
    local_day = date.fromisoformat(day)
    tz = ZoneInfo(zone_name)
    # A manual run (maskjob run --date, dag.test) at the local day's end covers that day.
    interval = table.infer_manual_data_interval(run_after=logical_date_for(local_day, zone_name))
    assert interval.start.isoformat() == start_utc
    assert (interval.end - interval.start).total_seconds() == hours * 3600
    assert interval.start.astimezone(tz).time() == interval.end.astimezone(tz).time() == dt_time(0)
    assert interval.end.astimezone(tz).date() == local_day + timedelta(days=1)
    # The scheduler's next run after the previous local day is this one, then the next local day.
    before = table.infer_manual_data_interval(run_after=interval.start)
    restriction = TimeRestriction(earliest=None, latest=None, catchup=True)
    info = table.next_dagrun_info(last_automated_data_interval=before, restriction=restriction)
    assert info.data_interval == DataInterval(interval.start, interval.end)
    assert info.run_after == interval.end
    following = table.next_dagrun_info(last_automated_data_interval=interval, restriction=restriction)
    assert following.data_interval.start == interval.end
    assert following.data_interval.end.astimezone(tz).date() == local_day + timedelta(days=2)


def test_site_timezone_and_grace_reach_the_dag():
    result = _in_subprocess(
        "import json\n"
        "from airflow.dag_processing.dagbag import DagBag\n"
        f"dag = DagBag(dag_folder={str(DAGS_DIR)!r}).dags['mask_compliance']\n"
        "print(json.dumps({'tz': str(dag.timetable.timezone), 'start': dag.start_date.isoformat(),\n"
        "                  'grace_s': dag.task_dict['wait_for_late_uploads'].delta.total_seconds()}))\n",
        MASKJOB_SITE_TIMEZONE="Europe/Berlin", MASKJOB_LATE_UPLOAD_GRACE_MINUTES="90",
    )
    assert result["tz"] == "Europe/Berlin" and result["grace_s"] == 90 * 60
    assert result["start"] == "2025-12-31T23:00:00+00:00"  # local midnight, 1 January, stored as UTC
