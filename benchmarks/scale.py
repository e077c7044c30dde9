"""Scale benchmark: the README's analyst queries and the 30-day report on a year of a 20-camera site.

PostgreSQL (default): starts a throwaway PostgreSQL 15 cluster tuned for a bulk load,
migrates it with maskjob's own migrations, generates a year (2025-11-25 .. 2026-11-24) of
about ``--faces`` faces inside the database (``benchmarks/scale_data.py``: model 1's nightly
scorings and model 2's rescoring of the last 30 days), loads it with the derived-state
triggers off, rebuilds ``latest_scorings``/``hourly_counts`` and VACUUM ANALYZEs. SQLite
(``--sqlite``): the same shape over the last 30 days only, 1 M faces by default.

Then it times each query of ``maskjob.storage.analyst_queries.QUERIES`` (median of
``--runs`` after one warm-up, through maskjob's engine) and ``maskjob report`` for the last
30 days (a fresh process each time, wall time), captures every query's plan
(``EXPLAIN (ANALYZE, BUFFERS)``; SQLite: ``EXPLAIN QUERY PLAN``), prints a markdown table and,
with ``--doc``, writes the results into that file between this script's markers.

    flock /tmp/bench.lock .venv/bin/python benchmarks/scale.py --faces 22000000 --reuse /tmp/maskjob-scale-pg \
        --doc docs/SCALE.md
    flock /tmp/bench.lock .venv/bin/python benchmarks/scale.py --sqlite --reuse /tmp/maskjob-scale-sqlite \
        --doc docs/SCALE.md

``--reuse DIR`` keeps the loaded database in DIR and reuses it when it was built with the
same size (a load of 20 M faces takes tens of minutes on two cores).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack, contextmanager
from dataclasses import asdict
from datetime import date, timedelta
from pathlib import Path
from typing import Any, Iterator

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import sqlalchemy as sa  # noqa: E402

from benchmarks import scale_pg  # noqa: E402
from benchmarks.scale_data import ZONE, Shape, generate  # noqa: E402
from maskjob.storage import database, derived  # noqa: E402
from maskjob.storage.analyst_queries import QUERIES  # noqa: E402

logger = logging.getLogger("scale")

DATABASE_NAME = "maskjob"
REPORT_FROM, REPORT_TO = date(2026, 10, 26), date(2026, 11, 24)
# The targets, seconds: (each analyst query, the 30-day report).
TARGETS_S = {"postgresql": (0.3, 3.0), "sqlite": (0.2, 3.0)}
MARKERS = "<!-- scale.py {} results: begin -->", "<!-- scale.py {} results: end -->"


def _shape(args: argparse.Namespace) -> Shape:
    days = args.days or (30 if args.sqlite else 365)
    faces = args.faces or (1_000_000 if args.sqlite else 22_000_000)
    last_day = Shape(faces).last_day
    return Shape(faces=faces, first_day=last_day - timedelta(days=days - 1), rescore_days=min(30, days // 3))


def _seconds(began: float) -> float:
    return round(time.perf_counter() - began, 1)


def _load_postgresql(url: str, shape: Shape) -> dict[str, Any]:
    """Generate ``shape`` into the migrated database at ``url``; returns counts and step timings."""
    timings: dict[str, Any] = {}
    engine = database.make_engine(url)
    try:
        began = time.perf_counter()
        with engine.begin() as conn, derived.triggers_disabled(conn):
            with scale_pg.indexes_set_aside(conn, ("images", "faces")):
                counts = generate(conn, shape)
                timings["generate_s"] = _seconds(began)
                began = time.perf_counter()
            timings["indexes_s"] = _seconds(began)
            conn.exec_driver_sql("SELECT setval(pg_get_serial_sequence('images', 'id'), (SELECT MAX(id) FROM images))")
        began = time.perf_counter()
        with engine.begin() as conn:
            timings["latest_rows"], timings["hourly_rows"] = derived.rebuild(conn)
        timings["rebuild_s"] = _seconds(began)
        timings["vacuum_analyze_s"] = _vacuum_analyze(engine)
        with engine.connect() as conn:
            timings["database_size"] = conn.exec_driver_sql(
                "SELECT pg_size_pretty(pg_database_size(current_database()))").scalar()
    finally:
        engine.dispose()
    return {**counts, **timings}


def _load_sqlite(url: str, shape: Shape) -> dict[str, Any]:
    """Generate ``shape`` into the migrated SQLite database at ``url`` (indexes kept: 1 M faces)."""
    timings: dict[str, Any] = {}
    engine = database.make_engine(url)
    try:
        began = time.perf_counter()
        with engine.begin() as conn, derived.triggers_disabled(conn):
            counts = generate(conn, shape)
        timings["generate_s"] = _seconds(began)
        began = time.perf_counter()
        with engine.begin() as conn:
            timings["latest_rows"], timings["hourly_rows"] = derived.rebuild(conn)
        timings["rebuild_s"] = _seconds(began)
        timings["vacuum_analyze_s"] = _vacuum_analyze(engine)
    finally:
        engine.dispose()
    return {**counts, **timings}


def _vacuum_analyze(engine: sa.Engine) -> float:
    """``VACUUM (ANALYZE)`` on PostgreSQL, ``ANALYZE`` on SQLite, outside a transaction (VACUUM
    refuses one); returns the seconds it took."""
    began = time.perf_counter()
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.exec_driver_sql("VACUUM (ANALYZE)" if engine.dialect.name == "postgresql" else "ANALYZE")
    return _seconds(began)


def _prepared(url: str, base: Path, shape: Shape, load: Any) -> dict[str, Any]:
    """The database at ``url`` loaded with ``shape``: reused when ``base/loaded.json`` says so."""
    marker = base / "loaded.json"
    if marker.exists():
        built = json.loads(marker.read_text())
        if built["shape"] == json.loads(json.dumps(asdict(shape), default=str)):
            logger.info("reusing the database loaded on %s", built["loaded_on"])
            if built["revision"] != database.head_revision():  # the in-place upgrade, timed at scale
                began = time.perf_counter()
                database.upgrade(url)
                upgrade_s = _seconds(began)
                with database.engine_for(url) as engine:  # the README's advice after a migration that rewrites rows
                    vacuum_s = _vacuum_analyze(engine)
                built = {**built, "upgraded": f"{built['revision']} -> {database.current(url)}",
                         "upgrade_s": upgrade_s, "upgrade_vacuum_s": vacuum_s, "revision": database.current(url)}
                marker.write_text(json.dumps(built, indent=2))
            return built
    began = time.perf_counter()
    database.upgrade(url)
    built = {"shape": json.loads(json.dumps(asdict(shape), default=str)), "migrate_s": _seconds(began),
             **load(url, shape), "loaded_on": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
             "revision": database.current(url)}
    marker.write_text(json.dumps(built, indent=2))
    return built


@contextmanager
def _database(args: argparse.Namespace, shape: Shape) -> Iterator[tuple[str, dict[str, Any], list[Any]]]:
    """The loaded database's URL, its build record and the changed server settings."""
    with ExitStack() as stack:
        base = args.reuse or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="maskjob-scale-")))
        base.mkdir(parents=True, exist_ok=True)
        if args.sqlite:
            url = f"sqlite:///{base / 'maskjob.db'}"
            if not (base / "loaded.json").exists():
                (base / "maskjob.db").unlink(missing_ok=True)
            yield url, _prepared(url, base, shape, _load_sqlite), []
            return
        server = stack.enter_context(scale_pg.cluster(base))
        admin = sa.create_engine(f"{server}/postgres", isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            if not (base / "loaded.json").exists():
                conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{DATABASE_NAME}"')
            if not conn.exec_driver_sql(f"SELECT 1 FROM pg_database WHERE datname = '{DATABASE_NAME}'").first():
                conn.exec_driver_sql(f'CREATE DATABASE "{DATABASE_NAME}"')
            settings = scale_pg.changed_settings(conn)
        admin.dispose()
        url = f"{server}/{DATABASE_NAME}"
        yield url, _prepared(url, base, shape, _load_postgresql), settings


def _latest_faces(url: str) -> int:
    """The faces the views show (each frame's latest scoring), from ``hourly_counts``."""
    with database.engine_for(url) as engine, engine.connect() as conn:
        return int(conn.exec_driver_sql("SELECT COALESCE(SUM(faces), 0) FROM hourly_counts").scalar())


def _load_average() -> str:
    return " / ".join(f"{v:.2f}" for v in os.getloadavg())


def time_queries(url: str, runs: int) -> list[dict[str, Any]]:
    """Median wall seconds of each analyst query (after one warm-up), its row count and plan."""
    engine = database.make_engine(url)
    explain = "EXPLAIN (ANALYZE, BUFFERS) " if engine.dialect.name == "postgresql" else "EXPLAIN QUERY PLAN "
    results = []
    try:
        with engine.connect() as conn:
            for title, sql in QUERIES.items():
                n_rows = len(conn.exec_driver_sql(sql).all())
                seconds = []
                for _ in range(runs):
                    began = time.perf_counter()
                    conn.exec_driver_sql(sql).all()
                    seconds.append(time.perf_counter() - began)
                plan = [" ".join(str(v) for v in row[-1:]) for row in conn.exec_driver_sql(explain + sql.rstrip(";"))]
                results.append({"query": title, "median_s": statistics.median(seconds), "max_s": max(seconds),
                                "rows": n_rows, "plan": plan, "load": _load_average(), "sql": sql})
                logger.info("%s: %.3f s median", title, results[-1]["median_s"])
    finally:
        engine.dispose()
    return results


def time_report(url: str, runs: int) -> dict[str, Any]:
    """Median wall seconds of ``maskjob report`` for the 30 days, each in a fresh process, after a warm-up."""
    with tempfile.TemporaryDirectory(prefix="maskjob-scale-report-") as data:
        env = {**os.environ, "PYTHONPATH": str(REPO), "MASKJOB_DATABASE_URL": url, "MASKJOB_SITE_TIMEZONE": ZONE,
               "MASKJOB_DATA_DIR": data}
        command = [str(Path(sys.executable).with_name("maskjob")), "report", "--from", REPORT_FROM.isoformat(),
                   "--to", REPORT_TO.isoformat(), "--out", data]
        seconds = []
        for n in range(runs + 1):
            began = time.perf_counter()
            done = subprocess.run(command, env=env, capture_output=True, text=True, cwd=data)
            if done.returncode != 0:
                raise RuntimeError(f"{shlex.join(command)} failed:\n{done.stdout}\n{done.stderr}")
            if n:
                seconds.append(time.perf_counter() - began)
    return {"query": f"maskjob report --from {REPORT_FROM} --to {REPORT_TO} (fresh process)",
            "median_s": statistics.median(seconds), "max_s": max(seconds), "rows": None, "plan": [],
            "load": _load_average(), "command": shlex.join(command[1:])}


def table(dialect: str, faces: int, results: list[dict[str, Any]]) -> str:
    """The markdown table: database, faces, query, median s, target, met?, load average."""
    query_target, report_target = TARGETS_S[dialect]
    lines = ["| database | faces in the views | query | median s | max s | target s | met? | load 1/5/15 min |",
             "|---|---:|---|---:|---:|---:|---|---|"]
    for r in results:
        target = report_target if r["rows"] is None else query_target
        lines.append(f"| {dialect} | {faces:,} | {r['query']} | {r['median_s']:.3f} | {r['max_s']:.3f} | "
                     f"< {target} | {'yes' if r['median_s'] < target else '**no**'} | {r['load']} |")
    return "\n".join(lines)


def _section(dialect: str, command: str, built: dict[str, Any], settings: list[Any], results: list[dict[str, Any]],
             runs: int) -> str:
    """The markdown this run writes into ``--doc``."""
    out = [f"Command: `{command}` ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {os.cpu_count()} CPUs, "
           f"load average {_load_average()} at the end).", ""]
    if settings:
        out += ["Server settings that differ from PostgreSQL's defaults (bulk load; the queries were timed on the "
                "same running server after one warm-up run each, a normal restart-free cache state):", "",
                "| setting | value | default |", "|---|---|---|"]
        out += [f"| {name} | {value} | {default} |" for name, value, default in settings] + [""]
    size = f", {built['database_size']} on disk" if "database_size" in built else ""
    load_keys = ("migrate_s", "generate_s", "indexes_s", "rebuild_s", "vacuum_analyze_s")
    out += [f"Data: {built['frames']:,} frames, {built['images']:,} image rows and {built['faces']:,} face rows "
            f"(both scorings; the views show {built['latest_rows']:,} latest scorings with {built['latest_faces']:,} "
            f"faces; {built['hourly_rows']:,} hourly_counts rows){size}; "
            f"loaded on {built['loaded_on']} at revision {built['revision']}: "
            + ", ".join(f"{k.removesuffix('_s').replace('_', ' ')} {built[k]} s" for k in load_keys if k in built)
            + "." + (f" Then upgraded in place {built['upgraded']} (`maskjob db upgrade`'s migrations, "
                     f"{built['upgrade_s']} s, then VACUUM (ANALYZE) {built['upgrade_vacuum_s']} s)."
                     if "upgraded" in built else ""),
            "", f"Each figure is the median of {runs} runs after one warm-up.", "",
            table(dialect, built["latest_faces"], results), ""]
    for r in results:
        if r["plan"]:
            out += [f"**{r['query']}** ({r['median_s']:.3f} s)", "", "```sql", r["sql"].strip(), "```", "", "```text",
                    *r["plan"], "```", ""]
    return "\n".join(out)


def write_doc(doc: Path, dialect: str, text: str) -> None:
    """Put ``text`` between this dialect's markers in ``doc`` (appended when they are absent)."""
    begin, end = (m.format(dialect) for m in MARKERS)
    old = doc.read_text() if doc.exists() else ""
    block = f"{begin}\n{text}\n{end}"
    pattern = re.compile(re.escape(begin) + ".*?" + re.escape(end), re.S)
    if pattern.search(old):
        doc.write_text(pattern.sub(lambda _: block, old))
    else:
        doc.write_text(old + ("\n" if old else "") + block + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--faces", type=int, help="face rows to generate, both scorings (default 22,000,000, "
                        "~20.3 M of them in the latest scorings; --sqlite 1,000,000)")
    parser.add_argument("--days", type=int, help="days of data ending 2026-11-24 (default 365; --sqlite 30); "
                        "model 2 rescored the last third of them, at most 30")
    parser.add_argument("--sqlite", action="store_true", help="SQLite instead of PostgreSQL")
    parser.add_argument("--reuse", type=Path, help="keep the loaded database in this folder and reuse it")
    parser.add_argument("--runs", type=int, default=5, help="timed runs per query after one warm-up")
    parser.add_argument("--report-runs", type=int, default=3, help="timed report runs after one warm-up")
    parser.add_argument("--doc", type=Path, help="write the results into this markdown file (e.g. docs/SCALE.md)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    command = shlex.join(["python", *sys.argv])
    shape = _shape(args)
    with _database(args, shape) as (url, built, settings):
        dialect = "sqlite" if args.sqlite else "postgresql"
        built = {**built, "latest_faces": _latest_faces(url)}
        results = time_queries(url, args.runs)
        results.append(time_report(url, args.report_runs))
    section = _section(dialect, command, built, settings, results, args.runs)
    print(section)
    if args.doc:
        write_doc(args.doc, dialect, section)


if __name__ == "__main__":
    main()
