"""The nightly face-mask compliance DAG: export reviews, validate, maybe retrain, promote, score, report.

Wiring only: every step is a function in :mod:`maskjob.pipeline`, imported inside the task
bodies so parsing stays fast (no torch, no model code at parse time: only Airflow's SDK,
:mod:`maskjob.config` and :mod:`maskjob.vocab`).

The definition lives here, in the package, so a wheel carries it. Airflow parses the DAG file
``dags/mask_compliance.py`` (shipped in the wheel as ``maskjob/dags/mask_compliance.py``, see
:func:`maskjob.resources.dag_file`), which only calls :func:`build_dag`. Each call builds a new
DAG object with its schedule and params read from the environment and the maskjob settings at
that moment, as re-parsing a DAG file does (``dag.test()`` folds a run's conf into the object,
so objects are not shared between runs).

Param bounds and choices come from their single sources: :data:`maskjob.config.BOUNDS` (the
settings' validation) and :mod:`maskjob.vocab` (architectures, image sizes).
"""

from __future__ import annotations

import os
from datetime import datetime, timedelta
from typing import Any, Sequence

from airflow.providers.standard.sensors.time_delta import TimeDeltaSensor
from airflow.sdk import (
    DAG,
    Asset,
    BaseNotifier,
    CronDataIntervalTimetable,
    ExceptionRetryPolicy,
    Param,
    RetryAction,
    RetryRule,
    dag,
    get_current_context,
    task,
)

from maskjob.alerts.run_alerts import RunFailureNotifier, record_task_error
from maskjob.config import BOUNDS, Settings, load_settings
from maskjob.timeutil import zone
from maskjob.vocab import MAX_IMAGE_SIZE, MIN_IMAGE_SIZE, TRANSFER_ARCHS

__all__ = [
    "COMPLIANCE_REPORT", "CONN_ID_ENV", "DAG_ID", "DEFAULT_SCHEDULE", "SCHEDULE_ENV", "TRAINING_POOL", "TRAINING_TASKS",
    "build_dag", "dag_params",
]

DAG_ID = "mask_compliance"
# The training tasks that a parallel executor runs side by side (train_cnn, train_transfer).
TRAINING_TASKS = 2
TRAINING_POOL = "maskjob_training"
SCHEDULE_ENV = "MASKJOB_DAG_SCHEDULE"
CONN_ID_ENV = "MASKJOB_DATABASE_CONN_ID"
# Local midnight to local midnight in the site's zone (site_timezone): 23 or 25 hours on
# the days clocks change. Late uploads are waited for by wait_for_late_uploads, not by
# shifting the schedule, so the data interval stays the local day.
DEFAULT_SCHEDULE = "0 0 * * *"

# Downstream DAGs schedule on this asset; each event's ``extra`` carries the report path
# and the interval it covers.
COMPLIANCE_REPORT = Asset(
    name="maskjob_compliance_report", uri="x-maskjob://reports/compliance", group="maskjob"
)

