"""Scoring throughput and detector quality on 640x480 CCTV frames.

Measures, in one run and on the same frames:
- detector quality: recall per class (IoU >= 0.4 against ground_truth.csv) and precision;
- the limit: detector + classifier forward passes on preloaded arrays (no I/O), run as
  scoring runs them (:func:`maskjob.scoring.score.classify_batches`: batches of ``--batch-frames``,
  one batch per worker thread, one torch thread each);
- end-to-end ``maskjob.scoring.score.score`` into a fresh SQLite database (decode, detect,
  classify, write);
- a naive loop: one frame at a time, one classifier forward per face, one commit per row,
  with torch's default thread count, and the same loop on one torch thread (how much of the
  gap is the thread setting alone);
- the stages after detection alone (crop, classify, write), batched as ``score`` does and
  naive, on detections computed beforehand: what batching gains where it applies;
- database write throughput (rows/s) of the scorer's batched inserts on SQLite and PostgreSQL;
- detection options against today's configuration (MTCNN, full pyramid from ``min_face_px`` 20
  in every frame), end to end, in the same run (:func:`detection_options`: per-camera face-size
  ranges of :mod:`maskjob.scoring.face_sizes`, a larger ``min_face_px``, a coarser pyramid,
  Ultra-Light). Protocol: the frames captured before the inbox's median capture time are
  scored first, as today, into a template database: that is each camera's history (its faces
  of the last 7 days). Then the later half, which no history saw, is scored ``--repeats``
  times by every option, interleaved, each into a fresh copy of the template. Each row gives
  frames per CPU-second (this process, model loading and listing included), recall per class
  and precision from the stored face rows (IoU >= 0.4). ``--only-options --frames 240``
  measures 120 frames after a 120-frame history.

Every throughput row is measured ``--repeats`` times, interleaved, and reported as the
median (min-max). Other processes on the machine change wall times a lot, so each row also
gives frames per CPU-second of this process (what an idle machine's wall time approaches)
and the 1-minute load average while it ran. The end-to-end CPU time includes loading the
model and listing the inbox.

Usage:
    python benchmarks/score_throughput.py                       # demo inbox, 120 frames
    python benchmarks/score_throughput.py --min-face-px 40      # demo faces are 40-120 px
    python benchmarks/score_throughput.py --only-options --frames 240   # detection options end to end
    python benchmarks/score_throughput.py --inbox data/inbox --checkpoint data/models/mobilenet_v2.pt
    python benchmarks/score_throughput.py --pg-url postgresql+psycopg://user@host/db

Without ``--checkpoint`` an untrained classifier of ``--arch`` is timed (its speed does not
depend on its weights). Without ``--pg-url`` a throwaway PostgreSQL cluster is started when
the server binaries are installed and we run as root (as the test suite does).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import os
import shlex
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np

from maskjob import CLASSES
from maskjob.config import Settings, load_settings, replace

PG_BIN = Path(os.environ.get("MASKJOB_TEST_PG_BIN", "/usr/lib/postgresql/15/bin"))
MIN_IOU = 0.4


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--inbox", type=Path, help="inbox with ground_truth.csv (default: build the demo inbox in a temp dir)")
    p.add_argument("--frames", type=int, default=120, help="frames of the demo inbox to build (default 120)")
    p.add_argument("--checkpoint", type=Path, help="classifier checkpoint (default: an untrained --arch model)")
    p.add_argument("--arch", default="mobilenet_v2", help="architecture of the untrained classifier (default mobilenet_v2)")
    p.add_argument("--detectors", default="res10,mtcnn,ultralight",
                   help="comma-separated detectors to compare (default res10,mtcnn,ultralight)")
    p.add_argument("--detector", help=f"detector for the throughput rows (default the setting, {Settings.detector})")
    p.add_argument("--min-face-px", type=int,
                   help=f"smallest face MTCNN looks for, in pixels (default the setting, {Settings.min_face_px})")
    p.add_argument("--batch-frames", type=int, default=16, help="frames per scoring batch (default 16)")
    p.add_argument("--repeats", type=int, default=3, help="times each throughput row is measured (default 3)")
    p.add_argument("--write-images", type=int, default=2000, help="image rows for the write benchmark (default 2000)")
    p.add_argument("--pg-url", help="PostgreSQL URL for the write benchmark (default: a throwaway cluster)")
    p.add_argument("--data-dir", type=Path, default=Path("data"), help="maskjob data dir holding assets/ (default ./data)")
    p.add_argument("--detector-specs", default="mtcnn,ultralight,res10,centerface@0.3,centerface@0.5,yunet@30,"
                                                "yunet@40,yunet@50,yunet@30:0.5",
                   help="with --only-options: the detectors measured alone afterwards, as benchmarks/detectors.py "
                        "--detectors takes them")
    p.add_argument("--only-options", action="store_true",
                   help="measure only the detection options (face-size ranges, pyramid limits, detectors) "
                        "against today's configuration, end to end")
    return p.parse_args()


def make_settings(args: argparse.Namespace, work: Path) -> Settings:
    data_dir = args.data_dir.resolve()
    return load_settings(
        overrides={"data_dir": work, "assets_dir": data_dir / "assets", "torch_home": data_dir / "torch",
                   "score_batch_frames": args.batch_frames, "detector": args.detector,
                   "min_face_px": args.min_face_px},
        environ={},
    )


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def timed(fn: Callable[[], int]) -> dict[str, float]:
    """Run ``fn`` (it returns frames done) and time it: wall, CPU of this process, load."""
    load_before, wall, cpu = os.getloadavg()[0], time.perf_counter(), time.process_time()
    n = fn()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return {"frames_per_s": n / wall, "frames_per_cpu_s": n / cpu, "load": (load_before + os.getloadavg()[0]) / 2}


def prepare_checkpoint(args: argparse.Namespace, work: Path) -> Path:
    if args.checkpoint:
        return args.checkpoint.resolve()
    from maskjob import __version__
    from maskjob.ml.checkpoint import save_checkpoint
    from maskjob.ml.models import ARCH_DEFAULTS, create_model

    model = create_model(args.arch, pretrained=False)
    meta = {
        "arch": args.arch, "classes": list(CLASSES), **ARCH_DEFAULTS[args.arch], "dataset_fingerprint": "benchmark",
        "metrics": {}, "val_macro_f1": 0.0, "seed": 0, "history": [], "pretrained_weights": None,
        "created_at": datetime.now(UTC).isoformat(), "maskjob_version": __version__,
    }
    return save_checkpoint(work / f"untrained-{args.arch}.pt", model.state_dict(), meta)


def demo_frames(args: argparse.Namespace, settings: Settings, work: Path) -> tuple[Path, list, list]:
    """The inbox (``--inbox``, else a demo inbox of ``--frames`` frames built under ``work``),
    its frames in scan order and their decoded RGB arrays."""
    from maskjob.demo.builder import FRAMES, build_demo
    from maskjob.imageio import read_rgb
    from maskjob.scoring.frames import discover_frames

    inbox = args.inbox
    if inbox is None:
        inbox = build_demo(settings, root=work / "dataset", inbox=work / "inbox", scale=args.frames / FRAMES).inbox
    frames = discover_frames(inbox)
    return inbox, frames, [read_rgb(f.path) for f in frames]


def read_truth(inbox: Path) -> dict[str, list[tuple[tuple[int, int, int, int], str]]]:
    truth: dict[str, list[tuple[tuple[int, int, int, int], str]]] = defaultdict(list)
    with (inbox / "ground_truth.csv").open() as fh:
        for row in csv.DictReader(fh):
            truth[row["image"]].append(((int(row["x1"]), int(row["y1"]), int(row["x2"]), int(row["y2"])), row["label"]))
    return truth


def detector_quality(names: Sequence[str], settings: Settings, frames: list, images: list[np.ndarray],
                     truth: dict) -> list[dict]:
    """Recall, precision and speed of each detector; timed on one torch thread, as each
    scoring worker runs it (res10 runs on OpenCV's own threads)."""
    from maskjob.scoring.detectors import create_detector
    from maskjob.scoring.matching import match_boxes

    rows = []
    for name in names:
        detector = create_detector(name, replace(settings, detector=name))
        step = settings.score_batch_frames
        found: list = []

        def detect_all() -> int:
            for i in range(0, len(images), step):
                found.extend(detector.detect_batch(images[i:i + step]))
            return len(images)

        with torch_threads(1):
            detector.detect_batch(images[:2])
            speed = timed(detect_all)
        hits, totals = defaultdict(int), defaultdict(int)
        n_found = n_matched = 0
        for frame, dets in zip(frames, found):
            gt = truth.get(frame.rel_path, [])
            matches = match_boxes([b for b, _ in gt], [d.box for d in dets], MIN_IOU)
            for _, label in gt:
                totals[label] += 1
            for ti, _ in matches:
                hits[gt[ti][1]] += 1
            n_found += len(dets)
            n_matched += len(matches)
        row = {"detector": name, **speed,
               "precision": n_matched / n_found if n_found else float("nan"),
               "recall": sum(hits.values()) / max(1, sum(totals.values())), "faces": sum(totals.values())}
        row.update({c: hits[c] / totals[c] if totals[c] else float("nan") for c in CLASSES})
        rows.append(row)
    return rows


def one_worker(settings: Settings, classifier, images: list[np.ndarray]) -> tuple[float, float, int]:
    """Seconds of detector and of classifier forward passes on one torch thread, and faces."""
    from maskjob.scoring.detectors import create_detector
    from maskjob.scoring.faces import crop_face

    detector = create_detector(settings.detector, settings)
    t_detect = t_classify = 0.0
    n_faces = 0
    step = settings.score_batch_frames
    with torch_threads(1):
        detector.detect_batch(images[:2])
        for i in range(0, len(images), step):
            batch = images[i:i + step]
            began = time.perf_counter()
            found = detector.detect_batch(batch)
            t_detect += time.perf_counter() - began
            crops = [crop_face(rgb, d.box, detector.crop_scale) for rgb, dets in zip(batch, found) for d in dets]
            began = time.perf_counter()
            classifier.predict_proba(crops)
            t_classify += time.perf_counter() - began
            n_faces += len(crops)
    return t_detect, t_classify, n_faces


def model_limit(settings: Settings, classifier, images: list[np.ndarray]) -> int:
    """The detector and classifier on preloaded frames, as ``score`` runs them; frames done."""
    from maskjob.scoring.detectors import create_detector
    from maskjob.scoring.faces import classify_batches

    detector = create_detector(settings.detector, settings)
    step = settings.score_batch_frames
    for _ in classify_batches([images[i:i + step] for i in range(0, len(images), step)], detector, classifier):
        pass
    return len(images)


def champion_db(url: str, ckpt: Path):
    import sqlalchemy as sa

    from maskjob.storage import database, schema
    from maskjob.storage.registry import register

    database.upgrade(url)
    engine = database.make_engine(url)
    version = register(engine, ckpt)
    with engine.begin() as conn:
        conn.execute(sa.update(schema.ModelVersion).where(schema.ModelVersion.id == version.id).values(status="champion"))
    return engine, version


def end_to_end(settings: Settings, inbox: Path, url: str) -> int:
    from maskjob.scoring.score import score
    from maskjob.storage import database

    with database.engine_for(url) as engine:
        summary = score(engine, settings, inbox, progress=False)
    return summary.n_frames


def naive(settings: Settings, classifier, frames: list, url: str, version_id: int) -> int:
    """One frame at a time: decode, detect, one forward per face, one commit per row."""
    from maskjob import timeutil
    from maskjob.imageio import read_rgb, sha256_file
    from maskjob.scoring.detectors import create_detector
    from maskjob.scoring.faces import crop_face
    from maskjob.storage import database, schema

    detector = create_detector(settings.detector, settings)
    engine = database.make_engine(url)
    for frame in frames:
        rgb = read_rgb(frame.path, settings.max_image_pixels)
        dets = detector.detect(rgb)
        faces = []
        for i, det in enumerate(dets):
            probs = classifier.predict_proba([crop_face(rgb, det.box, detector.crop_scale)])[0]
            best = int(np.argmax(probs))
            faces.append(schema.Face(face_index=i, x1=det.box[0], y1=det.box[1], x2=det.box[2], y2=det.box[3],
                                 detector_score=det.score, label=CLASSES[best], p_with_mask=float(probs[0]),
                                 p_without_mask=float(probs[1]), p_partial_mask=float(probs[2]),
                                 confidence=float(probs[best]), model_version_id=version_id))
        image = schema.Image(path=frame.rel_path, content_sha256=sha256_file(frame.path), camera_id=frame.camera_id,
                         captured_at=frame.captured_at, width=rgb.shape[1], height=rgb.shape[0],
                         status="ok" if dets else "no_face", n_faces=len(dets), model_version_id=version_id,
                         scored_at=timeutil.utcnow())
        with database.session(engine) as s:
            s.add(image)
        for face in faces:
            face.image_id = image.id
            with database.session(engine) as s:
                s.add(face)
    engine.dispose()
    return len(frames)


def after_detection(batched: bool, settings: Settings, classifier, frames: list, images: list[np.ndarray],
                    found: list, crop_scale: float, url: str, version_id: int) -> int:
    """The stages after detection, on detections computed beforehand: crop, classify, write.

    Batched: one forward pass and one transaction per ``score_batch_frames`` frames (as
    ``score`` does). Naive: one forward pass per face and one commit per row. Both on this
    thread with torch's default thread count, so the difference is batching alone. Rows are
    built by the scorer's own :func:`maskjob.scoring.score.image_rows`.
    """
    import sqlalchemy as sa

    from maskjob.scoring.faces import crop_face
    from maskjob.scoring.frames import DecodedFrame
    from maskjob.scoring.score import image_rows
    from maskjob.storage import database, schema, writes

    engine = database.make_engine(url)
    step = settings.score_batch_frames if batched else 1
    for start in range(0, len(frames), step):
        chunk = range(start, min(start + step, len(frames)))
        crops = [crop_face(images[k], det.box, crop_scale) for k in chunk for det in found[k]]
        if batched:
            probs = classifier.predict_proba(crops) if crops else np.empty((0, len(CLASSES)))
        else:
            probs = np.array([classifier.predict_proba([crop])[0] for crop in crops]).reshape(-1, len(CLASSES))
        per_frame, j = [], 0
        for k in chunk:
            per_frame.append([(det, probs[j + i]) for i, det in enumerate(found[k])])
            j += len(found[k])
        decoded = [DecodedFrame(frames[k], images[k], f"{k:064x}", None) for k in chunk]
        rows = image_rows(decoded, per_frame, version_id, None)
        if batched:
            with engine.begin() as conn:
                writes.insert_images_and_faces(conn, rows)
            continue
        for row in rows:
            with engine.begin() as conn:
                writes.insert_images_and_faces(conn, [dict(row, faces=[])])
                image_id = conn.execute(sa.select(schema.Image.id).where(schema.Image.path == row["path"])).scalar_one()
            for face in row["faces"]:
                with engine.begin() as conn:
                    conn.execute(sa.insert(schema.Face), [dict(face, image_id=image_id, model_version_id=version_id)])
    engine.dispose()
    return len(frames)


def write_rows_per_s(url: str, ckpt: Path, n_images: int, batch_frames: int) -> float:
    """Rows/s of the scorer's batched image+face inserts (two faces per image)."""
    from maskjob import timeutil
    from maskjob.storage import writes

    engine, version = champion_db(url, ckpt)
    now = timeutil.utcnow()
    face = {"x1": 10, "y1": 10, "x2": 60, "y2": 70, "detector_score": 0.9, "label": "with_mask",
            "p_with_mask": 0.8, "p_without_mask": 0.1, "p_partial_mask": 0.1, "confidence": 0.8}
    token = f"{time.time_ns():x}"
    rows = [{"path": f"bench-{token}/{i:08d}.jpg", "content_sha256": f"{i:064x}", "camera_id": "cam", "captured_at": now,
             "width": 640, "height": 480, "status": "ok", "reason": None, "n_faces": 2,
             "model_version_id": version.id, "scoring_run_id": None, "scored_at": now,
             "faces": [dict(face, face_index=0), dict(face, face_index=1)]} for i in range(n_images)]
    began = time.perf_counter()
    for i in range(0, n_images, batch_frames):
        with engine.begin() as conn:
            writes.insert_images_and_faces(conn, rows[i:i + batch_frames])
    seconds = time.perf_counter() - began
    engine.dispose()
    return 3 * n_images / seconds


@contextlib.contextmanager
def throwaway_postgres() -> Iterator[str | None]:
    """A temporary cluster run as OS user postgres, or ``None`` when that is impossible."""
    if not (PG_BIN / "initdb").is_file() or os.geteuid() != 0 or shutil.which("runuser") is None:
        yield None
        return
    base = Path(tempfile.mkdtemp(prefix="maskjob-bench-pg-"))
    shutil.chown(base, "postgres", "postgres")

    def as_pg(*argv: str | Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["runuser", "-u", "postgres", "--", *map(str, argv)], capture_output=True, text=True)

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    try:
        as_pg(PG_BIN / "initdb", "-D", base / "data", "-A", "trust", "-U", "postgres", "--no-sync", "-E", "UTF8")
        started = as_pg(PG_BIN / "pg_ctl", "-D", base / "data", "-l", base / "log", "-w", "start",
                        "-o", f"-p {port} -k {base} -c listen_addresses=127.0.0.1")
        if started.returncode != 0:
            yield None
            return
        try:
            yield f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres"
        finally:
            as_pg(PG_BIN / "pg_ctl", "-D", base / "data", "-m", "fast", "-w", "stop")
    finally:
        shutil.rmtree(base, ignore_errors=True)


def stored_quality(url: str, frames: list, truth: dict) -> dict[str, float]:
    """Recall (all faces and per class, IoU >= MIN_IOU) and precision of the face rows stored
    for ``frames``."""
    import sqlalchemy as sa

    from maskjob.scoring.matching import match_boxes
    from maskjob.storage import database, schema

    engine = database.make_engine(url)
    with engine.connect() as conn:
        rows = conn.execute(sa.select(schema.Image.path, schema.Face.x1, schema.Face.y1, schema.Face.x2,
                                      schema.Face.y2).join(schema.Image, schema.Face.image_id == schema.Image.id)).all()
    engine.dispose()
    found: dict[str, list] = defaultdict(list)
    for path, *box in rows:
        found[path].append(tuple(box))
    hits, totals = defaultdict(int), defaultdict(int)
    n_found = n_matched = 0
    for frame in frames:
        gt = truth.get(frame.rel_path, [])
        for _, label in gt:
            totals[label] += 1
        matches = match_boxes([b for b, _ in gt], found[frame.rel_path], MIN_IOU)
        for ti, _ in matches:
            hits[gt[ti][1]] += 1
        n_found += len(found[frame.rel_path])
        n_matched += len(matches)
    out = {c: hits[c] / totals[c] if totals[c] else float("nan") for c in CLASSES}
    out["recall"] = sum(hits.values()) / max(1, sum(totals.values()))
    out["precision"] = n_matched / n_found if n_found else float("nan")
    out["faces"] = sum(totals.values())
    return out


def detection_options(settings: Settings) -> dict[str, Settings]:
    """The configurations compared end to end, by label; the first is today's."""
    today = replace(settings, detector="mtcnn", min_face_px=20, mtcnn_scale_factor=0.709, face_size_recheck_frames=1)
    ranged = replace(today, face_size_recheck_frames=settings.face_size_recheck_frames)
    ranges = (f"per-camera face-size ranges (margin {settings.face_size_margin}, full search every "
              f"{settings.face_size_recheck_frames}th frame of a camera and below {{}} faces of history)")
    return {
        "today: MTCNN, full pyramid (step 0.709) from min_face_px 20 in every frame": today,
        ranges.format(settings.face_size_min_history): ranged,
        ranges.format(20): replace(ranged, face_size_min_history=20),
        "MTCNN from min_face_px 30 in every frame": replace(today, min_face_px=30),
        "MTCNN from min_face_px 40 in every frame": replace(today, min_face_px=40),
        "MTCNN pyramid step 0.6 from min_face_px 20": replace(today, mtcnn_scale_factor=0.6),
        ranges.format(settings.face_size_min_history) + ", pyramid step 0.6": replace(ranged, mtcnn_scale_factor=0.6),
        ranges.format(settings.face_size_min_history).replace(f"margin {settings.face_size_margin}", "margin 1.1"):
            replace(ranged, face_size_margin=1.1),
        "Ultra-Light RFB-640 (`ultralight`, threshold 0.6)": replace(today, detector="ultralight"),
    }


def options_comparison(settings: Settings, inbox: Path, frames: list, truth: dict, ckpt: Path, work: Path,
                       repeats: int) -> None:
    """Today's configuration against every option of :func:`detection_options`, end to end.

    The frames captured before the inbox's median capture time are scored first, with today's
    configuration, into a template database: that is each camera's history. The later half is
    then scored ``repeats`` times by every option, interleaved, each time into a fresh copy of
    the template.
    """
    from maskjob.scoring.score import score

    ordered = sorted(f.captured_at for f in frames)
    middle = ordered[len(ordered) // 2]
    measured = [f for f in frames if f.captured_at >= middle]
    configs = detection_options(settings)
    template = work / "options-history.db"
    engine, _ = champion_db(f"sqlite:///{template}", ckpt)
    history = score(engine, next(iter(configs.values())), inbox, until=middle, progress=False)
    engine.dispose()
    runs: dict[str, list[dict[str, float]]] = {label: [] for label in configs}
    quality: dict[str, dict[str, float]] = {}
    for k in range(repeats):
        for i, (label, config) in enumerate(configs.items()):
            copy = work / f"options-{i}-{k}.db"
            shutil.copyfile(template, copy)
            url = f"sqlite:///{copy}"
            runs[label].append(timed(lambda: end_to_end_since(config, inbox, url, middle)))
            quality[label] = stored_quality(url, measured, truth)
    faces = next(iter(quality.values()))["faces"]
    print(f"\n| `maskjob score` end to end on the {len(measured)} frames ({faces} faces) from {middle:%H:%M} UTC on "
          f"(history: the {history.n_frames} earlier frames, {history.n_faces} faces), median (min-max) of {repeats} "
          "| frames/s | frames per CPU-s | load | x today | recall, all faces | "
          + " | ".join(CLASSES) + " | precision |")
    print("|---" * (7 + len(CLASSES)) + "|")
    base = statistics.median(r["frames_per_cpu_s"] for r in next(iter(runs.values())))
    for label, rs in runs.items():
        q = quality[label]
        print(f"| {label} | {median_range(rs, 'frames_per_s')} | {median_range(rs, 'frames_per_cpu_s')} "
              f"| {statistics.mean(r['load'] for r in rs):.2f} "
              f"| {statistics.median(r['frames_per_cpu_s'] for r in rs) / base:.2f} | {q['recall']:.3f} | "
              + " | ".join(f"{q[c]:.3f}" for c in CLASSES) + f" | {q['precision']:.3f} |", flush=True)


def end_to_end_since(settings: Settings, inbox: Path, url: str, since: datetime) -> int:
    from maskjob.scoring.score import score
    from maskjob.storage import database

    with database.engine_for(url) as engine:
        summary = score(engine, settings, inbox, since=since, progress=False)
    return summary.n_frames


def median_range(runs: list[dict[str, float]], key: str, fmt: str = ".1f") -> str:
    values = [r[key] for r in runs]
    if len(values) == 1:
        return format(values[0], fmt)
    return f"{format(statistics.median(values), fmt)} ({format(min(values), fmt)}-{format(max(values), fmt)})"


def main() -> None:
    import torch

    from maskjob.ml.checkpoint import load_classifier

    args = parse_args()
    command = shlex.join(["python", "benchmarks/score_throughput.py", *sys.argv[1:]])
    work = Path(tempfile.mkdtemp(prefix="maskjob-bench-"))
    settings = make_settings(args, work)
    inbox, frames, images = demo_frames(args, settings, work)
    ckpt = prepare_checkpoint(args, work)
    classifier = load_classifier(ckpt)
    load = " / ".join(f"{v:.1f}" for v in os.getloadavg())
    print(f"`{command}`\n\n{len(frames)} frames {images[0].shape[1]}x{images[0].shape[0]}, "
          f"torch threads {torch.get_num_threads()}, {os.cpu_count()} CPUs, load average {load} (1/5/15 min), "
          f"classifier {classifier.meta['arch']}, batch {args.batch_frames} frames, "
          f"MTCNN min_face_px {settings.min_face_px}\n")

    if args.only_options:
        options_comparison(settings, inbox, frames, read_truth(inbox), ckpt, work, args.repeats)
        from detectors import detector_table

        print(f"\nEvery detector that ships weights, on all {len(frames)} frames, each box mapped to the truth's "
              "shape (benchmarks/detectors.py):\n")
        detector_table(args.detector_specs.split(","), settings, frames, images, read_truth(inbox))
        print(f"\nLoad average at the end {' / '.join(f'{v:.2f}' for v in os.getloadavg())}.")
        shutil.rmtree(work, ignore_errors=True)
        return
    quality = detector_quality(args.detectors.split(","), settings, frames, images, read_truth(inbox))
    print("| detector | recall, all faces | " + " | ".join(f"recall {c}" for c in CLASSES)
          + " | precision | detect frames/s (torch: one thread; cv2.dnn: its own threads) | frames per CPU-s |")
    print("|---" * (5 + len(CLASSES)) + "|")
    for q in quality:
        print(f"| {q['detector']} | {q['recall']:.3f} ({q['faces']} faces) | "
              + " | ".join(f"{q[c]:.3f}" for c in CLASSES)
              + f" | {q['precision']:.3f} | {q['frames_per_s']:.1f} | {q['frames_per_cpu_s']:.1f} |")

    t_detect, t_classify, n_faces = one_worker(settings, classifier, images)
    model_limit(settings, classifier, images[:2 * args.batch_frames])
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in ("limit", "e2e", "naive", "naive1")}
    for k in range(args.repeats):
        urls = {name: f"sqlite:///{work / f'{name}-{k}.db'}" for name in ("e2e", "naive", "naive1")}
        version_id = {}
        for name, url in urls.items():
            engine, version = champion_db(url, ckpt)
            engine.dispose()
            version_id[name] = version.id
        runs["limit"].append(timed(lambda: model_limit(settings, classifier, images)))
        runs["e2e"].append(timed(lambda: end_to_end(settings, inbox, urls["e2e"])))
        runs["naive"].append(timed(lambda: naive(settings, classifier, frames, urls["naive"], version_id["naive"])))
        with torch_threads(1):
            runs["naive1"].append(timed(lambda: naive(settings, classifier, frames, urls["naive1"],
                                                      version_id["naive1"])))
    med = {name: statistics.median(r["frames_per_s"] for r in rs) for name, rs in runs.items()}
    labels = {
        "limit": f"limit: detector + classifier forward on preloaded frames, {torch.get_num_threads()} batches "
                 "at once, one torch thread each, no I/O",
        "e2e": "end-to-end `score` (decode, detect, classify, SQLite write)",
        "naive": f"naive: one frame, one face forward, one commit at a time ({torch.get_num_threads()} torch threads)",
        "naive1": "naive on one torch thread",
    }
    print(f"\n| {settings.detector} (min_face_px {settings.min_face_px}) + {classifier.meta['arch']}, "
          f"{len(frames)} frames, {n_faces} faces, median (min-max) of {args.repeats} | frames/s | frames per CPU-s "
          "| load | x limit | x naive |")
    print("|---|---|---|---|---|---|")
    for name, label in labels.items():
        rs = runs[name]
        print(f"| {label} | {median_range(rs, 'frames_per_s')} | {median_range(rs, 'frames_per_cpu_s')} "
              f"| {statistics.mean(r['load'] for r in rs):.1f} | {med[name] / med['limit']:.2f} "
              f"| {med[name] / med['naive']:.2f} |")
    print(f"\nload: the 1-minute load average while the row ran, this benchmark's own threads included. "
          f"One worker thread alone: detector {len(images) / t_detect:.1f} frames/s, "
          f"classifier {n_faces / t_classify:.0f} faces/s. End-to-end cannot beat the limit, so "
          f"limit / naive ({med['limit'] / med['naive']:.2f}) bounds end-to-end / naive with this detector: "
          f"the detector's forward passes take {t_detect / (t_detect + t_classify):.0%} of the model time "
          "and gain little from batching on a CPU.")

    from maskjob.scoring.detectors import create_detector

    detector = create_detector(settings.detector, settings)
    found = detector.detect_batch(images)
    stages: dict[str, list[dict[str, float]]] = {"batched": [], "naive": []}
    for k in range(args.repeats):
        for name in stages:
            url = f"sqlite:///{work / f'stages-{name}-{k}.db'}"
            engine, version = champion_db(url, ckpt)
            engine.dispose()
            stages[name].append(timed(lambda: after_detection(name == "batched", settings, classifier, frames, images,
                                                              found, detector.crop_scale, url, version.id)))
    print(f"\n| stages after detection (crop, classify, SQLite write) on the detections of {settings.detector}, "
          f"{n_faces} faces, {torch.get_num_threads()} torch threads, median (min-max) of {args.repeats} "
          "| frames/s | frames per CPU-s | x naive |")
    print("|---|---|---|---|")
    naive_stages = statistics.median(r["frames_per_s"] for r in stages["naive"])
    for name, label in (("batched", f"batched: one forward and one transaction per {args.batch_frames} frames"),
                        ("naive", "naive: one forward per face, one commit per row")):
        rs = stages[name]
        print(f"| {label} | {median_range(rs, 'frames_per_s')} | {median_range(rs, 'frames_per_cpu_s')} "
              f"| {statistics.median(r['frames_per_s'] for r in rs) / naive_stages:.2f} |")

    print(f"\n| database | batched writes, rows/s ({args.write_images} images + {2 * args.write_images} faces, "
          f"{args.batch_frames} images per transaction) |")
    print("|---|---|")
    sqlite_rows_per_s = write_rows_per_s(f"sqlite:///{work / 'write.db'}", ckpt, args.write_images, args.batch_frames)
    print(f"| SQLite | {sqlite_rows_per_s:.0f} |")
    with contextlib.ExitStack() as stack:
        pg_url = args.pg_url or stack.enter_context(throwaway_postgres())
        if pg_url:
            print(f"| PostgreSQL | {write_rows_per_s(pg_url, ckpt, args.write_images, args.batch_frames):.0f} |")
        else:
            print("| PostgreSQL | not measured: pass --pg-url or install postgresql-15 and run as root |")
    options_comparison(settings, inbox, frames, read_truth(inbox), ckpt, work, args.repeats)
    print(f"\nLoad average at the end {' / '.join(f'{v:.1f}' for v in os.getloadavg())}.")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
