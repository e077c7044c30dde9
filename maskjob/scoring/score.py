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

import logging
import math
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from dataclasses import dataclass, field
from datetime import datetime
from itertools import tee
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from maskjob import CLASSES
from maskjob.config import Settings, bounds_text, within_bounds
from maskjob.errors import MaskjobError
from maskjob.scoring.detectors import FaceDetector, FaceSizeRange, create_detector
from maskjob.scoring.face_sizes import CameraFaceSizes, face_size_tracker
from maskjob.scoring.faces import (
    FaceClassifier,
    FrameFaces,
    batched,
    classify_batches,
    classify_isolating,
    face_row,
    failure_reason,
    prefetch,
)
from maskjob.scoring.frames import (
    DecodedFrame,
    Frame,
    Zones,
    camera_zone,
    decode_frame,
    discover_frames,
    shard_frames,
)
from maskjob.scoring.lease import (
    HEARTBEAT_MAX_S,
    Heartbeat,
    LeaseLost,
    RunKey,
    ShardBusy,
    beat,
    take_lease,
)
from maskjob.scoring.signals import ScoringInterrupted, Stop, pass_on, signals_deferred
from maskjob.storage.cameras import CameraZones, camera_zones, ensure_cameras
from maskjob.storage.database import session
from maskjob.storage.registry import load_registered
from maskjob.storage.schema import Image, ModelVersion
from maskjob.storage.writes import insert_scored_images, path_key, storable_text
from maskjob.timeutil import local_facts, to_naive_utc, utcnow

