"""Batch scoring of CCTV frames into the database (ad-hoc prediction: :mod:`maskjob.scoring.predict`).

Frames come from :mod:`maskjob.scoring.frames` (discovery, capture time, shards, decoding). Scoring
is a pipeline: a thread pool decodes frames; batches of ``settings.score_batch_frames``
frames go to :func:`classify_batches`, which runs the detector and the classifier (every
face of a batch in one forward pass) on several batches at once; the calling thread writes
each batch, in order, in one transaction: an image row and its face rows commit together.
Unique keys plus ``INSERT .. ON CONFLICT DO NOTHING`` and skipping paths already scored by
the model make a rerun (after a crash or not) add exactly the missing rows.

Example:
    >>> summary = score(engine, settings, settings.inbox_dir, since, until)   # doctest: +SKIP
    >>> print(summary.format_line())                                         # doctest: +SKIP
"""

from __future__ import annotations

import logging
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import closing
from dataclasses import dataclass, field
from datetime import datetime
from itertools import tee
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np
import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from maskjob import CLASSES
from maskjob.config import Settings
from maskjob.errors import MaskjobError
from maskjob.scoring.detectors import FaceDetector, create_detector
from maskjob.scoring.faces import FaceClassifier, FrameFaces, classify_isolating, face_row, failure_reason
from maskjob.scoring.frames import DecodedFrame, Frame, decode_frame, discover_frames, shard_frames
from maskjob.storage.database import session
from maskjob.storage.registry import load_registered
from maskjob.storage.schema import Image, ModelVersion, ScoringRun
from maskjob.storage.writes import insert_images_and_faces
from maskjob.timeutil import to_naive_utc, utcnow

__all__ = [
    "ScoreSummary",
    "classify_batches",
    "classify_isolating",
    "failure_reason",
    "face_row",
    "image_rows",
    "load_registered",
    "score",
]

logger = logging.getLogger(__name__)

DECODE_THREADS = 2


@dataclass
class ScoreSummary:
    """What one scoring invocation did."""

    run_id: int
    model_version: str
    n_frames: int = 0
    n_skipped: int = 0
    n_faces: int = 0
    n_no_face: int = 0
    n_unreadable: int = 0
    per_class: dict[str, int] = field(default_factory=lambda: {c: 0 for c in CLASSES})
    unreadable: list[tuple[str, str]] = field(default_factory=list)
    elapsed_s: float = 0.0

    @property
    def frames_per_s(self) -> float:
        return self.n_frames / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def format_line(self) -> str:
        """One human-readable summary line."""
        classes = ", ".join(f"{c} {n}" for c, n in self.per_class.items())
        return (
            f"scored {self.n_frames} frames with model {self.model_version} (run {self.run_id}): "
            f"{self.n_faces} faces ({classes}), {self.n_no_face} without a face, "
            f"{self.n_unreadable} unreadable, {self.n_skipped} already scored; "
            f"{self.frames_per_s:.1f} frames/s"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "model_version": self.model_version,
            "n_frames": self.n_frames,
            "n_skipped": self.n_skipped,
            "n_faces": self.n_faces,
            "n_no_face": self.n_no_face,
            "n_unreadable": self.n_unreadable,
            "per_class": dict(self.per_class),
            "unreadable": [{"path": p, "reason": r} for p, r in self.unreadable],
            "elapsed_s": self.elapsed_s,
            "frames_per_s": self.frames_per_s,
        }


def _prefetch(pool: ThreadPoolExecutor, items: Iterable[Any], fn: Callable[[Any], Any], window: int) -> Iterator[Any]:
    """``map(fn, items)`` in order, with at most ``window`` calls in flight on ``pool``."""
    pending: deque[Future[Any]] = deque()
    for item in items:
        pending.append(pool.submit(fn, item))
        if len(pending) >= window:
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()


