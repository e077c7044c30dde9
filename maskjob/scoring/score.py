"""Batch scoring of CCTV frames into the database (ad-hoc prediction: :mod:`maskjob.scoring.predict`).

Frames come from :mod:`maskjob.scoring.frames` (discovery, capture time, shards, decoding). Scoring
is a pipeline: a thread pool decodes frames; batches of ``settings.score_batch_frames``
frames go to :func:`classify_batches`, which runs the detector and the classifier (every
face of a batch in one forward pass) on several batches at once; the calling thread writes
each batch, in order, in one transaction: an image row and its face rows commit together.
Unique keys plus ``INSERT .. ON CONFLICT DO NOTHING`` and skipping paths already scored by
the model make a rerun (after a crash or not) add exactly the missing rows; the run row's
counts are written in each batch's transaction from the rows it actually inserted, so they
always equal the committed rows.

Each run's ``scoring_runs`` row is a lease on its model, shard and interval: taken in one
serialised transaction (SQLite: BEGIN IMMEDIATE; PostgreSQL: an advisory lock on the key),
kept alive by a heartbeat thread and each batch commit. Another run on the same key waits
(``score_lease_wait_s``) or stops with :class:`ShardBusy`; only a run whose heartbeat is older
than its lease (``score_lease_s``, default 60 s) is taken for dead and closed as failed
("interrupted: ..."). In the main thread, SIGTERM and SIGINT let the batch in flight commit
(or roll back), close the run as failed ("interrupted: SIGTERM") and are then passed on.

Example:
    >>> summary = score(engine, settings, settings.inbox_dir, since, until)   # doctest: +SKIP
    >>> print(summary.format_line())                                         # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import logging
import os
import signal
import socket
import threading
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import closing, contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from itertools import count, tee
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from maskjob import CLASSES
from maskjob.config import Settings
from maskjob.errors import MaskjobError
from maskjob.scoring.detectors import FaceDetector, create_detector
from maskjob.scoring.faces import FaceClassifier, FrameFaces, classify_isolating, face_row, failure_reason
from maskjob.scoring.frames import DecodedFrame, Frame, decode_frame, discover_frames, shard_frames
from maskjob.storage.database import session
from maskjob.storage.registry import load_registered
from maskjob.storage.schema import Image, ModelVersion, ScoringRun
from maskjob.storage.writes import insert_scored_images, path_key, storable_text
from maskjob.timeutil import to_naive_utc, utcnow

__all__ = [
    "HEARTBEAT_MAX_S",
    "LEASE_S",
    "LEASE_WAIT_S",
    "LeaseLost",
    "ScoreSummary",
    "ScoringInterrupted",
    "ShardBusy",
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


def _scored_keys(engine: Engine, model_version_id: int, *, retry_unreadable: bool) -> set[str]:
    """``path_key`` of the paths the model has a row for (not counting ``unreadable`` ones when retrying them)."""
    query = sa.select(Image.path_key).where(Image.model_version_id == model_version_id)
    if retry_unreadable:
        query = query.where(Image.status != "unreadable")
    with engine.connect() as conn:
        return {key for (key,) in conn.execute(query)}


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


def _tally(summary: ScoreSummary, stored: Sequence[dict[str, Any]], n_skipped: int = 0) -> None:
    """Add a committed batch to ``summary``: the rows it stored, and ``n_skipped`` rows that
    another run had stored first."""
    summary.n_skipped += n_skipped
    for row in stored:
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


def _run_counts(summary: ScoreSummary, stored: Sequence[dict[str, Any]] = (), n_skipped: int = 0) -> dict[str, int]:
    """The run row's counts: ``summary``'s, plus a batch that is about to commit."""
    status = [row["status"] for row in stored]
    return {
        "n_frames": summary.n_frames + len(stored), "n_faces": summary.n_faces + sum(r["n_faces"] for r in stored),
        "n_no_face": summary.n_no_face + status.count("no_face"),
        "n_unreadable": summary.n_unreadable + status.count("unreadable"),
        "n_skipped": summary.n_skipped + n_skipped,
    }


# --- Leases: one live run per (model, shard, interval) ------------------------------------

LEASE_S = 60.0
"""Default ``score_lease_s``: a run whose heartbeat is older than this is taken for dead."""
LEASE_WAIT_S = 0.0
"""Default ``score_lease_wait_s``: how long a run waits for a live run of its shard to end."""
HEARTBEAT_MAX_S = 5.0
"""A run's heartbeat period: this, or a quarter of its lease when that is shorter."""
POLL_MAX_S = 1.0