DOC_MD = f"""
### Nightly face-mask compliance

1. **export_corrections**: the faces reviewers labelled on the review page become crops in the
   dataset (`train`, or the site test split `test_site`, by camera and local day), with
   provenance; nothing to do without reviews. Validation runs even when it fails.
2. **validate_dataset**: layout, counts, unreadable files, train/test duplicates; a broken
   dataset fails the run with the list of problems.
3. **decide_training**: retrain when there is no champion, the dataset fingerprint changed
   since the champion was trained (new reviews change it), the champion is older than
   `retrain_max_age_days`, or `force_retrain` is set; otherwise training is *skipped* and the
   run goes to scoring.
   It also checks that the `transfer_arch` model's ImageNet weights resolve (default `resnet18`;
   the offline demo selects `mobilenet_v2`): without them the run fails here, before training.
4. **train_cnn** and **train_transfer** run in parallel, each with its share of the worker's
   CPU (`train_threads`; 0: the cores divided by the {TRAINING_TASKS} trainings, loader workers
   included). To run them one at a time instead, create a one-slot pool
   (`airflow pools set {TRAINING_POOL} 1 "maskjob training"`) and give both tasks
   `pool="{TRAINING_POOL}"`; the tasks do not name it by default, because a task whose pool does
   not exist is never scheduled.
5. **register_and_promote** registers both candidates and applies the promotion rules, ranking
   on `test_site` once every class there has `site_split_min_per_class` faces.
6. **wait_for_late_uploads** (a deferrable sensor) waits until `late_upload_grace_minutes`
   after the interval's end; training does not wait for it.
7. **plan_scoring** lists the frames captured in the run's data interval and splits them
   into `shards`; **score_shard** is mapped over them (one task per shard, so a
   distributed executor spreads them over workers).
8. **render_reports** renders the interval's compliance report (and the model report when
   training ran) and publishes the `{COMPLIANCE_REPORT.name}` asset.
9. **alert_compliance** sends one message when a camera is below its target, a registered
   camera is silent, or unreadable frames exceed `alert_unreadable_fraction`.

A run that fails (any task, after its retries) sends one failure message (the DAG's
`on_failure_callback`). Alerts go by e-mail through the Airflow connection `alert_conn_id`
to `alert_email_to` (empty: logged only); see docs/ALERTS.md for other channels.

Schedule: `${SCHEDULE_ENV}` (default `{DEFAULT_SCHEDULE}`), a cron expression in the site's
zone (`site_timezone`) whose consecutive times bound each run's data interval: by default
the local day, midnight to midnight, 23 or 25 hours when clocks change.
`catchup` is off: a first deploy must not queue a run (and a
possible retrain) for every missed night. Re-score past days on purpose with
`airflow backfill create --dag-id {DAG_ID} --from-date ... --to-date ...`; re-runs are
idempotent per (frame, model version) and never touch other intervals.

Params override the maskjob settings per run (UI or `airflow dags trigger --conf`).
Empty paths derive from `data_dir`; `database_conn_id` (an Airflow connection,
postgres or sqlite; default `${CONN_ID_ENV}`) takes precedence over `database_url`.
"""

_PATH_HELP = "empty: derived from data_dir ({})"


def dag_params(s: Settings) -> dict[str, Param]:
    """Per-run params; defaults are the maskjob settings (config file, ``MASKJOB_*`` env) at parse time.

    Bounds are the JSON-schema keywords of ``BOUNDS[name]`` (what the settings accept), the
    transfer architectures and the image size limits come from :mod:`maskjob.vocab`.
    """
    return {
        "data_dir": Param(str(s.data_dir), type="string", description="Root for dataset, inbox, models, reports."),
        "dataset_root": Param(None, type=["null", "string"], description=_PATH_HELP.format(s.dataset_root)),
        "inbox_dir": Param(None, type=["null", "string"], description=_PATH_HELP.format(s.inbox_dir)),
        "database_url": Param(
            None, type=["null", "string"],
            description="SQLAlchemy URL without a password (name a database with one by database_conn_id); "
            "empty: $MASKJOB_DATABASE_URL or data_dir/maskjob.db",
        ),
        "database_conn_id": Param(
            os.environ.get(CONN_ID_ENV) or None, type=["null", "string"],
            description=f"Airflow connection (postgres/sqlite) for the predictions database; default ${CONN_ID_ENV}.",
        ),
        "shards": Param(s.shards, type="integer", **BOUNDS["shards"], description="Scoring shards (mapped tasks)."),
        "retry_unreadable": Param(
            s.retry_unreadable, type="boolean",
            description="Read frames recorded unreadable again (re-run an interval after late uploads).",
        ),
        "retrain_max_age_days": Param(
            s.retrain_max_age_days, type="number", **BOUNDS["retrain_max_age_days"],
            description="Retrain when the champion is older.",
        ),
        "promotion_margin": Param(
            s.promotion_margin, type="number", **BOUNDS["promotion_margin"],
            description="Macro-F1 a candidate must gain.",
        ),
        "transfer_arch": Param(
            s.transfer_arch, type="string", enum=list(TRANSFER_ARCHS), description="Transfer model."
        ),
        "train_threads": Param(
            s.train_threads, type="integer", **BOUNDS["train_threads"],
            description=f"Torch threads per training task; 0: the CPU cores / {TRAINING_TASKS}, less loader workers.",
        ),
        "max_epochs": Param(
            s.max_epochs, type="integer", **BOUNDS["max_epochs"], description="Training epochs (upper bound)."
        ),
        "image_size": Param(
            None, type=["null", "integer"], minimum=MIN_IMAGE_SIZE, maximum=MAX_IMAGE_SIZE,
            description=f"Training image size in pixels ({MIN_IMAGE_SIZE}-{MAX_IMAGE_SIZE}); empty: per arch.",
        ),
        "force_retrain": Param(False, type="boolean", description="Train even when the champion is current."),
    }


