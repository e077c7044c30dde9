"""How fast the compliance report renders from a big database, and how much memory it takes.

Builds (once, cached) a SQLite database of 1,000,000 faces over 30 days and 20 cameras at the
schema head: bulk Core inserts of ``images`` (with their per-label face counts) and ``faces``
with the derived-state triggers off, then ``latest_scorings`` and ``hourly_counts`` rebuilt
in one set-based pass (:mod:`maskjob.storage.derived`). Writes real 640x480 JPEG frames for
the faces the galleries will show (so crop reading is measured too), renders the report for
several windows, each in a fresh process, and prints a markdown table of render time and
peak resident memory; then times the README's analyst queries
(:data:`maskjob.storage.analyst_queries.QUERIES`, each for the week 2026-11-18..24, which
the data ends on). Every table says the load average it was measured at.

    flock /tmp/prompts/bench.lock .venv/bin/python benchmarks/report_speed.py [--faces 1000000] [--db PATH] [--rebuild]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import subprocess
import sys
import tempfile
import time
from datetime import date, datetime, timedelta
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from maskjob import CLASSES  # noqa: E402

logger = logging.getLogger("report_speed")

N_CAMERAS = 20
N_DAYS = 30
LAST_DAY = date(2026, 11, 24)
REASONS = ("empty file (0 bytes)", "corrupt or truncated image (image file is truncated)",
           "not a recognised image format (is it really an image?)")


def _day(rng: np.random.Generator, first_id: int, day: date, n: int, version: int):
    """``n`` images of one day (ids from ``first_id``, in capture order, as nightly scoring
    inserts them) and their faces, as row tuples."""
    midnight = datetime.combine(day, datetime.min.time())
    seconds = np.sort(rng.integers(7 * 3600, 19 * 3600, n))
    cams = rng.integers(0, N_CAMERAS, n)
    status = rng.choice(3, n, p=[0.88, 0.10, 0.02])
    n_faces = np.where(status == 0, rng.choice([1, 2, 3], n, p=[0.4, 0.4, 0.2]), 0)
    scored_at = midnight + timedelta(days=1, hours=1)
    images, faces = [], []
    for k in range(n):
        image_id = first_id + k
        when = midnight + timedelta(seconds=int(seconds[k]))
        cam = f"cam-{cams[k] + 1:02d}"
        st = ("ok", "no_face", "unreadable")[status[k]]
        compliance = 0.6 + 0.35 * (cams[k] / (N_CAMERAS - 1))
        labels = []
        for f in range(int(n_faces[k])):
            u = rng.random()
            label = CLASSES[0] if u < compliance else CLASSES[1] if u < compliance + (1 - compliance) * 0.7 else CLASSES[2]
            conf = float(0.5 + 0.5 * rng.beta(5, 1.5))
            p = [(1 - conf) / 2] * 3
            p[CLASSES.index(label)] = conf
            x1 = 40 + 180 * f
            faces.append((image_id, f, x1, 150, x1 + 110, 290, 0.95, label, *p, conf, version))
            labels.append(label)
        images.append((image_id, f"{cam}/{when:%Y%m%dT%H%M%S}_{image_id:07d}.jpg", cam, when, 640, 480, st,
                       REASONS[image_id % 3] if st == "unreadable" else None, len(labels),
                       *(labels.count(c) for c in CLASSES), version, scored_at))
    return images, faces


def build(db_path: Path, target_faces: int, seed: int = 0) -> None:
    """Create the benchmark database with exactly ``target_faces`` faces over ``N_DAYS`` days.

    The older model version scored the first 20 days, the champion the last 10. The rows go
    in with the derived-state triggers off (one transaction); the images' confidence extremes,
    ``latest_scorings`` and ``hourly_counts`` are then computed from them in the same transaction.
    """
    import sqlalchemy as sa

    from maskjob.storage import database, derived, schema

    url = f"sqlite:///{db_path}"
    database.upgrade(url)
    engine = database.make_engine(url)
    rng = np.random.default_rng(seed)
    with engine.begin() as conn:
        ids = []
        for i, arch in enumerate(("cnn", "mobilenet_v2")):
            ids.append(conn.execute(sa.insert(schema.ModelVersion).values(
                version=f"{arch}-bench", arch=arch, checkpoint_path=f"/models/{arch}.pt",
                checkpoint_sha256=f"{i}" * 64, metrics={}, diverged=False, created_at=datetime(2026, 10, 1),
                status="retired" if i == 0 else "champion")).inserted_primary_key[0])
    image_cols = ("id", "path", "camera_id", "captured_at", "width", "height", "status", "reason", "n_faces",
                  *(f"n_{c}" for c in CLASSES), "model_version_id", "scored_at")
    face_cols = ("image_id", "face_index", "x1", "y1", "x2", "y2", "detector_score", "label", "p_with_mask",
                 "p_without_mask", "p_partial_mask", "confidence", "model_version_id")
    per_day = int(target_faces / N_DAYS / (0.88 * 1.8)) + 1
    total, next_id, started = 0, 1, time.perf_counter()
    with engine.begin() as conn, derived.triggers_disabled(conn):
        for d in range(N_DAYS):
            day = LAST_DAY - timedelta(days=N_DAYS - 1 - d)
            n = per_day if d < N_DAYS - 1 else 2 * per_day  # the last day absorbs the sampling slack
            images, faces = _day(rng, next_id, day, n, ids[0] if d < N_DAYS - 10 else ids[1])
            if total + len(faces) > target_faces:  # stop at exactly target_faces
                faces = faces[: target_faces - total]
                images = _cut_after(images, faces)
            conn.execute(sa.insert(schema.Image), [dict(zip(image_cols, row)) for row in images])
            conn.execute(sa.insert(schema.Face), [dict(zip(face_cols, row)) for row in faces])
            total += len(faces)
            next_id += len(images)
            logger.info("%s: %d faces, %d images so far (%.0f s)", day, total, next_id - 1,
                        time.perf_counter() - started)
        derived.fill_confidence_extremes(conn)
        n_latest, n_hourly = derived.rebuild(conn)
    logger.info("derived state: %d latest_scorings, %d hourly_counts rows (%.0f s)", n_latest, n_hourly,
                time.perf_counter() - started)
    with engine.begin() as conn:
        conn.exec_driver_sql("ANALYZE")
    engine.dispose()


def _cut_after(images: list[tuple], faces: list[tuple]) -> list[tuple]:
    """``images`` up to the last one ``faces`` (cut short) reaches, its face counts set to the faces kept."""
    last_id = faces[-1][0]
    images = [img for img in images if img[0] <= last_id]
    kept = [f[7] for f in faces if f[0] == last_id]
    images[-1] = (*images[-1][:8], len(kept), *(kept.count(c) for c in CLASSES), *images[-1][12:])
    return images


def write_gallery_frames(db_path: Path, inbox: Path, windows: list[tuple[date, date, str | None]]) -> int:
    """Write a JPEG frame for every face the windows' galleries and review queues will show."""
    from PIL import Image

    from maskjob.config import load_settings
    from maskjob.reporting.compliance import _normalise_window
    from maskjob.reporting.compliance_data import load_window
    from maskjob.storage import database

    settings = load_settings(overrides={"data_dir": inbox.parent}, environ={})
    engine = database.make_engine(f"sqlite:///{db_path}")
    rng = np.random.default_rng(1)
    written = 0
    for start, end, camera in windows:
        s, e = _normalise_window(start, end)
        data = load_window(engine, s, e, camera, gallery_cap=settings.gallery_cap,
                           review_threshold=settings.review_threshold, review_cap=settings.gallery_cap)
        for rel in set(data.gallery["image_path"]) | set(data.review["image_path"]):
            path = inbox / rel
            if not path.exists():
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(rng.integers(0, 256, (480, 640, 3), dtype=np.uint8)).save(path, quality=85)
                written += 1
    engine.dispose()
    return written


