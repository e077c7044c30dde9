"""The DAG's two alerts: one message per failed run, one per run with a compliance problem.

* Every task's ``on_failure_callback`` is :func:`record_task_error`: it runs once a task has
  failed *after its retries* and keeps the error as the XCom ``maskjob_error`` (sends nothing).
* The DAG's ``on_failure_callback`` is :class:`RunFailureNotifier`: Airflow calls it once per
  failed run (the scheduler's DAG processor, or ``dag.test()`` in-process, which ``maskjob
  run`` uses), and it sends the one message naming every failed task with its error.
* The task ``alert_compliance`` after ``render_reports`` calls :func:`send_compliance_alert`.
"""

from __future__ import annotations

import logging
import os
from datetime import datetime
from typing import Any, Iterable, Mapping

from airflow.sdk import BaseNotifier

from maskjob.alerts.messages import FailedTask, compliance_alert, failure_alert
from maskjob.alerts.notifiers import channels, dispatch
from maskjob.config import Settings, load_settings, redact

__all__ = ["ERROR_XCOM_KEY", "RUN_LOG_ENV", "RunFailureNotifier", "record_task_error", "send_compliance_alert"]

logger = logging.getLogger(__name__)

ERROR_XCOM_KEY = "maskjob_error"
# `maskjob run` sets this to its log file so the failure message can point at it.
RUN_LOG_ENV = "MASKJOB_RUN_LOG"
_MAX_ERROR_CHARS = 4000


def _error_text(error: BaseException | None) -> str | None:
    if error is None:
        return None
    text = str(error).strip() or type(error).__name__
    if type(error).__name__ != "MaskjobError":
        text = f"{type(error).__name__}: {text}"
    return redact(text)[:_MAX_ERROR_CHARS]


def record_task_error(context: Mapping[str, Any]) -> None:
    """Task ``on_failure_callback``: keep the final error for the run's one failure message."""
    try:
        context["ti"].xcom_push(ERROR_XCOM_KEY, _error_text(context.get("exception")))
    except Exception:  # noqa: BLE001 - the message then says "no error recorded"; never mask the failure
        logger.warning("cannot record the task's error for the failure alert", exc_info=True)


def _run_settings(context: Mapping[str, Any]) -> Settings:
    """The run's settings: its params (conf) over the maskjob settings, as the tasks see them."""
    from maskjob.pipeline import run_settings

    params = {k: v for k, v in dict(context.get("params") or {}).items() if k not in ("database_conn_id",)}
    try:
        return run_settings(params)
    except Exception:  # noqa: BLE001 - a bad param must not stop the failure alert itself
        logger.warning("run params unusable for the alert; using the maskjob settings", exc_info=True)
        return load_settings()


def _from_database(dag_id: str, run_id: str) -> list[FailedTask] | None:
    """Failed task instances and their recorded errors, read from Airflow's metadata database."""
    import sqlalchemy as sa
    from airflow.models.taskinstance import TaskInstance
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as session:
        failed = session.execute(
            sa.select(TaskInstance.task_id, TaskInstance.map_index)
            .where(TaskInstance.dag_id == dag_id, TaskInstance.run_id == run_id, TaskInstance.state == "failed")
            .order_by(TaskInstance.task_id, TaskInstance.map_index)
        ).all()
        errors = {
            (r.task_id, r.map_index): XComModel.deserialize_value(r)
            for r in session.scalars(sa.select(XComModel).where(
                XComModel.dag_id == dag_id, XComModel.run_id == run_id, XComModel.key == ERROR_XCOM_KEY))
        }
    return [FailedTask(_label(t, m), errors.get((t, m))) for t, m in failed]


def _from_execution_api(dag: Any, run_id: str) -> list[FailedTask]:
    """The same through the Task SDK (the DAG processor runs callbacks without ORM access)."""
    from airflow.sdk.execution_time.task_runner import RuntimeTaskInstance
    from airflow.sdk.execution_time.xcom import XCom  # the configured XCom backend

    states = RuntimeTaskInstance.get_task_states(dag.dag_id, run_ids=[run_id]).get(run_id, {})
    found = []
    for key, state in sorted(states.items()):
        if str(state) != "failed":
            continue
        # Mapped instances come back as "<task_id>_<map_index>".
        task_id, map_index = key, -1
        if key not in dag.task_ids and key.rpartition("_")[2].isdigit():
            task_id, map_index = key.rpartition("_")[0], int(key.rpartition("_")[2])
        error = XCom.get_one(key=ERROR_XCOM_KEY, dag_id=dag.dag_id, task_id=task_id, run_id=run_id,
                                 map_index=map_index)
        found.append(FailedTask(_label(task_id, map_index), error))
    return found