def _config() -> dict[str, Any]:
    """The run's params as pipeline config, with ``database_conn_id`` resolved to a URL (extras honoured).

    A ``database_url`` param with a password is refused: Airflow stores and shows conf and params.
    """
    from airflow.sdk import Connection

    from maskjob.storage.connections import check_no_password_url, url_from_airflow_connection

    params = dict(get_current_context()["params"])
    conn_id = params.pop("database_conn_id", None)
    check_no_password_url(params.get("database_url"))
    if conn_id:
        url = url_from_airflow_connection(Connection.get(conn_id))
        params["database_url"] = url.render_as_string(hide_password=False)
    return params


def _interval() -> tuple[str, str]:
    """The run's data interval as ISO strings: what is scored and reported, never "now"."""
    context = get_current_context()
    return context["data_interval_start"].isoformat(), context["data_interval_end"].isoformat()


def timetable(settings: Settings) -> CronDataIntervalTimetable:
    """Data intervals between consecutive ``$MASKJOB_DAG_SCHEDULE`` times in ``site_timezone``.

    Airflow's cron data-interval timetable computes each boundary in local time, so an
    interval is the local day (23 or 25 hours across a DST change), and a manual run or
    ``dag.test(logical_date=t)`` covers the last whole interval ending at or before ``t``.
    """
    return CronDataIntervalTimetable(os.environ.get(SCHEDULE_ENV) or DEFAULT_SCHEDULE, timezone=settings.site_timezone)


