"""Write throughput of the scorer's batched inserts, at schema head with the derived-state triggers.

Each repeat writes the same frames into a fresh database (a new SQLite file; a new database
in a throwaway PostgreSQL cluster, durable settings as shipped) upgraded to head by
:func:`maskjob.storage.database.upgrade`: one transaction per ``--batch-frames`` frames, each
through :func:`maskjob.storage.writes.insert_scored_images`, as the scorer writes a batch.
The rows come from the scorer's own :func:`maskjob.scoring.score.image_rows` (20 cameras in
four zones, one frame per camera per second, 0-3 faces each, uniformly, ~1% unreadable
frames, class probabilities from a Dirichlet); building them is not timed.

The diagnostic rows write the same batches into a database whose derived-state triggers
were turned off before the load (disabled on PostgreSQL, dropped on SQLite): what the
triggers cost the writer. (:func:`maskjob.storage.derived.triggers_disabled` is for one
transaction; around every batch it would time its own ``ALTER TABLE``/``CREATE TRIGGER``
statements too.)

Every row is the median (min-max) of ``--repeats`` runs, interleaved, with the 1-minute load
average. Other processes change wall times a lot, so each row also gives face rows per
CPU-second of this process: on SQLite, which runs in this process, what an idle machine's
wall speed approaches; on PostgreSQL only the client's share (the server's work is not in it).

Usage:
    flock /tmp/bench.lock python benchmarks/write_speed.py
    flock /tmp/bench.lock python benchmarks/write_speed.py --frames 8000 --pg-url postgresql+psycopg://u@h/db
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import sqlalchemy as sa
from score_throughput import throwaway_postgres

from maskjob.config import Settings
from maskjob.scoring.detectors import Detection
from maskjob.scoring.frames import DecodedFrame, Frame
from maskjob.scoring.score import image_rows
from maskjob.storage import database, derived, schema, writes
from maskjob.timeutil import zone

ZONES = ("UTC", "Europe/Paris", "America/Chicago", "Asia/Kolkata")
SHAPE = (480, 640, 3)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--frames", type=int, default=6000, help="frames (image rows) per repeat (default 6000)")
    p.add_argument("--batch-frames", type=int, default=Settings.score_batch_frames,
                   help="frames per transaction (default the setting score_batch_frames, "
                        f"{Settings.score_batch_frames})")
    p.add_argument("--cameras", type=int, default=20, help="cameras the frames come from (default 20)")
    p.add_argument("--repeats", type=int, default=3, help="runs per row; the median is reported (default 3)")
    p.add_argument("--pg-url", help="a PostgreSQL server URL whose user may create databases "
                                    "(default: start a throwaway cluster when run as root with postgresql-15)")
    p.add_argument("--seed", type=int, default=0, help="random seed of the frames (default 0)")
    return p.parse_args()


def scored_batches(n_frames: int, batch_frames: int, n_cameras: int, version_id: int,
                   seed: int) -> list[list[dict[str, Any]]]:
    """The scorer's ``images`` rows with their faces, in batches as scoring writes them."""
    rng = np.random.default_rng(seed)
    cameras = [f"cam{i:02d}" for i in range(n_cameras)]
    zones = {camera: zone(ZONES[i % len(ZONES)]) for i, camera in enumerate(cameras)}
    start = datetime(2026, 11, 24, 6, tzinfo=UTC)
    pixels = np.empty(SHAPE, dtype=np.uint8)  # only its shape is read
    decoded, found = [], []
    for i in range(n_frames):
        camera = cameras[i % n_cameras]
        captured = start + timedelta(seconds=i // n_cameras)
        frame = Frame(Path(f"/inbox/{camera}/{captured:%Y%m%dT%H%M%S}.jpg"),
                      f"{camera}/{captured:%Y%m%dT%H%M%S}.jpg", camera, captured, "name")
        if rng.random() < 0.01:
            decoded.append(DecodedFrame(frame, None, None, "cannot identify image file"))
            continue
        decoded.append(DecodedFrame(frame, pixels, f"{rng.integers(1 << 62):064x}", None))
        faces = []
        for _ in range(int(rng.integers(0, 4))):
            x1, y1, size = int(rng.integers(0, 560)), int(rng.integers(0, 400)), int(rng.integers(20, 80))
            faces.append((Detection((x1, y1, x1 + size, y1 + size), float(rng.uniform(0.6, 1.0))),
                          rng.dirichlet((2.0, 1.0, 0.5))))
        found.append(faces)
    rows: list[list[dict[str, Any]]] = []
    readable = iter(found)
    for b in range(0, n_frames, batch_frames):
        batch = decoded[b:b + batch_frames]
        per_frame = [next(readable) for d in batch if d.rgb is not None]
        rows.append(image_rows(batch, per_frame, version_id, None, zones))
    return rows


@contextlib.contextmanager
def fresh_database(kind: str, server: str | None, work: Path) -> Iterator[str]:
    """A new, empty database of ``kind`` (``sqlite``/``postgresql``), dropped afterwards."""
    if kind == "sqlite":
        path = work / f"{uuid.uuid4().hex}.db"
        try:
            yield f"sqlite:///{path}"
        finally:
            for suffix in ("", "-wal", "-shm"):
                Path(f"{path}{suffix}").unlink(missing_ok=True)
        return
    assert server is not None
    base = sa.make_url(server)
    name = f"maskjob_write_speed_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(base.set(database="postgres"), isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
        yield base.set(database=name).render_as_string(hide_password=False)
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        admin.dispose()


def register_version(engine: sa.Engine) -> int:
    with engine.begin() as conn:
        return conn.execute(sa.insert(schema.ModelVersion).returning(schema.ModelVersion.id), {
            "version": "bench", "arch": "mobilenet_v2", "checkpoint_path": "/m/bench.pt",
            "checkpoint_sha256": "b" * 64, "metrics": {}, "diverged": False,
            "created_at": datetime(2026, 11, 1, tzinfo=UTC), "status": "champion"}).scalar_one()


def disable_derived_triggers(engine: sa.Engine) -> None:
    """Turn the derived-state triggers off for good in a throwaway database (diagnostic only:
    ``latest_scorings`` and ``hourly_counts`` then go stale)."""
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            found = conn.execute(sa.text(
                "SELECT t.tgname, c.relname FROM pg_trigger AS t JOIN pg_class AS c ON c.oid = t.tgrelid "
                "WHERE NOT t.tgisinternal AND starts_with(t.tgname, :prefix)"), {"prefix": derived.TRIGGER_PREFIX})
            statements = [f'ALTER TABLE "{table}" DISABLE TRIGGER "{name}"' for name, table in found]
        else:
            found = conn.execute(sa.text("SELECT name FROM sqlite_master WHERE type = 'trigger' "
                                         "AND substr(name, 1, :n) = :prefix"),
                                 {"n": len(derived.TRIGGER_PREFIX), "prefix": derived.TRIGGER_PREFIX})
            statements = [f'DROP TRIGGER "{name}"' for (name,) in found]
        assert statements, "no derived-state triggers found"
        for statement in statements:
            conn.exec_driver_sql(statement)


def timed_write(url: str, args: argparse.Namespace, triggers: bool) -> dict[str, float]:
    """Migrate a fresh database to head and time the batched writes into it."""
    database.upgrade(url)
    engine = database.open_database(url)
    try:
        batches = scored_batches(args.frames, args.batch_frames, args.cameras, register_version(engine), args.seed)
        n_faces = sum(len(row["faces"]) for batch in batches for row in batch)
        if not triggers:
            disable_derived_triggers(engine)
        load_before = os.getloadavg()[0]
        began, cpu = time.perf_counter(), time.process_time()
        stored = 0
        for batch in batches:
            with engine.begin() as conn:
                stored += len(writes.insert_scored_images(conn, batch))
        seconds, cpu = time.perf_counter() - began, time.process_time() - cpu
        with engine.connect() as conn:
            faces_stored = conn.scalar(sa.select(sa.func.count()).select_from(schema.Face))
    finally:
        engine.dispose()
    assert (stored, faces_stored) == (args.frames, n_faces), (stored, faces_stored, args.frames, n_faces)
    return {"faces_per_s": n_faces / seconds, "images_per_s": args.frames / seconds,
            "rows_per_s": (n_faces + args.frames) / seconds, "faces_per_cpu_s": n_faces / cpu, "n_faces": n_faces,
            "load": (load_before + os.getloadavg()[0]) / 2}


def median_range(runs: list[dict[str, float]], key: str) -> str:
    values = [r[key] for r in runs]
    return f"{statistics.median(values):,.0f} ({min(values):,.0f}-{max(values):,.0f})"


def main() -> None:
    args = parse_args()
    results: dict[tuple[str, bool], list[dict[str, float]]] = {}
    with contextlib.ExitStack() as stack:
        work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="maskjob-write-speed-")))
        server = args.pg_url or stack.enter_context(throwaway_postgres())
        kinds = ["sqlite"] + (["postgresql"] if server else [])
        for _ in range(args.repeats):
            for kind in kinds:
                for triggers in (True, False):
                    with fresh_database(kind, server, work) as url:
                        results.setdefault((kind, triggers), []).append(timed_write(url, args, triggers))
    n_faces = int(next(iter(results.values()))[0]["n_faces"])
    print(f"\n{args.frames} frames ({n_faces} faces, 0-3 per frame) from {args.cameras} cameras, "
          f"{args.batch_frames} frames per transaction, schema head {database.head_revision()}, "
          f"median (min-max) of {args.repeats}:\n")
    print("| database | derived-state triggers | face rows/s | image rows/s | all rows/s "
          "| face rows per CPU-s of this process | load (1 min) |")
    print("|---|---|---:|---:|---:|---:|---:|")
    names = {"sqlite": "SQLite", "postgresql": "PostgreSQL"}
    for (kind, triggers), runs in results.items():
        label = "on (as shipped)" if triggers else "off (diagnostic)"
        figures = " | ".join(median_range(runs, key) for key in ("faces_per_s", "images_per_s", "rows_per_s",
                                                                 "faces_per_cpu_s"))
        print(f"| {names[kind]} | {label} | {figures} | {statistics.median(r['load'] for r in runs):.1f} |")
    if not server:
        print("| PostgreSQL | - | not measured: pass --pg-url or install postgresql-15 and run as root | | | | |")
    print(f"\nLoad average at the end {' / '.join(f'{v:.1f}' for v in os.getloadavg())}.")


if __name__ == "__main__":
    main()
