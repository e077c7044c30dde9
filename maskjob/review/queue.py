"""The review queue as the page serves it: per-user skips, short claims so that two reviewers
working at once get different faces, and queue counts cached for a few seconds (counting
100,000 faces for every decision would be waste)."""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from typing import Any

from sqlalchemy.engine import Engine

from maskjob.config import Settings
from maskjob.review.auth import ReviewUser
from maskjob.review.items import item_view
from maskjob.storage.reviews import queue_counts, review_queue

__all__ = ["CLAIM_S", "COUNTS_TTL_S", "ServedQueue"]

COUNTS_TTL_S = 5.0  # queue counts shown are at most this old (between recounts, adjust() keeps them current)
CLAIM_S = 120.0  # a face shown to one reviewer is not served to another for this long
MAX_SKIPPED = 2000


class ServedQueue:
    """Thread-safe, in memory (one server process): what the page's queue remembers between requests."""

    def __init__(self, settings: Settings, engine: Engine) -> None:
        self.settings = settings
        self.engine = engine
        self._skipped: dict[str, OrderedDict[int, None]] = {}
        self._counts: dict[str | None, tuple[float, dict[str, int]]] = {}
        self._claims: dict[int, tuple[str, float]] = {}
        self._lock = threading.Lock()

    def skip(self, username: str, face_id: int) -> None:
        """``username`` skipped the face: it is not served to them again (the latest ``MAX_SKIPPED`` kept)."""
        with self._lock:
            seen = self._skipped.setdefault(username, OrderedDict())
            seen[face_id] = None
            while len(seen) > MAX_SKIPPED:
                seen.popitem(last=False)

    def unskip(self, username: str, face_id: int) -> None:
        """``username`` decided the face after all."""
        with self._lock:
            self._skipped.get(username, OrderedDict()).pop(face_id, None)

    def skipped(self, username: str) -> list[int]:
        """The faces ``username`` skipped, oldest first."""
        with self._lock:
            return list(self._skipped.get(username, ()))

    def counts(self, camera: str | None) -> dict[str, int]:
        """Faces left per stratum, recounted at most every ``COUNTS_TTL_S`` s and kept current
        in between by :meth:`adjust`."""
        now = time.monotonic()
        with self._lock:
            cached = self._counts.get(camera)
        if cached is None or now - cached[0] > COUNTS_TTL_S:
            fresh = queue_counts(self.engine, self.settings, camera=camera)
            with self._lock:
                self._counts[camera] = cached = (now, dict(fresh))
        return dict(cached[1])

    def adjust(self, camera: str | None, stratum: str, delta: int) -> None:
        """A face of ``stratum`` left the queue (-1) or came back (+1)."""
        with self._lock:
            for key in {camera, None}:
                cached = self._counts.get(key)
                if cached is not None and stratum in cached[1]:
                    cached[1][stratum] = max(cached[1][stratum] + delta, 0)

    def _claimed_by_others(self, username: str) -> list[int]:
        now = time.monotonic()
        with self._lock:
            for face_id in [f for f, (_, until) in self._claims.items() if until <= now]:
                del self._claims[face_id]
            return [f for f, (owner, _) in self._claims.items() if owner != username]

    def release(self, face_id: int) -> None:
        """The face was decided or skipped: others may be served it (while it is still unreviewed)."""
        with self._lock:
            self._claims.pop(face_id, None)

    def next_items(self, user: ReviewUser, camera: str | None, holding: list[int], limit: int) -> list[dict[str, Any]]:
        """The next ``limit`` faces for ``user``: not held by the page, skipped by the user, or
        shown to another reviewer in the last ``CLAIM_S`` s (two reviewers never see the same
        queue head); they are then claimed for ``user``. Viewers claim nothing and see every face."""
        claimed = self._claimed_by_others(user.username) if user.can_write else []
        exclude = list(dict.fromkeys([*holding, *self.skipped(user.username), *claimed]))
        items = review_queue(self.engine, self.settings, limit=limit, camera=camera, exclude_face_ids=exclude)
        if user.can_write:
            until = time.monotonic() + CLAIM_S
            with self._lock:
                self._claims.update({i.face_id: (user.username, until) for i in items})
        return [item_view(i) for i in items]
