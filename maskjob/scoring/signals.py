"""SIGTERM and SIGINT during scoring: the batch in flight commits (or rolls back), the run is
closed as failed ("interrupted: SIGTERM"), then the signal is passed on to what handled it before.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from contextlib import contextmanager
from typing import Any, Iterator

from maskjob.errors import MaskjobError

__all__ = ["ScoringInterrupted", "Stop", "pass_on", "signals_deferred"]

logger = logging.getLogger(__name__)

class ScoringInterrupted(MaskjobError):
    """SIGTERM or SIGINT stopped the run: it is closed as failed, its committed frames are kept."""

    def __init__(self, signum: int) -> None:
        self.signum = signum
        self.signame = signal.Signals(signum).name
        super().__init__(f"scoring interrupted by {self.signame}: the run is closed as failed "
                         f"('interrupted: {self.signame}') and its committed frames are kept; rerun to score the rest")


class Stop:
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
def signals_deferred(stop: Stop) -> Iterator[None]:
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


def pass_on(signum: int) -> None:
    """Do what the signal would have done without :func:`score`: the restored handler, or the
    default action (SIGTERM ends the process)."""
    if threading.current_thread() is not threading.main_thread():
        return
    previous = signal.getsignal(signum)
    if callable(previous):
        previous(signum, None)  # e.g. KeyboardInterrupt, or Airflow's task termination
    elif previous == signal.SIG_DFL:
        os.kill(os.getpid(), signum)