def build_dag(alert_notifiers: Sequence[BaseNotifier] = ()) -> DAG:
    """A new ``mask_compliance`` DAG; the DAG file calls this once per parse.

    Args:
        alert_notifiers: notifiers that get every alert besides e-mail (a site's own DAG file
            may pass e.g. a ``SlackNotifier``; see :mod:`maskjob.alerts.notifiers`).
    """
    # Longer than our 60-line guide on purpose: TaskFlow declares each task (a few lines that
    # call maskjob.pipeline) inside the DAG function, so the wiring reads top to bottom here.
    settings = load_settings()
    extra_notifiers = list(alert_notifiers)

    @dag(
        dag_id=DAG_ID,
        schedule=timetable(settings),
        start_date=datetime(2026, 1, 1, tzinfo=zone(settings.site_timezone)),
        catchup=False,
        max_active_runs=1,
        doc_md=DOC_MD,
        tags=["maskjob", "ml", "compliance"],
        params=dag_params(settings),
        # Once per failed run (not per task): no alert storm when several shards fail.
        on_failure_callback=RunFailureNotifier(extra_notifiers),
        default_args={
            "owner": "maskjob",
            "retries": 2,
            "retry_delay": timedelta(minutes=2),
            "retry_exponential_backoff": 2.0,
            "max_retry_delay": timedelta(minutes=30),
            # A MaskjobError is a user-fixable problem (broken dataset, bad path, no champion):
            # retrying cannot help, so fail at once; anything else retries with backoff.
            "retry_policy": ExceptionRetryPolicy(
                rules=[RetryRule(
                    exception="maskjob.errors.MaskjobError", action=RetryAction.FAIL, reason="user-fixable"
                )]
            ),
            # Runs only when a task has failed for good; keeps its error for the run's message.
            "on_failure_callback": record_task_error,
        },
    )
    def mask_compliance() -> None:
        @task
        def export_corrections() -> dict[str, Any]:
            from maskjob import pipeline

            return pipeline.export_corrections(_config())

        # all_done: a failed export (reported with the run) never stops the night's scoring.
        @task(trigger_rule="all_done")
        def validate_dataset() -> dict[str, Any]:
            from maskjob import pipeline

            return pipeline.validate_dataset(_config())

        @task.branch
        def decide_training(check: dict[str, Any]) -> list[str]:
            from maskjob import pipeline

            config = _config()
            decision = pipeline.decide_retrain(config, check["fingerprint"], force=bool(config["force_retrain"]))
            return ["train_cnn", "train_transfer"] if decision["retrain"] else ["plan_scoring"]

        @task
        def train_cnn() -> dict[str, Any]:
            from maskjob import pipeline

            config = _config()
            return pipeline.train_candidate("cnn", config, image_size=config["image_size"], concurrent=TRAINING_TASKS)

        @task
        def train_transfer() -> dict[str, Any]:
            from maskjob import pipeline

            config = _config()
            return pipeline.train_candidate(config["transfer_arch"], config, image_size=config["image_size"],
                                            concurrent=TRAINING_TASKS)

        @task
        def register_and_promote(cnn: dict[str, Any], transfer: dict[str, Any]) -> dict[str, Any]:
            from maskjob import pipeline

            return pipeline.register_and_promote(_config(), [cnn["checkpoint_path"], transfer["checkpoint_path"]])

        # Deferrable: the wait frees its worker slot (a triggerer holds it); a past interval,
        # as in `maskjob run --date` or a backfill, passes at once.
        wait = TimeDeltaSensor(
            task_id="wait_for_late_uploads", delta=timedelta(minutes=settings.late_upload_grace_minutes),
            deferrable=True,
        )

        @task(trigger_rule="none_failed_min_one_success")
        def plan_scoring() -> list[dict[str, Any]]:
            from maskjob import pipeline

            config = _config()
            return pipeline.plan_scoring(config, *_interval(), int(config["shards"]))

        @task
        def score_shard(shard: dict[str, Any]) -> dict[str, Any]:
            from maskjob import pipeline

            return pipeline.score_shard(_config(), shard)

        # none_failed: runs after scoring, also when training was skipped or no frame arrived.
        @task(trigger_rule="none_failed", outlets=[COMPLIANCE_REPORT])
        def render_reports(promotion: dict[str, Any] | None) -> dict[str, Any]:
            from maskjob import pipeline

            start, end = _interval()
            reports = pipeline.render_reports(_config(), start, end, with_model_report=promotion is not None)
            events = get_current_context()["outlet_events"]
            events[COMPLIANCE_REPORT].extra = {
                "path": reports["compliance_report"], "interval_start": start, "interval_end": end,
            }
            return reports

        @task
        def alert_compliance(reports: dict[str, Any]) -> dict[str, Any]:
            from maskjob.alerts.run_alerts import send_compliance_alert

            start, end = _interval()
            return send_compliance_alert(_config(), start, end, reports["compliance_report"],
                                         get_current_context(), extra_notifiers)

        check = validate_dataset()
        export_corrections() >> check
        decision = decide_training(check)
        cnn, transfer = train_cnn(), train_transfer()
        decision >> [cnn, transfer]
        promotion = register_and_promote(cnn, transfer)
        shards = plan_scoring()
        [decision, promotion, wait] >> shards
        reports = render_reports(promotion)
        score_shard.expand(shard=shards) >> reports
        alert_compliance(reports)

    return mask_compliance()