class ShardBusy(MaskjobError):
    """Another live run holds the lease on this model, shard and interval."""


class LeaseLost(MaskjobError):
    """This run's lease was taken over (its heartbeat had stopped for longer than its lease)."""


class ScoringInterrupted(MaskjobError):
    """SIGTERM or SIGINT stopped the run: it is closed as failed, its committed frames are kept."""

    def __init__(self, signum: int) -> None:
        self.signum = signum
        self.signame = signal.Signals(signum).name
        super().__init__(f"scoring interrupted by {self.signame}: the run is closed as failed "
                         f"('interrupted: {self.signame}') and its committed frames are kept; rerun to score the rest")


def _knob(settings: Settings, name: str, given: float | None, default: float, *, positive: bool) -> float:
    """``given``, else setting ``name`` (or, until Settings has it, ``$MASKJOB_<NAME>``), else ``default``."""
    source = "argument"
    value: Any = given
    if value is None and hasattr(settings, name):
        value, source = getattr(settings, name), f"setting {name}"
    env = f"MASKJOB_{name.upper()}"
    if value is None and os.environ.get(env):
        value, source = os.environ[env], f"${env}"
    if value is None:
        return default
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = float("nan")
    if not (number > 0 if positive else number >= 0) or number == float("inf"):
        raise MaskjobError(f"bad {name} {value!r} from {source}: expected a number of seconds "
                           f"{'> 0' if positive else '>= 0'}. Fix the value and run again.")
    return number


@dataclass(frozen=True)
class _RunKey:
    """What a lease is on: model version, shard and capture interval."""

    model_id: int
    model_version: str
    shard: tuple[int, int]
    since: datetime | None
    until: datetime | None

    def where(self) -> list[sa.ColumnElement[bool]]:
        same = [ScoringRun.model_version_id == self.model_id, ScoringRun.shard_index == self.shard[0],
                ScoringRun.shard_count == self.shard[1]]
        for column, value in ((ScoringRun.interval_start, self.since), (ScoringRun.interval_end, self.until)):
            same.append(column.is_(None) if value is None else column == value)
        return same

    def lock_id(self) -> int:
        """A signed 64-bit number for ``pg_advisory_xact_lock`` (a collision only serialises two keys)."""
        text = f"maskjob.scoring_runs:{self.model_id}:{self.shard[0]}/{self.shard[1]}:{self.since}:{self.until}"
        return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big", signed=True)

    def describe(self) -> str:
        interval = f"[{self.since or '-inf'}, {self.until or '+inf'})"
        return f"shard {self.shard[0]}/{self.shard[1]} of {interval} with model {self.model_version}"


def _now(conn: sa.Connection) -> Any:
    """The database's clock as naive UTC, for ``heartbeat_at``: on PostgreSQL the server's
    (hosts' clocks may disagree), on SQLite this host's (the only one that can open the file)."""
    if conn.dialect.name == "postgresql":
        return sa.func.timezone("UTC", sa.func.clock_timestamp())
    return utcnow()


def _read_now(conn: sa.Connection) -> datetime:
    now = _now(conn)
    return now if isinstance(now, datetime) else conn.execute(sa.select(now)).scalar_one()


def _heartbeat_age(run: Any, now: datetime) -> float:
    """Seconds since ``run`` last showed life (runs from before migration 0003: since it started)."""
    return (now - (run.heartbeat_at or run.started_at)).total_seconds()


def _holder(run: Any) -> str:
    return f"{'pid unknown' if run.pid is None else f'pid {run.pid}'} on host {run.hostname or 'unknown'}"