def _batched(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    batch: list[Any] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def classify_batches(
    batches: Iterable[Sequence[np.ndarray]],
    detector: FaceDetector,
    classifier: FaceClassifier,
    workers: int | None = None,
) -> Iterator[list[FrameFaces | Exception]]:
    """:func:`~maskjob.scoring.faces.classify_faces` on each batch, ``workers`` batches at once.

    Each worker thread runs torch on one thread. MTCNN is thousands of small operations per
    frame; with several intra-op threads each one ends at a barrier, and when other processes
    want the cores (other jobs, the other shard) those barriers cost 2-6x the work itself
    (measured on 2 cores). Batches in parallel use the same cores without them.

    Args:
        batches: lists of RGB frames.
        detector, classifier: shared by the workers (both are safe to call concurrently).
        workers: batches in flight; default ``torch.get_num_threads()`` (the CPU cores).

    Returns:
        Per batch, in input order, per frame, ``(detection, class probabilities)`` per face,
        or the exception the models raised on that frame alone.
    """
    import torch

    threads = torch.get_num_threads()
    workers = workers or threads
    # With torch's OpenMP backend a thread count is per thread, but set_num_threads also sets
    # the default for threads that start later: restore that afterwards.
    pool = ThreadPoolExecutor(workers, initializer=torch.set_num_threads, initargs=(1,))
    try:
        yield from _prefetch(pool, batches, lambda images: classify_isolating(images, detector, classifier),
                             window=workers + 1)
    finally:
        pool.shutdown(cancel_futures=True)
        torch.set_num_threads(threads)


def _resolve_model(engine: Engine, version: str | None) -> ModelVersion:
    from maskjob.storage.registry import champion

    if version is None:
        found = champion(engine)
        if found is None:
            raise MaskjobError(
                "no champion model in the registry; run `maskjob train` and `maskjob promote`, "
                "or pass --model VERSION"
            )
        return found
    with session(engine) as s:
        found = s.scalars(sa.select(ModelVersion).where(ModelVersion.version == version)).first()
        if found is None:
            known = s.scalars(sa.select(ModelVersion.version).order_by(ModelVersion.id)).all()
            raise MaskjobError(f"no model version {version!r} in the registry; known versions: {list(known)}")
        return found


def _scored_paths(engine: Engine, model_version_id: int, *, retry_unreadable: bool) -> set[str]:
    """Paths the model has a row for (not counting ``unreadable`` ones when retrying them)."""
    query = sa.select(Image.path).where(Image.model_version_id == model_version_id)
    if retry_unreadable:
        query = query.where(Image.status != "unreadable")
    with engine.connect() as conn:
        return {path for (path,) in conn.execute(query)}


def _close_interrupted_runs(s: Session, run: ScoringRun) -> None:
    """Mark earlier runs of the same model, shard and interval still ``running`` as ``failed``.

    Their process stopped without finishing (killed, machine lost): a live one would not be
    re-run by the DAG, and if one still is alive, its own last update overwrites this.
    """
    same = [ScoringRun.model_version_id == run.model_version_id, ScoringRun.shard_index == run.shard_index,
            ScoringRun.shard_count == run.shard_count, ScoringRun.status == "running", ScoringRun.id != run.id]
    for column, value in ((ScoringRun.interval_start, run.interval_start), (ScoringRun.interval_end, run.interval_end)):
        same.append(column.is_(None) if value is None else column == value)
    closed = s.execute(sa.update(ScoringRun).where(*same).values(
        status="failed",
        error=f"interrupted: still running when run {run.id} started on the same shard and interval; "
              f"its committed frames are kept and run {run.id} scores the rest",
    ))
    if closed.rowcount:
        logger.warning("marked %d interrupted scoring run(s) of this shard and interval as failed", closed.rowcount)


def image_rows(batch: Sequence[DecodedFrame], found_per_frame: Sequence[FrameFaces | Exception],
               model_version_id: int, run_id: int | None) -> list[dict[str, Any]]:
    """``images`` rows (with their ``faces``) for a batch, as :func:`score` writes them."""
    faces = iter(found_per_frame)
    scored_at = utcnow()
    rows = []
    for item in batch:
        f = item.frame
        row: dict[str, Any] = {
            "path": f.rel_path, "content_sha256": item.content_sha256, "camera_id": f.camera_id,
            "captured_at": f.captured_at, "width": None, "height": None, "reason": item.reason,
            "model_version_id": model_version_id, "scoring_run_id": run_id, "scored_at": scored_at,
        }
        if item.rgb is None:
            row.update(status="unreadable", n_faces=0, faces=[])
            rows.append(row)
            continue
        found = next(faces)
        if isinstance(found, Exception):
            row.update(status="unreadable", n_faces=0, faces=[], height=item.rgb.shape[0], width=item.rgb.shape[1],
                       reason=failure_reason(found))
        else:
            row.update(
                height=item.rgb.shape[0], width=item.rgb.shape[1], n_faces=len(found),
                status="ok" if found else "no_face",
                faces=[face_row(i, det, probs) for i, (det, probs) in enumerate(found)],
            )
        rows.append(row)
    return rows


def _tally(summary: ScoreSummary, rows: Sequence[dict[str, Any]]) -> None:
    for row in rows:
        summary.n_frames += 1
        summary.n_faces += row["n_faces"]
        if row["status"] == "no_face":
            summary.n_no_face += 1
        elif row["status"] == "unreadable":
            summary.n_unreadable += 1
            summary.unreadable.append((row["path"], row["reason"]))
            logger.warning("unreadable frame %s: %s", row["path"], row["reason"])
        for face in row["faces"]:
            summary.per_class[face["label"]] += 1


def _run_counts(summary: ScoreSummary) -> dict[str, int]:
    return {
        "n_frames": summary.n_frames, "n_faces": summary.n_faces, "n_no_face": summary.n_no_face,
        "n_unreadable": summary.n_unreadable, "n_skipped": summary.n_skipped,
    }


def score(
    engine: Engine,
    settings: Settings,
    inbox: str | Path,
    since: datetime | None = None,
    until: datetime | None = None,
    shard: tuple[int, int] = (0, 1),
    model_version: str | None = None,
    *,
    progress: bool | None = None,
) -> ScoreSummary:
    """Score the inbox frames captured in ``[since, until)`` of one shard into the database.

    Args:
        engine: a SQLAlchemy engine on a migrated database.
        settings: detector, batch size and pixel limit come from here.
        inbox: the CCTV inbox (``<inbox>/<camera_id>/...``).
        since, until: the capture-time interval (naive UTC, or aware); ``None`` = open.
        shard: ``(index, count)``, 0-based; shards partition the frames by path hash.
        model_version: a registered version; default the champion.
        progress: show a tqdm bar (``None``: only on a terminal).

    Returns:
        The run's counts; frames already scored by the model are skipped, not rescored, except
        frames recorded ``unreadable`` when ``settings.retry_unreadable`` is on: each is read
        again and its old row replaced in the transaction that writes the new one.

    Raises:
        MaskjobError: no champion / unknown version, missing checkpoint or detector files.
    """
    model = _resolve_model(engine, model_version)
    classifier = load_registered(model)
    detector = create_detector(settings.detector, settings)
    inbox = Path(inbox)
    frames = shard_frames(discover_frames(inbox, since, until), *shard)
    done = _scored_paths(engine, model.id, retry_unreadable=settings.retry_unreadable)
    todo = [f for f in frames if f.rel_path not in done]
    run_id = _start_run(engine, model, since, until, shard, n_skipped=len(frames) - len(todo))
    summary = ScoreSummary(run_id, model.version, n_skipped=len(frames) - len(todo))
    logger.info("scoring %d frames (%d already scored) with %s, run %d",
                len(todo), summary.n_skipped, model.version, run_id)
    update = sa.update(ScoringRun).where(ScoringRun.id == run_id)
    started = time.perf_counter()
    try:
        _score_frames(engine, settings, inbox.resolve(), todo, detector, classifier, model.id, summary, progress)
    except BaseException as exc:
        summary.elapsed_s = time.perf_counter() - started
        try:
            with engine.begin() as conn:
                conn.execute(update.values(**_run_counts(summary), status="failed", finished_at=utcnow(),
                                           error=f"{type(exc).__name__}: {exc}"))
        except sa.exc.SQLAlchemyError:
            logger.exception("could not mark scoring run %d as failed", run_id)
        raise
    summary.elapsed_s = time.perf_counter() - started
    with engine.begin() as conn:
        conn.execute(update.values(**_run_counts(summary), status="succeeded", finished_at=utcnow()))
    logger.info(summary.format_line())
    return summary


def _start_run(engine: Engine, model: ModelVersion, since: datetime | None, until: datetime | None,
               shard: tuple[int, int], n_skipped: int) -> int:
    """Insert the run's ``running`` row (closing interrupted runs of the same shard); its id."""
    with session(engine) as s:
        run = ScoringRun(
            interval_start=to_naive_utc(since) if since else None,
            interval_end=to_naive_utc(until) if until else None,
            shard_index=shard[0], shard_count=shard[1], model_version_id=model.id,
            started_at=utcnow(), status="running", n_skipped=n_skipped,
        )
        s.add(run)
        s.flush()
        _close_interrupted_runs(s, run)
        return run.id


def _score_frames(engine: Engine, settings: Settings, root: Path, todo: Sequence[Frame], detector: FaceDetector,
                  classifier: FaceClassifier, model_id: int, summary: ScoreSummary, progress: bool | None) -> None:
    """Decode, detect, classify and write ``todo`` in batches, one transaction per batch that
    also updates the run's counts, so the run row always matches its committed rows."""
    from tqdm import tqdm

    update = sa.update(ScoringRun).where(ScoringRun.id == summary.run_id)
    with ThreadPoolExecutor(DECODE_THREADS) as pool, tqdm(
        total=len(todo), unit="frame", disable=None if progress is None else not progress
    ) as bar:
        decoded = _prefetch(pool, todo, lambda f: decode_frame(f, root, settings.max_image_pixels),
                            window=2 * settings.score_batch_frames)
        frame_batches, image_batches = tee(_batched(decoded, settings.score_batch_frames))
        images = ([d.rgb for d in batch if d.rgb is not None] for batch in image_batches)
        with closing(classify_batches(images, detector, classifier)) as found:
            for batch, found_per_frame in zip(frame_batches, found):
                rows = image_rows(batch, found_per_frame, model_id, summary.run_id)
                _tally(summary, rows)
                with engine.begin() as conn:
                    if settings.retry_unreadable:
                        conn.execute(sa.delete(Image).where(
                            Image.model_version_id == model_id, Image.status == "unreadable",
                            Image.path.in_([row["path"] for row in rows])))
                    insert_images_and_faces(conn, rows)
                    conn.execute(update.values(**_run_counts(summary)))
                bar.update(len(batch))