def measure(db_path: Path, inbox: Path, out: Path, start: str, end: str, camera: str | None) -> dict:
    """Render one report in this process; return seconds and peak RSS."""
    from maskjob.config import load_settings
    from maskjob.reporting.compliance import render_compliance_report
    from maskjob.storage import database

    settings = load_settings(overrides={"data_dir": inbox.parent, "inbox_dir": inbox}, environ={})
    engine = database.make_engine(f"sqlite:///{db_path}")
    usage = resource.getrusage(resource.RUSAGE_SELF)
    rss_before, cpu_before = usage.ru_maxrss, usage.ru_utime + usage.ru_stime
    t0 = time.perf_counter()
    path = render_compliance_report(engine, settings, date.fromisoformat(start), date.fromisoformat(end),
                                    camera=camera, out_dir=out)
    seconds = time.perf_counter() - t0
    usage = resource.getrusage(resource.RUSAGE_SELF)
    engine.dispose()
    return {"seconds": seconds, "cpu_seconds": usage.ru_utime + usage.ru_stime - cpu_before,
            "peak_rss_mib": usage.ru_maxrss / 1024,
            "rss_after_imports_mib": rss_before / 1024, "html_kib": path.stat().st_size / 1024}


def _load() -> str:
    return " / ".join(f"{v:.1f}" for v in os.getloadavg())