def _try_lease(conn: sa.Connection, key: _RunKey, lease_s: float) -> tuple[int | None, Any]:
    """In one transaction: the new run's id, or ``(None, live run)`` when a live run holds the key.

    Serialised per key: SQLite's transactions all take the write lock first (BEGIN IMMEDIATE),
    and on PostgreSQL an advisory lock on the key is held until this transaction ends.
    """
    if conn.dialect.name == "postgresql":
        conn.execute(sa.select(sa.func.pg_advisory_xact_lock(key.lock_id())))
    now = _read_now(conn)
    running = conn.execute(sa.select(ScoringRun).where(*key.where(), ScoringRun.status == "running")
                           .order_by(ScoringRun.id)).all()
    live = [r for r in running if _heartbeat_age(r, now) <= (r.lease_s or lease_s)]
    if live:
        return None, live[-1]
    run_id = conn.execute(sa.insert(ScoringRun).returning(ScoringRun.id).values(
        interval_start=key.since, interval_end=key.until, shard_index=key.shard[0], shard_count=key.shard[1],
        model_version_id=key.model_id, started_at=utcnow(), status="running", n_skipped=0,
        n_frames=0, n_faces=0, n_no_face=0, n_unreadable=0,
        heartbeat_at=now, lease_s=lease_s, pid=os.getpid(), hostname=storable_text(socket.gethostname())[0],
    )).scalar_one()
    for dead in running:
        conn.execute(sa.update(ScoringRun).where(ScoringRun.id == dead.id, ScoringRun.status == "running").values(
            status="failed",
            error=f"interrupted: still running when run {run_id} started on the same shard and interval, with no "
                  f"heartbeat for {_heartbeat_age(dead, now):.0f} s (lease {dead.lease_s or lease_s:g} s; "
                  f"{_holder(dead)}); its committed frames are kept "
                  f"and run {run_id} scores the rest",
        ))
    if running:
        logger.warning("marked %d interrupted scoring run(s) of this shard and interval as failed", len(running))
    return run_id, None


def _take_lease(engine: Engine, key: _RunKey, lease_s: float, wait_s: float, stop: _Stop) -> int:
    """Start the run (its ``running`` row) once no live run holds ``key``, waiting up to ``wait_s``.

    Runs of the key whose heartbeat is older than their lease are closed as failed
    ("interrupted: ..."); a live run is never touched.

    Raises:
        ShardBusy: a live run still holds the key after ``wait_s`` seconds.
    """
    deadline = time.monotonic() + wait_s
    for attempt in count():
        with engine.begin() as conn:
            run_id, holder = _try_lease(conn, key, lease_s)
            now = _read_now(conn)
        if run_id is not None:
            return run_id
        left = deadline - time.monotonic()
        if left <= 0:
            waited = f"; waited {wait_s:g} s" if wait_s else ""
            raise ShardBusy(
                f"{key.describe()} is being scored by run {holder.id} ({_holder(holder)}, heartbeat "
                f"{_heartbeat_age(holder, now):.1f} s ago{waited}). Let it finish; if its process is gone, rerun when "
                f"its lease has run out ({holder.lease_s or lease_s:g} s without a heartbeat), or set "
                "score_lease_wait_s to wait for it."
            )
        if attempt == 0:
            logger.warning("%s is being scored by run %d (%s); waiting up to %.0f s",
                           key.describe(), holder.id, _holder(holder), left)
        stop.event.wait(min(left, POLL_MAX_S, lease_s / 4))
        stop.check()
    raise AssertionError("unreachable")


def _beat(conn: sa.Connection, run_id: int, **values: Any) -> bool:
    """Refresh the run's heartbeat (and ``values``) if it is still ``running``; whether it was."""
    update = sa.update(ScoringRun).where(ScoringRun.id == run_id, ScoringRun.status == "running")
    return conn.execute(update.values(heartbeat_at=_now(conn), **values)).rowcount == 1


class _Heartbeat:
    """A thread refreshing the run's ``heartbeat_at`` every ``every_s`` seconds while it runs."""

    def __init__(self, engine: Engine, run_id: int, every_s: float) -> None:
        self.engine, self.run_id, self.every_s = engine, run_id, every_s
        self.lost = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"maskjob-heartbeat-run-{run_id}", daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            try:
                with self.engine.begin() as conn:
                    alive = _beat(conn, self.run_id)
            except Exception as exc:  # a hiccup: the lease outlasts several beats
                logger.warning("heartbeat of scoring run %d failed: %s", self.run_id, exc)
                continue
            if not alive:
                self.lost = True
                return

    def check(self) -> None:
        if self.lost:
            raise LeaseLost(f"scoring run {self.run_id} lost its lease: another run found its heartbeat older "
                            "than its lease and closed it; its committed frames are kept, rerun to score the rest")

    def __enter__(self) -> _Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()


# --- Signals: SIGTERM/SIGINT close the run after the batch in flight ------------------------

