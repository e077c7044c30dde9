"""Scoring-run leases: one live run per model, shard and capture interval.

Each run's ``scoring_runs`` row is its lease, taken in one serialised transaction (SQLite:
BEGIN IMMEDIATE; PostgreSQL: an advisory lock on a hash of the key) and kept alive by a
heartbeat thread and by each batch commit. Another run on the same key waits or stops with
:class:`ShardBusy`; only a run whose heartbeat is older than its own lease is closed as failed
("interrupted: ..."). A run that finds its row closed gets :class:`LeaseLost`.
"""

from __future__ import annotations

import hashlib
import logging
import os
import socket
import threading
import time
from dataclasses import dataclass
from datetime import datetime
from itertools import count
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from maskjob.errors import MaskjobError
from maskjob.scoring.signals import Stop
from maskjob.storage.schema import ScoringRun
from maskjob.storage.writes import storable_text
from maskjob.timeutil import utcnow

__all__ = [
    "HEARTBEAT_MAX_S", "Heartbeat", "LeaseLost", "RunKey", "ShardBusy", "beat", "db_now",
    "take_lease",
]

logger = logging.getLogger(__name__)

# A run's heartbeat period: this, or a quarter of its lease when that is shorter.
HEARTBEAT_MAX_S = 5.0
POLL_MAX_S = 1.0


class ShardBusy(MaskjobError):
    """Another live run holds the lease on this model, shard and interval."""


class LeaseLost(MaskjobError):
    """This run's lease was taken over (its heartbeat had stopped for longer than its lease)."""


@dataclass(frozen=True)
class RunKey:
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


def db_now(conn: sa.Connection) -> Any:
    """The database's clock as aware UTC, for ``heartbeat_at``: on PostgreSQL the server's
    (hosts' clocks may disagree), on SQLite this host's (the only one that can open the file)."""
    if conn.dialect.name == "postgresql":
        from maskjob.storage.schema import UtcDateTime

        return sa.func.clock_timestamp(type_=UtcDateTime())
    return utcnow()


def _read_now(conn: sa.Connection) -> datetime:
    now = db_now(conn)
    return now if isinstance(now, datetime) else conn.execute(sa.select(now)).scalar_one()


def _heartbeat_age(run: Any, now: datetime) -> float:
    """Seconds since ``run`` last showed life (runs from before migration 0003: since it started)."""
    return (now - (run.heartbeat_at or run.started_at)).total_seconds()


def _holder(run: Any) -> str:
    return f"{'pid unknown' if run.pid is None else f'pid {run.pid}'} on host {run.hostname or 'unknown'}"


def _try_lease(conn: sa.Connection, key: RunKey, lease_s: float) -> tuple[int | None, Any]:
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


def take_lease(engine: Engine, key: RunKey, lease_s: float, wait_s: float, stop: Stop) -> int:
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


def beat(conn: sa.Connection, run_id: int, **values: Any) -> bool:
    """Refresh the run's heartbeat (and ``values``) if it is still ``running``; whether it was."""
    update = sa.update(ScoringRun).where(ScoringRun.id == run_id, ScoringRun.status == "running")
    return conn.execute(update.values(heartbeat_at=db_now(conn), **values)).rowcount == 1


class Heartbeat:
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
                    alive = beat(conn, self.run_id)
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

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()
