"""Review page speed with 100,000 unreviewed faces: page load and decision round trips.

Builds a database (SQLite by default, ``--postgres``: a throwaway PostgreSQL 15 cluster, as
``benchmarks/scale.py`` starts one) holding ``--faces`` unreviewed faces, two per frame, over
20 cameras in one day: a third uncertain (confidence below ``review_threshold``), a third
confident violations, the rest confident ``with_mask`` (of which the queue samples
``review_sample_rate``). Each frame is a hard link to one of 24 textured 640x480 JPEGs, so
every face's crop is real work. Then it starts ``maskjob review serve`` in its own process,
logs in with a real HTTP client (httpx) and times

- page load: ``GET /`` plus the first face's two pictures, once cold (the queue counts are
  counted, then kept for 5 s) and ``--loads`` times after;
- a decision: ``POST /review`` (saved in the database, answered with the next face to
  prefetch) plus that face's crop and context pictures, as the page does (``--decisions``).

It prints median and p95 milliseconds, the load average and the command. Target: a decision
under 100 ms.

    flock /tmp/bench.lock .venv/bin/python benchmarks/review_speed.py
    flock /tmp/bench.lock .venv/bin/python benchmarks/review_speed.py --postgres
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import statistics
import sys
import tempfile
import time
from contextlib import ExitStack
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import httpx  # noqa: E402
import numpy as np  # noqa: E402
import sqlalchemy as sa  # noqa: E402
from PIL import Image as PILImage  # noqa: E402

from maskjob import CLASSES  # noqa: E402
from maskjob.storage import database, schema  # noqa: E402
from maskjob.storage.writes import insert_scored_images  # noqa: E402
from tests.review.conftest import start_server, stop_server, write_config  # noqa: E402

PASSWORD = "benchmark password"
N_CAMERAS = 20
N_BASE_FRAMES = 24
DAY = datetime(2026, 11, 24, 7)
BATCH_FRAMES = 2000
TARGET_MS = 100.0


def _frames(inbox: Path, n_frames: int) -> list[str]:
    """``n_frames`` inbox paths, each a hard link to one of ``N_BASE_FRAMES`` real JPEGs."""
    rng = np.random.default_rng(5)
    base = inbox / ".base"
    base.mkdir(parents=True, exist_ok=True)
    sources = []
    for i in range(N_BASE_FRAMES):
        pixels = rng.integers(0, 256, size=(480, 640, 3), dtype=np.uint8)
        path = base / f"{i:02d}.jpg"
        PILImage.fromarray(pixels).save(path, quality=90)
        sources.append(path)
    rels = []
    for n in range(n_frames):
        rel = f"cam-{n % N_CAMERAS:02d}/{n:07d}.jpg"
        target = inbox / rel
        target.parent.mkdir(exist_ok=True)
        os.link(sources[n % N_BASE_FRAMES], target)
        rels.append(rel)
    return rels


def _face(n: int, k: int, model_id: int) -> dict[str, Any]:
    u = ((n * 2 + k) * 2654435761 % 4294967296) / 4294967296
    kind = (n * 2 + k) % 3
    if kind == 0:
        label, conf = CLASSES[(n + k) % 3], 0.34 + 0.4 * u  # uncertain
    elif kind == 1:
        label, conf = CLASSES[1 + (n + k) % 2], 0.76 + 0.23 * u  # a confident violation
    else:
        label, conf = "with_mask", 0.76 + 0.23 * u
    rest = (1 - conf) / 2
    return {"face_index": k, "x1": 100 + 260 * k, "y1": 120, "x2": 180 + 260 * k, "y2": 220, "detector_score": 0.95,
            "label": label, "confidence": conf, **{f"p_{c}": conf if c == label else rest for c in CLASSES},
            "model_version_id": model_id}


def build(url: str, inbox: Path, n_faces: int) -> float:
    """Migrate ``url`` and fill it with ``n_faces`` unreviewed faces; returns the seconds it took."""
    began = time.perf_counter()
    database.upgrade(url)
    rels = _frames(inbox, n_faces // 2)
    engine = database.make_engine(url)
    try:
        with engine.begin() as conn:
            model_id = conn.execute(sa.insert(schema.ModelVersion).returning(schema.ModelVersion.id), {
                "version": "mobilenet_v2-bench", "arch": "mobilenet_v2", "checkpoint_path": "/models/m.pt",
                "checkpoint_sha256": "b" * 64, "metrics": {}, "test_macro_f1": 0.9, "diverged": False,
                "created_at": DAY - timedelta(days=1), "status": "champion"}).scalar_one()
        for start in range(0, len(rels), BATCH_FRAMES):
            batch = [{"path": rel, "camera_id": rel.split("/")[0], "captured_at": DAY + timedelta(seconds=n),
                      "width": 640, "height": 480, "status": "ok", "reason": None, "timezone": "UTC",
                      "model_version_id": model_id, "scored_at": DAY + timedelta(hours=14),
                      "faces": [_face(n, k, model_id) for k in range(2)]}
                     for n, rel in enumerate(rels[start:start + BATCH_FRAMES], start)]
            with engine.begin() as conn:
                insert_scored_images(conn, batch)
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.exec_driver_sql("VACUUM (ANALYZE)" if engine.dialect.name == "postgresql" else "ANALYZE")
    finally:
        engine.dispose()
    return time.perf_counter() - began


def _ms(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    return statistics.median(ordered) * 1000, ordered[max(int(len(ordered) * 0.95) - 1, 0)] * 1000


def measure(base_url: str, loads: int, decisions: int) -> dict[str, list[float]]:
    """Log in, then time page loads and decision round trips (seconds)."""
    times: dict[str, list[float]] = {"first page load": [], "page load": [], "POST /review": [],
                                     "decision + pictures": []}
    with httpx.Client(base_url=base_url, timeout=30) as client:
        token = re.search(r'name="csrf" value="([^"]+)"', client.get("/login").text)[1]
        client.post("/login", data={"username": "bench", "password": PASSWORD, "csrf": token})
        html = ""
        for n in range(loads + 1):
            began = time.perf_counter()
            html = client.get("/").text
            first = re.search(r'data-face="(\d+)"', html)[1]
            client.get(f"/face/{first}/crop.jpg").raise_for_status()
            client.get(f"/face/{first}/context.jpg").raise_for_status()
            times["first page load" if n == 0 else "page load"].append(time.perf_counter() - began)
        csrf = re.search(r'data-csrf="([^"]+)"', html)[1]
        queue = [client.get("/next").json()["item"]]
        queue.append(client.get("/next", params={"holding": queue[0]["face_id"]}).json()["item"])
        for i in range(decisions):
            item = queue.pop(0)
            label = item["label"] if i % 4 else CLASSES[(CLASSES.index(item["label"]) + 1) % 3]
            began = time.perf_counter()
            answer = client.post("/review", headers={"x-csrf-token": csrf}, data={
                "face_id": item["face_id"], "label": label, "stratum": item["stratum"],
                "holding": ",".join(str(q["face_id"]) for q in queue)})
            answer.raise_for_status()
            posted = time.perf_counter()
            nxt = answer.json()["item"]
            client.get(nxt["crop"]).raise_for_status()
            client.get(nxt["context"]).raise_for_status()
            done = time.perf_counter()
            times["POST /review"].append(posted - began)
            times["decision + pictures"].append(done - began)
            queue.append(nxt)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--faces", type=int, default=100_000, help="unreviewed faces in the database (default 100000)")
    parser.add_argument("--loads", type=int, default=20, help="page loads to time (default 20)")
    parser.add_argument("--decisions", type=int, default=200, help="decision round trips to time (default 200)")
    parser.add_argument("--postgres", action="store_true", help="use a throwaway PostgreSQL 15 cluster, not SQLite")
    args = parser.parse_args()
    with ExitStack() as stack:
        base = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="maskjob-review-speed-")))
        if args.postgres:
            from benchmarks import scale_pg

            base.chmod(0o755)  # the cluster runs as OS user postgres, which must reach base/pg
            server = stack.enter_context(scale_pg.cluster(base / "pg"))
            admin = sa.create_engine(f"{server}/postgres", isolation_level="AUTOCOMMIT")
            with admin.connect() as conn:
                conn.exec_driver_sql('CREATE DATABASE "maskjob"')
            admin.dispose()
            url = f"{server}/maskjob"
        else:
            url = f"sqlite:///{base / 'maskjob.db'}"
        inbox = base / "inbox"
        build_s = build(url, inbox, args.faces)
        from maskjob.config import load_settings
        from maskjob.review.auth import add_user

        settings = load_settings(overrides={"data_dir": base, "inbox_dir": inbox, "database_url": url,
                                            "review_secure_cookies": False}, environ={})
        with database.engine_for(url) as engine:
            add_user(engine, "bench", "reviewer", PASSWORD)
        # Plain HTTP on loopback: a Secure cookie would not travel back from httpx.
        config = write_config(base / "maskjob.toml", settings)
        server_process = start_server(config, base / "server.log")
        try:
            load_before = os.getloadavg()
            times = measure(server_process.base_url, args.loads, args.decisions)
            load_after = os.getloadavg()
        finally:
            stop_server(server_process)
    dialect = "PostgreSQL 15" if args.postgres else "SQLite"
    print(f"review page, {dialect}, {args.faces:,} unreviewed faces (database built in {build_s:.0f} s)")
    print("| step | n | median ms | p95 ms |")
    print("|---|---|---|---|")
    for name, samples in times.items():
        median, p95 = _ms(samples)
        print(f"| {name} | {len(samples)} | {median:.1f} | {p95:.1f} |")
    median, _ = _ms(times["decision + pictures"])
    verdict = "meets" if median < TARGET_MS else "misses"
    print(f"decision round trip {verdict} the {TARGET_MS:.0f} ms target (median {median:.1f} ms)")
    print("load average (1/5/15 min) before: " + " / ".join(f"{v:.2f}" for v in load_before)
          + ", after: " + " / ".join(f"{v:.2f}" for v in load_after))
    print("command: " + " ".join(shlex.quote(a) for a in [sys.executable, *sys.argv]))


if __name__ == "__main__":
    main()