def time_analyst_queries(db_path: Path, repeats: int = 3) -> list[tuple[str, float, float, float, int, str]]:
    """Each README analyst query (:data:`~maskjob.storage.analyst_queries.QUERIES`) on a new
    connection ``repeats`` times: first wall seconds, median wall, median CPU, rows, load average."""
    import sqlite3
    import statistics

    from maskjob.storage.analyst_queries import QUERIES

    out = []
    for name, sql in QUERIES.items():
        walls, cpus, n_rows = [], [], 0
        for _ in range(repeats):
            with sqlite3.connect(db_path) as conn:
                wall, cpu = time.perf_counter(), time.process_time()
                n_rows = len(conn.execute(sql).fetchall())
                walls.append(time.perf_counter() - wall)
                cpus.append(time.process_time() - cpu)
        out.append((name, walls[0], statistics.median(walls), statistics.median(cpus), n_rows, _load()))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--faces", type=int, default=1_000_000, help="faces in the database")
    parser.add_argument("--db", type=Path, help="database file (default: a temp dir; reused when it exists)")
    parser.add_argument("--rebuild", action="store_true", help="rebuild the database even if it exists")
    parser.add_argument("--measure", nargs=3, metavar=("START", "END", "CAMERA"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    db_path = args.db or Path(tempfile.gettempdir()) / f"maskjob-report-bench-{args.faces}.db"
    inbox = db_path.parent / f"{db_path.stem}-data" / "inbox"
    if args.measure:
        start, end, camera = args.measure
        print(json.dumps(measure(db_path, inbox, inbox.parent / "reports", start, end, None if camera == "-" else camera)))
        return
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if args.rebuild or not db_path.exists():
        db_path.unlink(missing_ok=True)
        t0 = time.perf_counter()
        build(db_path, args.faces)
        logger.info("built %s in %.0f s", db_path, time.perf_counter() - t0)
    first = LAST_DAY - timedelta(days=N_DAYS - 1)
    windows = [(first, LAST_DAY, None), (LAST_DAY - timedelta(days=6), LAST_DAY, None),
               (LAST_DAY, LAST_DAY, None), (first, LAST_DAY, "cam-03")]
    logger.info("wrote %d gallery frames", write_gallery_frames(db_path, inbox, windows))
    rows = []
    for start, end, camera in windows:
        cmd = [sys.executable, __file__, "--db", str(db_path), "--faces", str(args.faces),
               "--measure", start.isoformat(), end.isoformat(), camera or "-"]
        began = time.perf_counter()
        result = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)
        rows.append((f"{start} to {end}", camera or "all 20", {**result, "process_s": time.perf_counter() - began,
                                                                "load": _load()}))
    print(f"\nCompliance report render, SQLite, {args.faces:,} faces over {N_DAYS} days and {N_CAMERAS} cameras\n")
    print(f"({os.cpu_count()} CPUs; load average (1/5/15 min) after each run; CPU time is what an idle machine's "
          "wall time approaches; process = interpreter start + imports + render)\n")
    print("| window | cameras | render wall (s) | render CPU (s) | process wall (s) | peak RSS (MiB) "
          "| RSS after imports (MiB) | HTML (KiB) | load average |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---|")
    for window, cams, r in rows:
        print(f"| {window} | {cams} | {r['seconds']:.2f} | {r['cpu_seconds']:.2f} | {r['process_s']:.2f} "
              f"| {r['peak_rss_mib']:.0f} | {r['rss_after_imports_mib']:.0f} | {r['html_kib']:.0f} | {r['load']} |")
    print("\nThe README's analyst queries on the same database, each on a new connection, 3 runs\n")
    print("| query | first wall (s) | median wall (s) | median CPU (s) | rows | load average |")
    print("|---|---:|---:|---:|---:|---|")
    for name, first_s, wall_s, cpu_s, n_rows, load in time_analyst_queries(db_path):
        print(f"| {name} | {first_s:.3f} | {wall_s:.3f} | {cpu_s:.3f} | {n_rows} | {load} |")


if __name__ == "__main__":
    main()