def _label(task_id: str, map_index: int) -> str:
    return task_id if map_index is None or map_index < 0 else f"{task_id}[{map_index}]"


def failed_tasks(context: Mapping[str, Any]) -> list[FailedTask]:
    """Every failed task of the run with its error; at least the task Airflow says caused the failure."""
    ti = context.get("ti")
    dag_id, run_id = context["dag"].dag_id, context["run_id"]
    found = None
    for source in (lambda: _from_database(dag_id, run_id), lambda: _from_execution_api(context["dag"], run_id)):
        try:
            found = source()
            break
        except Exception:  # noqa: BLE001 - dag.test() has the ORM, a DAG processor only the Task SDK
            logger.debug("failed tasks not readable this way; trying the next", exc_info=True)
    if not found and ti is not None:
        error = None
        try:
            error = ti.xcom_pull(task_ids=ti.task_id, key=ERROR_XCOM_KEY, map_indexes=ti.map_index)
        except Exception:  # noqa: BLE001
            logger.info("the failed task's error is not readable here", exc_info=True)
        found = [FailedTask(_label(ti.task_id, ti.map_index), error)]
    log_url = getattr(ti, "log_url", None) if ti is not None else None
    return [FailedTask(t.label, t.error, log_url if ti is not None and t.label == _label(ti.task_id, ti.map_index)
                       else None) for t in found or []]


class RunFailureNotifier(BaseNotifier):
    """DAG ``on_failure_callback``: one message per failed run, through every alert channel.

    Args:
        extra: notifiers besides e-mail (see :mod:`maskjob.alerts.notifiers`).
    """

    template_fields = ()

    def render_template_fields(self, context: Any, jinja_env: Any = None) -> None:
        """Nothing to render (and dag.test() passes a serialized DAG without a template environment)."""

    def __init__(self, extra: Iterable[BaseNotifier] = ()) -> None:
        super().__init__()
        self.extra = list(extra)

    def notify(self, context: Mapping[str, Any]) -> None:
        settings = _run_settings(context)
        run = context.get("dag_run")
        alert = failure_alert(
            context["dag"].dag_id, context["run_id"], failed_tasks(context),
            start=getattr(run, "data_interval_start", None), end=getattr(run, "data_interval_end", None),
            tz_name=settings.site_timezone, log_path=os.environ.get(RUN_LOG_ENV),
        )
        logger.warning("%s", alert.subject)
        dispatch(alert, context, channels(settings, self.extra))


def send_compliance_alert(config: Mapping[str, Any], start: str, end: str, report_path: str,
                          context: Mapping[str, Any], extra: Iterable[BaseNotifier] = ()) -> dict[str, Any]:
    """After the report: one message if a camera is below target or silent, or unreadable frames spiked.

    Returns:
        ``{"alerted": bool, "subject": str or None, "problems": {camera: [problems]}, "unreadable_spike": bool}``.
    """
    from maskjob.pipeline import run_settings
    from maskjob.reporting.figures import load_figures
    from maskjob.storage.database import database
    from maskjob.timeutil import to_naive_utc

    settings = run_settings(config)
    with database(settings.database_url) as engine:
        site = load_figures(engine, settings, to_naive_utc(datetime.fromisoformat(start)),
                            to_naive_utc(datetime.fromisoformat(end)))
    alert = compliance_alert(site, report_path, settings.site_timezone, context.get("run_id"))
    outcome = {"alerted": alert is not None, "subject": alert.subject if alert else None,
               "problems": {c.camera_id: list(c.problems) for c in site.problems},
               "unreadable_spike": site.unreadable_spike}
    if alert is None:
        logger.info("compliance alert: every camera met its target; no message")
        return outcome
    dispatch(alert, context, channels(settings, extra))
    return outcome