class _Stop:
    """The first SIGTERM/SIGINT asks the run to stop after its batch in flight; a second stops it at once."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self.signum: int | None = None

    def handler(self, signum: int, _frame: Any) -> None:
        if self.signum is not None:
            raise ScoringInterrupted(signum)
        self.signum = signum
        self.event.set()
        logger.warning("%s: stopping after the batch in flight (send it again to stop at once)",
                       signal.Signals(signum).name)

    def check(self) -> None:
        if self.signum is not None:
            raise ScoringInterrupted(self.signum)


@contextmanager
def _signals_deferred(stop: _Stop) -> Iterator[None]:
    """Route SIGTERM and SIGINT to ``stop`` inside the block, then restore the previous handlers.

    Only in the main thread (Python runs handlers there; :func:`score` may run in a worker
    thread, which then keeps whatever its process does on a signal). Ignored signals stay ignored.
    """
    installed: dict[int, Any] = {}
    if threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGTERM, signal.SIGINT):
            previous = signal.getsignal(signum)
            if previous in (signal.SIG_IGN, None):
                continue
            try:
                signal.signal(signum, stop.handler)
            except ValueError:  # not the main interpreter
                break
            installed[signum] = previous
    try:
        yield
    finally:
        for signum, previous in installed.items():
            signal.signal(signum, previous)


def _pass_on(signum: int) -> None:
    """Do what the signal would have done without :func:`score`: the restored handler, or the
    default action (SIGTERM ends the process)."""
    if threading.current_thread() is not threading.main_thread():
        return
    previous = signal.getsignal(signum)
    if callable(previous):
        previous(signum, None)  # e.g. KeyboardInterrupt, or Airflow's task termination
    elif previous == signal.SIG_DFL:
        os.kill(os.getpid(), signum)


# --- The run --------------------------------------------------------------------------------

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
    lease_s: float | None = None,
    wait_s: float | None = None,
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
        lease_s: this run's lease: another run takes it for dead once its heartbeat (every
            ``min(5, lease_s / 4)`` s) is older. Default setting ``score_lease_s``, else
            ``$MASKJOB_SCORE_LEASE_S``, else :data:`LEASE_S`.
        wait_s: how long to wait while a live run holds this model, shard and interval.
            Default setting ``score_lease_wait_s``, else ``$MASKJOB_SCORE_LEASE_WAIT_S``, else 0.

    Returns:
        The run's counts; frames already scored by the model are skipped, not rescored, except
        frames recorded ``unreadable`` when ``settings.retry_unreadable`` is on: each is read
        again and its old row replaced in the transaction that writes the new one. The run
        row's counts always equal its committed rows.

    Raises:
        MaskjobError: no champion / unknown version, missing checkpoint or detector files;
            :class:`ShardBusy` (a live run holds the shard), :class:`LeaseLost`,
            :class:`ScoringInterrupted` (SIGTERM/SIGINT in the main thread: after the batch in
            flight commits or rolls back, the run is closed as failed "interrupted: SIGTERM"
            and the signal is passed on: the previous handler runs, or the default action
            ends the process).
    """
    lease_s = _knob(settings, "score_lease_s", lease_s, LEASE_S, positive=True)
    wait_s = _knob(settings, "score_lease_wait_s", wait_s, LEASE_WAIT_S, positive=False)
    model = _resolve_model(engine, model_version)
    classifier = load_registered(model)
    detector = create_detector(settings.detector, settings)
    inbox = Path(inbox)
    frames = shard_frames(discover_frames(inbox, since, until), *shard)
    key = _RunKey(model.id, model.version, shard, to_naive_utc(since) if since else None,
                  to_naive_utc(until) if until else None)
    stop = _Stop()
    try:
        with _signals_deferred(stop):
            summary = _run(engine, settings, inbox, frames, key, detector, classifier, progress, lease_s, wait_s, stop)
    except ScoringInterrupted as exc:
        _pass_on(exc.signum)
        raise
    if stop.signum is not None:  # came after the last batch: the run finished; stop now as asked
        _pass_on(stop.signum)
    return summary