__all__ = [
    "HEARTBEAT_MAX_S",
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


# Keys per ``IN (...)`` lookup of the skip-list: well under SQLite's 32,766 bound parameters and
# PostgreSQL's 65,535, and each chunk is one range scan per key on the unique (path_key, model) index.
SKIP_LOOKUP_KEYS = 500


def _scored_keys(conn: sa.Connection, model_version_id: int, keys: Sequence[str], *,
                 retry_unreadable: bool) -> set[str]:
    """Those of ``keys`` (``path_key`` values of the frames found for this run) that the model
    already has a row for, not counting ``unreadable`` rows when retrying them.

    Looks up only ``keys``, ``SKIP_LOOKUP_KEYS`` at a time, on the unique
    ``(path_key, model_version_id)`` index, so the cost follows the run's interval, not the
    model's history.
    """
    unique = sorted(set(keys))
    done: set[str] = set()
    for start in range(0, len(unique), SKIP_LOOKUP_KEYS):
        query = sa.select(Image.path_key).where(Image.model_version_id == model_version_id,
                                                Image.path_key.in_(unique[start:start + SKIP_LOOKUP_KEYS]))
        if retry_unreadable:
            query = query.where(Image.status != "unreadable")
        done.update(key for (key,) in conn.execute(query))
    return done


def image_rows(batch: Sequence[DecodedFrame], found_per_frame: Sequence[FrameFaces | Exception],
               model_version_id: int, run_id: int | None, zones: Zones | None = None
               ) -> list[dict[str, Any]]:
    """``images`` rows (with their ``faces``) for a batch, as :func:`score` writes them.

    ``zones`` (camera id -> zone, e.g. :func:`maskjob.storage.cameras.camera_zones`) gives each
    row its camera-local facts; without it every camera is taken as UTC.
    """
    faces = iter(found_per_frame)
    scored_at = utcnow()
    rows = []
    for item in batch:
        f = item.frame
        tz = camera_zone(zones, f.camera_id)
        local_day, offset_s = local_facts(f.captured_at, tz)
        row: dict[str, Any] = {
            "path": f.rel_path, "content_sha256": item.content_sha256, "camera_id": f.camera_id,
            "captured_at": f.captured_at, "width": None, "height": None, "reason": item.reason,
            "model_version_id": model_version_id, "scoring_run_id": run_id, "scored_at": scored_at,
            "timezone": getattr(tz, "key", "UTC"), "utc_offset_s": offset_s, "local_day": local_day,
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


def _seconds(name: str, given: float | None, setting: float) -> float:
    """``given`` (an argument, checked against the setting's bounds) else the setting."""
    if given is None:
        return setting
    if not (isinstance(given, (int, float)) and math.isfinite(given) and within_bounds(name, given)):
        raise MaskjobError(f"bad {name} {given!r}: expected seconds, {bounds_text(name)}")
    return float(given)


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
            ``min(5, lease_s / 4)`` s) is older. Default: setting ``score_lease_s`` (60 s).
        wait_s: how long to wait while a live run holds this model, shard and interval.
            Default: setting ``score_lease_wait_s`` (0: exit at once).

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
    lease_s = _seconds("score_lease_s", lease_s, settings.score_lease_s)
    wait_s = _seconds("score_lease_wait_s", wait_s, settings.score_lease_wait_s)
    model = _resolve_model(engine, model_version)
    classifier = load_registered(model)
    detector = create_detector(settings.detector, settings)
    inbox = Path(inbox)
    with engine.connect() as conn:
        zones = camera_zones(conn, settings)
    frames = shard_frames(discover_frames(inbox, since, until, zones=zones), *shard)
    key = RunKey(model.id, model.version, shard, to_naive_utc(since) if since else None,
                  to_naive_utc(until) if until else None)
    stop = Stop()
    try:
        with signals_deferred(stop):
            summary = _run(engine, settings, inbox, frames, zones, key, detector, classifier, progress, lease_s,
                           wait_s, stop)
    except ScoringInterrupted as exc:
        pass_on(exc.signum)
        raise
    if stop.signum is not None:  # came after the last batch: the run finished; stop now as asked
        pass_on(stop.signum)
    return summary


def _run(engine: Engine, settings: Settings, inbox: Path, frames: Sequence[Frame], zones: CameraZones, key: RunKey,
         detector: FaceDetector, classifier: FaceClassifier, progress: bool | None, lease_s: float, wait_s: float,
         stop: Stop) -> ScoreSummary:
    """Take the lease, score the frames not yet scored, close the run."""
    run_id = take_lease(engine, key, lease_s, wait_s, stop)
    summary = ScoreSummary(run_id, key.model_version)
    started = time.perf_counter()
    try:
        with Heartbeat(engine, run_id, min(HEARTBEAT_MAX_S, lease_s / 4)) as heartbeat:
            keys = [path_key(f.rel_path) for f in frames]
            with engine.connect() as conn:
                done = _scored_keys(conn, key.model_id, keys, retry_unreadable=settings.retry_unreadable)
            todo = [f for f, k in zip(frames, keys) if k not in done]
            summary.n_skipped = len(frames) - len(todo)
            with engine.begin() as conn:
                beat(conn, run_id, n_skipped=summary.n_skipped)
                new = ensure_cameras(conn, (f.camera_id for f in todo), settings)
            if new:
                logger.info("registered %d new camera(s) with the site defaults: %s", len(new), ", ".join(new))
            logger.info("scoring %d frames (%d already scored) with %s, run %d",
                        len(todo), summary.n_skipped, key.model_version, run_id)
            sizes = _face_sizes(engine, settings, detector, todo)
            stop.check()
            _score_frames(engine, settings, inbox.resolve(), todo, zones, detector, classifier, key.model_id,
                          summary, progress, heartbeat, stop, sizes)
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


def _face_sizes(engine: Engine, settings: Settings, detector: FaceDetector,
                todo: Sequence[Frame]) -> CameraFaceSizes | None:
    """The per-camera face-size tracker (:mod:`maskjob.scoring.face_sizes`), or ``None`` when
    the detector searches every size anyway or every frame is to search fully."""
    if not getattr(detector, "searches_face_sizes", False) or settings.face_size_recheck_frames == 1 or not todo:
        return None
    with engine.connect() as conn:
        sizes = face_size_tracker(conn, settings, todo)
    cameras = sorted({f.camera_id for f in todo})
    ranged = [c for c in cameras if sizes.range_for(c) is not None]
    logger.info("face-size ranges for %d of %d camera(s) (every %d-th frame searches fully): %s", len(ranged),
                len(cameras), settings.face_size_recheck_frames,
                ", ".join(f"{c} {r.min_px:.0f}-{r.max_px:.0f} px" for c in ranged if (r := sizes.range_for(c)))
                or "none")
    return sizes


def _close_run(engine: Engine, summary: ScoreSummary, status: str, error: str | None) -> bool:
    """Record the run's end and committed counts, unless another run closed it; whether it did."""
    values: dict[str, Any] = {**_run_counts(summary), "status": status, "finished_at": utcnow()}
    if error is not None:
        values["error"] = storable_text(error)[0][:4000]
    with engine.begin() as conn:
        closed = beat(conn, summary.run_id, **values)
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
        if not beat(conn, summary.run_id, **_run_counts(summary, stored, n_skipped)):
            raise LeaseLost(f"scoring run {summary.run_id} lost its lease: another run found its heartbeat older "
                            "than its lease and closed it; this batch was rolled back, the committed ones are kept")
    _tally(summary, stored, n_skipped)


@dataclass(frozen=True)
class _Planned:
    """A batch of decoded frames, its readable images and (with a tracker) their searches."""

    frames: list[DecodedFrame]
    images: list[Any]
    cameras: list[str]
    face_px: list[FaceSizeRange | None] | None


def _planned(batches: Iterable[list[DecodedFrame]], sizes: CameraFaceSizes | None) -> Iterator[_Planned]:
    for batch in batches:
        readable = [d for d in batch if d.rgb is not None]
        cameras = [d.frame.camera_id for d in readable]
        yield _Planned(batch, [d.rgb for d in readable], cameras, None if sizes is None else sizes.plan(cameras))


def _score_frames(engine: Engine, settings: Settings, root: Path, todo: Sequence[Frame], zones: CameraZones,
                  detector: FaceDetector,
                  classifier: FaceClassifier, model_id: int, summary: ScoreSummary, progress: bool | None,
                  heartbeat: Heartbeat, stop: Stop, sizes: CameraFaceSizes | None = None) -> None:
    """Decode, detect, classify and write ``todo`` in batches (:func:`_write_batch`); after each
    batch, stop if a signal came or the lease was lost. With ``sizes``, each frame searches its
    camera's face-size range, and the full searches' faces refresh the ranges."""
    from tqdm import tqdm

    with ThreadPoolExecutor(DECODE_THREADS) as pool, tqdm(
        total=len(todo), unit="frame", disable=None if progress is None else not progress
    ) as bar:
        decoded = prefetch(pool, todo, lambda f: decode_frame(f, root, settings.max_image_pixels),
                            window=2 * settings.score_batch_frames)
        for_images, for_sizes, for_writes = tee(_planned(batched(decoded, settings.score_batch_frames), sizes), 3)
        images = (p.images for p in for_images)
        face_px = (p.face_px for p in for_sizes) if sizes is not None else None
        with closing(classify_batches(images, detector, classifier, face_px=face_px)) as found:
            for planned, found_per_frame in zip(for_writes, found):
                if sizes is not None and planned.face_px is not None:
                    sizes.observe(planned.cameras, planned.face_px, found_per_frame)
                _write_batch(engine, image_rows(planned.frames, found_per_frame, model_id, summary.run_id, zones),
                             summary, settings.retry_unreadable)
                bar.update(len(planned.frames))
                stop.check()
                heartbeat.check()
