"""``maskjob run``: the main job end to end on one machine.

Builds the demo data when it is absent, then runs the nightly DAG once in-process
(``dag.test()``, Airflow metadata in SQLite under ``<data_dir>/airflow``) for one day, and
prints that day's compliance table, the database and the report paths.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

import maskjob
from maskjob.cli import settings_from_args
from maskjob.config import Settings
from maskjob.errors import MaskjobError

__all__ = ["add_commands", "airflow_environment", "cmd_run", "conf_from_settings", "logical_date_for"]

logger = logging.getLogger(__name__)

DAGS_DIR = Path(maskjob.__file__).resolve().parents[1] / "dags"
DAG_ID = "mask_compliance"


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "run",
        help="the main job: build the demo data if absent, run the nightly DAG once, print the results",
        description=(
            "Build the demo data if absent, then run the mask_compliance DAG once in-process "
            "(Airflow dag.test, SQLite metadata under <data_dir>/airflow) for one day, and print "
            "that day's compliance table, the database and the report paths."
        ),
    )
    p.add_argument("--date", type=dt.date.fromisoformat,
                   help="UTC day to score, YYYY-MM-DD (default: the demo day, maskjob.demo.builder.DEMO_DAY)")
    p.add_argument("--scale", type=float, help="demo data size factor when building it (default: demo_scale)")
    p.add_argument("--epochs", type=int, help="maximum training epochs per model (default: max_epochs)")
    p.add_argument("--image-size", type=int, help="training input size in pixels (default: per architecture)")
    p.add_argument("--shards", type=int, help="scoring shards, one mapped task each (default: shards)")
    p.add_argument("--force-retrain", action="store_true", help="train even when the champion is current")
    p.set_defaults(func=cmd_run)


def logical_date_for(day: dt.date) -> dt.datetime:
    """The logical date whose data interval (the 24 h before it) is exactly ``day`` in UTC."""
    return dt.datetime.combine(day + dt.timedelta(days=1), dt.time(), tzinfo=dt.UTC)


def conf_from_settings(settings: Settings, *, image_size: int | None = None, force_retrain: bool = False) -> dict[str, Any]:
    """The DAG run conf that makes the tasks use exactly ``settings``."""
    return {
        "data_dir": str(settings.data_dir),
        "dataset_root": str(settings.dataset_root),
        "inbox_dir": str(settings.inbox_dir),
        "database_url": settings.database_url,
        "shards": settings.shards,
        "retrain_max_age_days": settings.retrain_max_age_days,
        "promotion_margin": settings.promotion_margin,
        "transfer_arch": settings.transfer_arch,
        "max_epochs": settings.max_epochs,
        "image_size": image_size,
        "force_retrain": force_retrain,
    }


def airflow_environment(airflow_home: Path, dags_dir: Path = DAGS_DIR) -> dict[str, str]:
    """Environment for a private Airflow: its home, SQLite metadata, only our dags folder."""
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

    bag = DagBag(dag_folder=str(DAGS_DIR))
    if bag.import_errors or DAG_ID not in bag.dags:
        detail = "; ".join(f"{path}: {err.strip().splitlines()[-1]}" for path, err in bag.import_errors.items())
        raise MaskjobError(f"cannot load DAG {DAG_ID} from {DAGS_DIR}: {detail or 'not found'}")
    return bag.dags[DAG_ID]


def _cell(value: Any) -> str:
    if value is None:
        return ""
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def _print_compliance(settings: Settings, day: dt.date) -> None:
    import sqlalchemy as sa

    from maskjob.storage.database import open_database
    from maskjob.storage.schema import daily_compliance

    engine = open_database(settings.database_url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                sa.select(daily_compliance).where(daily_compliance.c.day == day).order_by(daily_compliance.c.camera_id)
            ).mappings().all()
    finally:
        engine.dispose()
    names = [c.name for c in daily_compliance.columns]
    table = [[_cell(r[n]) for n in names] for r in rows]
    widths = [max([len(n), *(len(row[i]) for row in table)]) for i, n in enumerate(names)]
    numeric = [not isinstance(c.type, (sa.String, sa.Date)) for c in daily_compliance.columns]

    def line(cells: list[str]) -> str:
        return "  ".join(c.rjust(w) if num else c.ljust(w) for c, w, num in zip(cells, widths, numeric))

    print(f"daily compliance for {day} (view daily_compliance):")
    print(line(names))
    for row in table:
        print(line(row))
    if not table:
        print("(no frames scored for this day)")


def cmd_run(args: argparse.Namespace) -> int:
    from maskjob.demo.builder import DEMO_DAY, build_demo
    from maskjob.storage.database import safe_url

    settings = settings_from_args(args, demo_scale=args.scale, max_epochs=args.epochs, shards=args.shards)
    day = args.date or DEMO_DAY
    if not (settings.dataset_root.is_dir() and settings.inbox_dir.is_dir()):
        logger.info("no dataset/inbox under %s: building the demo data", settings.data_dir)
        summary = build_demo(settings)
        logger.info("demo data: %d frames, dataset %s (%.0f s)", summary.n_frames, summary.root, summary.seconds)

    _prepare_airflow(settings.data_dir / "airflow")
    dag = _load_dag()
    logical_date = logical_date_for(day)
    began = time.perf_counter()
    run = dag.test(
        logical_date=logical_date,
        run_conf=conf_from_settings(settings, image_size=args.image_size, force_retrain=args.force_retrain),
    )
    elapsed_s = time.perf_counter() - began
    tis = sorted(run.get_task_instances(), key=lambda ti: (ti.task_id, ti.map_index))
    states = {ti.task_id if ti.map_index < 0 else f"{ti.task_id}[{ti.map_index}]": str(ti.state) for ti in tis}
    print(f"DAG run {run.run_id}: {run.state} in {elapsed_s:.0f} s, interval "
          f"{run.data_interval_start:%Y-%m-%d %H:%M} to {run.data_interval_end:%Y-%m-%d %H:%M} UTC")
    print("tasks: " + ", ".join(f"{k} {v}" for k, v in states.items()))
    if run.state != "success":
        failed = [k for k, v in states.items() if v == "failed"]
        raise MaskjobError(
            f"the DAG run failed at {', '.join(failed) or 'an unknown task'}; the task log above says why. "
            "Fix it and run `maskjob run` again."
        )

    _print_compliance(settings, day)
    reports = next(ti for ti in tis if ti.task_id == "render_reports").xcom_pull(task_ids="render_reports") or {}
    print(f"database: {safe_url(settings.database_url)}")
    print(f"compliance report: {reports.get('compliance_report')}")
    if reports.get("model_report"):
        print(f"model report: {reports['model_report']}")
    return 0