def _run(engine: Engine, settings: Settings, inbox: Path, frames: Sequence[Frame], key: _RunKey,
         detector: FaceDetector, classifier: FaceClassifier, progress: bool | None, lease_s: float, wait_s: float,
         stop: _Stop) -> ScoreSummary:
    """Take the lease, score the frames not yet scored, close the run."""
    run_id = _take_lease(engine, key, lease_s, wait_s, stop)
    summary = ScoreSummary(run_id, key.model_version)
    started = time.perf_counter()
    try:
        with _Heartbeat(engine, run_id, min(HEARTBEAT_MAX_S, lease_s / 4)) as heartbeat:
            done = _scored_keys(engine, key.model_id, retry_unreadable=settings.retry_unreadable)
            todo = [f for f in frames if path_key(f.rel_path) not in done]
            summary.n_skipped = len(frames) - len(todo)
            with engine.begin() as conn:
                _beat(conn, run_id, n_skipped=summary.n_skipped)
            logger.info("scoring %d frames (%d already scored) with %s, run %d",
                        len(todo), summary.n_skipped, key.model_version, run_id)
            stop.check()
            _score_frames(engine, settings, inbox.resolve(), todo, detector, classifier, key.model_id, summary,
                          progress, heartbeat, stop)
    except BaseException as exc:
        summary.elapsed_s = time.perf_counter() - started
        error = f"interrupted: {exc.signame}" if isinstance(exc, ScoringInterrupted) else f"{type(exc).__name__}: {exc}"
        try:
            _close_run(engine, summary, "failed", error)
        except sa.exc.SQLAlchemyError:  # the database is what failed: keep the original error
            logger.exception("could not mark scoring run %d as failed", run_id)
        raise
    summary.elapsed_s = time.perf_counter() - started
    if not _close_run(engine, summary, "succeeded", None):
        raise LeaseLost(f"scoring run {run_id} scored all its frames, but another run had closed it after its "
                        "heartbeat stopped for longer than its lease; every frame is stored")
    logger.info(summary.format_line())
    return summary


def _close_run(engine: Engine, summary: ScoreSummary, status: str, error: str | None) -> bool:
    """Record the run's end and committed counts, unless another run closed it; whether it did."""
    values: dict[str, Any] = {**_run_counts(summary), "status": status, "finished_at": utcnow()}
    if error is not None:
        values["error"] = storable_text(error)[0][:4000]
    with engine.begin() as conn:
        closed = _beat(conn, summary.run_id, **values)
    if not closed:
        logger.warning("scoring run %d was already closed by another run; not marking it %s", summary.run_id, status)
    return closed


def _write_batch(engine: Engine, rows: Sequence[dict[str, Any]], summary: ScoreSummary, retry_unreadable: bool) -> None:
    """One transaction: the batch's rows and the run's counts. ``summary`` counts the batch
    only once it has committed, so the run's counts always equal its committed rows."""
    with engine.begin() as conn:
        if retry_unreadable:
            conn.execute(sa.delete(Image).where(
                Image.model_version_id == rows[0]["model_version_id"], Image.status == "unreadable",
                Image.path_key.in_([path_key(row["path"]) for row in rows])))
        stored = insert_scored_images(conn, rows)
        n_skipped = len(rows) - len(stored)
        if not _beat(conn, summary.run_id, **_run_counts(summary, stored, n_skipped)):
            raise LeaseLost(f"scoring run {summary.run_id} lost its lease: another run found its heartbeat older "
                            "than its lease and closed it; this batch was rolled back, the committed ones are kept")
    _tally(summary, stored, n_skipped)


def _score_frames(engine: Engine, settings: Settings, root: Path, todo: Sequence[Frame], detector: FaceDetector,
                  classifier: FaceClassifier, model_id: int, summary: ScoreSummary, progress: bool | None,
                  heartbeat: _Heartbeat, stop: _Stop) -> None:
    """Decode, detect, classify and write ``todo`` in batches (:func:`_write_batch`); after each
    batch, stop if a signal came or the lease was lost."""
    from tqdm import tqdm

    with ThreadPoolExecutor(DECODE_THREADS) as pool, tqdm(
        total=len(todo), unit="frame", disable=None if progress is None else not progress
    ) as bar:
        decoded = _prefetch(pool, todo, lambda f: decode_frame(f, root, settings.max_image_pixels),
                            window=2 * settings.score_batch_frames)
        frame_batches, image_batches = tee(_batched(decoded, settings.score_batch_frames))
        images = ([d.rgb for d in batch if d.rgb is not None] for batch in image_batches)
        with closing(classify_batches(images, detector, classifier)) as found:
            for batch, found_per_frame in zip(frame_batches, found):
                _write_batch(engine, image_rows(batch, found_per_frame, model_id, summary.run_id), summary,
                             settings.retry_unreadable)
                bar.update(len(batch))
                stop.check()
                heartbeat.check()
