"""``maskjob run``: the main job end to end on one machine.

Builds the demo data when it is absent, then runs the nightly DAG once in-process
(``dag.test()``, Airflow metadata in SQLite under ``<data_dir>/airflow``) for one day, and
prints that day's compliance table, the database and the report paths.

The terminal gets one line per task instance as it finishes (``<task>[<map index>] <state>
<seconds> s``, a failed task's error under it) and then the answer; everything Airflow and
the tasks log (Python logging, structlog, stray prints) goes to
``<data_dir>/logs/run_<day>_<start>.log``, named at the start and the end; maskjob's warnings
and any errors also reach stderr. ``-v`` copies the whole log to stderr as well.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, TextIO

from maskjob import resources
from maskjob.cli import settings_from_args
from maskjob.cli.console import Console, capture_output, console_handler
from maskjob.config import Settings
from maskjob.errors import MaskjobError
from maskjob.ml.threads import budget_threads
from maskjob.timeutil import check_year, zone
from maskjob.vocab import TRANSFER_ARCHS

__all__ = ["add_commands", "airflow_environment", "cmd_run", "conf_from_settings", "logical_date_for"]

logger = logging.getLogger(__name__)

DAG_ID = "mask_compliance"  # maskjob.dag.DAG_ID (not imported here: it imports Airflow)


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "run",
        help="the main job: build the demo data if absent, run the nightly DAG once, print the results",
        description=(
            "Build the demo data if absent, then run the mask_compliance DAG once in-process "
            "(Airflow dag.test, SQLite metadata under <data_dir>/airflow) for one day, and print "
            "that day's compliance table, the database and the report paths. Shows one line per "
            "task as it finishes; the full Airflow log goes to <data_dir>/logs/run_<day>_<start>.log "
            "(maskjob -v run: to stderr too)."
        ),
    )
    p.add_argument("--date", type=_day,
                   help="local day to score in site_timezone, YYYY-MM-DD, midnight to midnight "
                        "(default: the demo day, maskjob.demo.builder.DEMO_DAY)")
    p.add_argument("--scale", type=float, help="demo data size factor when building it (default: demo_scale)")
    p.add_argument("--epochs", type=int, help="maximum training epochs per model (default: max_epochs)")
    p.add_argument("--transfer-arch", choices=TRANSFER_ARCHS,
                   help="transfer model (default: transfer_arch, resnet18, whose ImageNet weights must be "
                        "installed; the offline demo uses mobilenet_v2, the file its assets provide)")
    p.add_argument("--image-size", type=int, help="training input size in pixels (default: per architecture)")
    p.add_argument("--shards", type=int, help="scoring shards, one mapped task each (default: shards)")
    p.add_argument("--force-retrain", action="store_true", help="train even when the champion is current")
    p.set_defaults(func=cmd_run)


def _day(text: str) -> dt.date:
    try:
        return check_year(dt.date.fromisoformat(text))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r} is not a day YYYY-MM-DD ({exc})") from None


def logical_date_for(day: dt.date, tz_name: str = "UTC") -> dt.datetime:
    """The logical date whose data interval is exactly the local ``day`` in zone ``tz_name``:
    the next local midnight (the DAG's timetable covers the last whole local day before it)."""
    local = dt.datetime.combine(day + dt.timedelta(days=1), dt.time(), tzinfo=zone(tz_name))
    return local.astimezone(dt.UTC)


def conf_from_settings(settings: Settings, *, image_size: int | None = None, force_retrain: bool = False) -> dict[str, Any]:
    """The DAG run conf that makes the tasks use exactly ``settings``.

    ``dag.test()`` runs one task at a time, so each training gets the whole budget
    (``train_threads`` resolved for one training at once, :func:`maskjob.ml.threads.budget`).
    The database URL is not in it (Airflow stores and shows a run's conf, and the URL may hold
    a password): the in-process tasks read it from ``$MASKJOB_DATABASE_URL`` (set in ``_run_and_report``).
    """
    return {
        "data_dir": str(settings.data_dir),
        "dataset_root": str(settings.dataset_root),
        "inbox_dir": str(settings.inbox_dir),
        "shards": settings.shards,
        "retrain_max_age_days": settings.retrain_max_age_days,
        "promotion_margin": settings.promotion_margin,
        "transfer_arch": settings.transfer_arch,
        "max_epochs": settings.max_epochs,
        "train_threads": budget_threads(settings.train_threads, settings.num_workers, concurrent=1),
        "image_size": image_size,
        "force_retrain": force_retrain,
    }


def airflow_environment(airflow_home: Path, dags_dir: Path | None = None) -> dict[str, str]:
    """Environment for a private Airflow: its home, SQLite metadata, only our dags folder
    (default: the installed package's, :func:`maskjob.resources.dags_dir`)."""
    dags_dir = dags_dir or resources.dags_dir()
    return {
        "AIRFLOW_HOME": str(airflow_home),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__DAGS_FOLDER": str(dags_dir),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{airflow_home / 'airflow.db'}",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN_ASYNC": f"sqlite+aiosqlite:///{airflow_home / 'airflow.db'}",
        "AIRFLOW__DAG_PROCESSOR__DAG_BUNDLE_CONFIG_LIST": json.dumps([{
            "name": "dags-folder",
            "classpath": "airflow.dag_processing.bundles.local.LocalDagBundle",
            "kwargs": {"path": str(dags_dir)},
        }]),
    }


def _prepare_airflow(airflow_home: Path) -> None:
    if "airflow" in sys.modules and os.environ.get("AIRFLOW_HOME") != str(airflow_home):
        raise MaskjobError(
            f"Airflow was already imported in this process with AIRFLOW_HOME={os.environ.get('AIRFLOW_HOME')}; "
            "run `maskjob run` in a fresh process."
        )
    airflow_home.mkdir(parents=True, exist_ok=True)
    os.environ.update(airflow_environment(airflow_home))
    from airflow.utils import db as airflow_db

    airflow_db.initdb()


def _load_dag() -> Any:
    from airflow.dag_processing.dagbag import DagBag

    dags_dir = resources.dags_dir()
    bag = DagBag(dag_folder=str(dags_dir))
    if bag.import_errors or DAG_ID not in bag.dags:
        detail = "; ".join(f"{path}: {err.strip().splitlines()[-1]}" for path, err in bag.import_errors.items())
        raise MaskjobError(f"cannot load DAG {DAG_ID} from {dags_dir}: {detail or 'not found'}")
    return bag.dags[DAG_ID]


def _cell(value: Any) -> str:
    if value is None:
        return ""
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def _print_compliance(settings: Settings, day: dt.date, out: TextIO) -> None:
    import sqlalchemy as sa

    from maskjob.storage.database import database
    from maskjob.storage.schema import daily_compliance

    with database(settings.database_url) as engine, engine.connect() as conn:
        rows = conn.execute(
            sa.select(daily_compliance).where(daily_compliance.c.day == day).order_by(daily_compliance.c.camera_id)
        ).mappings().all()
    names = [c.name for c in daily_compliance.columns]
    table = [[_cell(r[n]) for n in names] for r in rows]
    widths = [max([len(n), *(len(row[i]) for row in table)]) for i, n in enumerate(names)]
    numeric = [not isinstance(c.type, (sa.String, sa.Date)) for c in daily_compliance.columns]

    def line(cells: list[str]) -> str:
        return "  ".join(c.rjust(w) if num else c.ljust(w) for c, w, num in zip(cells, widths, numeric))

    print(f"daily compliance for {day} (view daily_compliance):", file=out)
    print(line(names), file=out)
    for row in table:
        print(line(row), file=out)
    if not table:
        print("(no frames scored for this day)", file=out)


def task_label(task_id: str, map_index: int) -> str:
    """``task_id``, or ``task_id[i]`` for map index ``i`` of a mapped task."""
    return task_id if map_index < 0 else f"{task_id}[{map_index}]"


def _error_text(error: BaseException, max_lines: int = 40) -> str:
    """The task's error for the terminal: its message (with the type unless a
    :class:`MaskjobError`), continuation lines indented, at most ``max_lines`` lines."""
    text = str(error).strip() or type(error).__name__
    if not isinstance(error, MaskjobError) and type(error).__name__ != "MaskjobError":
        text = f"{type(error).__name__}: {text}"
    lines = text.splitlines()
    if len(lines) > max_lines:
        lines = [*lines[:max_lines], f"... ({len(lines) - max_lines} more lines in the log)"]
    return "\n".join([lines[0], *(f"      {line}" for line in lines[1:])])


class TaskProgress:
    """One line per task instance as it finishes: ``<task>[<map index>] <state> <seconds> s``.

    ``dag.test()`` runs each ready task through ``airflow.sdk.definitions.dag._run_task``;
    :meth:`installed` wraps it to time the task and keep its error, and before and after each
    task prints every task instance of the run that has newly finished (skipped and
    upstream-failed ones are never run: they show up then, or at :meth:`finish`). Without
    that hook (another Airflow version) every line comes at :meth:`finish`.
    """

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.reported: set[tuple[str, int]] = set()
        self.seconds: dict[tuple[str, int], float] = {}
        self.errors: dict[tuple[str, int], str] = {}

    @contextmanager
    def installed(self) -> Iterator[None]:
        try:
            import airflow.sdk.definitions.dag as dag_module

            original = dag_module._run_task
        except (ImportError, AttributeError):  # another Airflow: everything is reported at finish()
            yield
            return

        def run_task(*, ti: Any, task: Any, **kwargs: Any) -> Any:
            self._report_quietly(ti.dag_id, ti.run_id)  # what the scheduling step just skipped
            began = time.perf_counter()
            result = None
            try:
                result = original(ti=ti, task=task, **kwargs)
                return result
            finally:
                key = (ti.task_id, ti.map_index)
                self.seconds[key] = time.perf_counter() - began
                error = getattr(result, "error", None)
                if error is not None:
                    self.errors[key] = _error_text(error)
                self._report_quietly(ti.dag_id, ti.run_id, first=key)

        dag_module._run_task = run_task
        try:
            yield
        finally:
            dag_module._run_task = original

    def _report_quietly(self, dag_id: str, run_id: str, first: tuple[str, int] | None = None) -> None:
        try:
            self.report(dag_id, run_id, first=first)
        except Exception:  # progress lines must never break the run
            logger.debug("cannot report task progress", exc_info=True)

    def _line(self, ti: Any) -> str:
        key = (ti.task_id, ti.map_index)
        seconds = self.seconds.get(key)
        if seconds is None and str(ti.state) in ("success", "failed"):
            seconds = ti.duration
        line = f"{task_label(*key)} {ti.state!s}"
        if seconds is not None:
            line += f" {seconds:.1f} s"
        if key in self.errors and str(ti.state) != "success":
            line += f": {self.errors[key]}"
        return line

    def report(self, dag_id: str, run_id: str, tis: list[Any] | None = None,
               first: tuple[str, int] | None = None) -> None:
        """Print the run's task instances that finished since the last call: ``first`` (the
        task just run), then the others (e.g. the ones it skipped) by end time."""
        from airflow.utils.state import State

        if tis is None:
            from airflow.models.taskinstance import TaskInstance
            from airflow.utils.session import create_session
            from sqlalchemy import select

            with create_session() as session:
                tis = list(session.scalars(
                    select(TaskInstance).where(TaskInstance.dag_id == dag_id, TaskInstance.run_id == run_id)
                ))
                session.expunge_all()
        finished = [ti for ti in tis if ti.state in State.finished and (ti.task_id, ti.map_index) not in self.reported]

        def order(ti: Any) -> tuple:
            return ((ti.task_id, ti.map_index) != first, ti.end_date is None, ti.end_date or 0, ti.task_id, ti.map_index)

        for ti in sorted(finished, key=order):
            self.reported.add((ti.task_id, ti.map_index))
            print(f"  {self._line(ti)}", file=self.out, flush=True)

    def finish(self, tis: list[Any]) -> None:
        """Print the task instances not reported yet (the run's end)."""
        if tis:
            self.report(tis[0].dag_id, tis[0].run_id, tis)


def log_path_for(settings: Settings, day: dt.date, now: dt.datetime | None = None) -> Path:
    """``<data_dir>/logs/run_<day>_<start UTC>.log``: one file per ``maskjob run``."""
    now = now or dt.datetime.now(dt.UTC)
    return settings.data_dir / "logs" / f"run_{day:%Y%m%d}_{now:%Y%m%dT%H%M%SZ}.log"


class _WarningsOnly(logging.Filter):
    """maskjob's warnings, and errors from anything: what a quiet ``maskjob run`` shows."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.ERROR or record.name.split(".")[0] == "maskjob"


def _run_dag(args: argparse.Namespace, settings: Settings, day: dt.date, console: Console) -> int:
    """Run the DAG with fds 1 and 2 in the log file; the answer goes to ``console.out``."""
    root = logging.getLogger()
    before_airflow = warnings = None
    if args.verbose >= 2:
        os.environ.setdefault("AIRFLOW__LOGGING__LOGGING_LEVEL", "DEBUG")
    elif args.verbose <= 0:
        # Into the log file until Airflow's own logging set-up (at import) replaces it.
        before_airflow = console_handler(1, sys.stdout)
        root.addHandler(before_airflow)
        root.setLevel(logging.INFO)
    try:
        _prepare_airflow(settings.data_dir / "airflow")
        if args.verbose <= 0:
            # Airflow's set-up sends every record to fd 1, the log file: show maskjob's
            # warnings and all errors on the terminal as well.
            warnings = console_handler(0, console.err)
            warnings.addFilter(_WarningsOnly())
            root.addHandler(warnings)
        return _run_and_report(args, settings, day, console.out, console.log_path)
    finally:
        for handler in (before_airflow, warnings):
            if handler is not None:
                root.removeHandler(handler)


def _run_and_report(args: argparse.Namespace, settings: Settings, day: dt.date, out: TextIO, log_path: Path) -> int:
    from maskjob.alerts.run_alerts import RUN_LOG_ENV
    from maskjob.storage.database import safe_url

    dag = _load_dag()
    os.environ[RUN_LOG_ENV] = str(log_path)  # a failure alert points at this file
    print(f"running DAG {DAG_ID} for {day}; Airflow log: {log_path}", file=out, flush=True)
    progress = TaskProgress(out)
    began = time.perf_counter()
    os.environ["MASKJOB_DATABASE_URL"] = settings.database_url  # dag.test() runs the tasks in this process
    with progress.installed():
        run = dag.test(
            logical_date=logical_date_for(day, settings.site_timezone),
            run_conf=conf_from_settings(settings, image_size=args.image_size, force_retrain=args.force_retrain),
        )
    elapsed_s = time.perf_counter() - began
    tis = sorted(run.get_task_instances(), key=lambda ti: (ti.task_id, ti.map_index))
    progress.finish(tis)
    tz = zone(settings.site_timezone)
    print(f"DAG run {run.run_id}: {run.state} in {elapsed_s:.0f} s, interval "
          f"{run.data_interval_start.astimezone(tz):%Y-%m-%d %H:%M %Z} to "
          f"{run.data_interval_end.astimezone(tz):%Y-%m-%d %H:%M %Z} ({settings.site_timezone})", file=out)
    if run.state != "success":
        failed = [task_label(ti.task_id, ti.map_index) for ti in tis if ti.state == "failed"]
        raise MaskjobError(
            f"the DAG run failed at {', '.join(failed) or 'an unknown task'} (the error is above; the "
            f"full log is {log_path}). Fix it and run `maskjob run` again."
        )
    _print_compliance(settings, day, out)
    reports = next(ti for ti in tis if ti.task_id == "render_reports").xcom_pull(task_ids="render_reports") or {}
    print(f"database: {safe_url(settings.database_url)}", file=out)
    print(f"compliance report: {reports.get('compliance_report')}", file=out)
    if reports.get("model_report"):
        print(f"model report: {reports['model_report']}", file=out)
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from maskjob.demo.builder import DEMO_DAY, build_demo
    from maskjob.pipeline import check_transfer_weights

    settings = settings_from_args(args, demo_scale=args.scale, max_epochs=args.epochs, shards=args.shards,
                                  transfer_arch=args.transfer_arch)
    check_transfer_weights(settings)  # the DAG's validation checks again; this fails before any set-up
    day = args.date or DEMO_DAY
    if not (settings.dataset_root.is_dir() and settings.inbox_dir.is_dir()):
        print(f"no dataset/inbox under {settings.data_dir}: building the demo data", flush=True)
        summary = build_demo(settings)
        print(f"demo data: {summary.n_frames} frames, dataset {summary.root} ({summary.seconds:.0f} s)", flush=True)

    log_path = log_path_for(settings, day)
    with capture_output(log_path, echo=args.verbose > 0) as console:
        try:
            return _run_dag(args, settings, day, console)
        finally:
            print(f"full log: {log_path}", file=console.out)
