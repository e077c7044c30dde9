"""The CPU budget of a training: torch threads and DataLoader workers per training process.

Two trainings that each take every core oversubscribe the CPU and run slower side by side
than one after the other (issue 11: 191 s wall / 353 CPU-s against 119 s / 188 CPU-s on 2
cores). Each training therefore takes its share, the cores divided by the trainings that run
at once, and splits it between DataLoader workers and torch threads; the loader workers are
part of the share because they compete for the same cores: on 2 cores one training with 2
threads and 2 workers spent 62 CPU-s where 1 thread and 1 worker spent 25 for the same
epochs (benchmarks/train_throughput.py --compare). ``settings.train_threads`` names the
torch threads instead (workers then at most as many).

Example:
    >>> budget(0, 2, concurrent=1, cores=2)
    (1, 1)
    >>> budget(0, 2, concurrent=1, cores=16)
    (14, 2)
    >>> budget(3, 2, concurrent=2, cores=2)
    (3, 2)
"""

from __future__ import annotations

import dataclasses
import logging
import os

from maskjob.config import Settings

__all__ = ["apply_thread_budget", "budget", "budget_threads", "cpu_cores"]

logger = logging.getLogger(__name__)


def cpu_cores() -> int:
    """The cores this process may run on (its CPU affinity, else ``os.cpu_count()``)."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def budget(train_threads: int, num_workers: int, *, concurrent: int, cores: int | None = None) -> tuple[int, int]:
    """Torch threads and DataLoader workers for one training.

    Args:
        train_threads: the setting; 0 means automatic.
        num_workers: the setting: the most loader workers.
        concurrent: how many trainings run at once (1 for ``maskjob train``).
        cores: the CPU cores (default :func:`cpu_cores`).

    Returns:
        ``(threads, workers)``. Automatic: of the share ``cores // concurrent`` (at least 1), up
        to half (at least 1) goes to workers and the rest, at least 1, to threads. Set:
        ``train_threads`` threads and at most as many workers.
    """
    if train_threads > 0:
        return train_threads, min(num_workers, train_threads)
    share = max(1, (cores or cpu_cores()) // max(1, concurrent))
    workers = min(num_workers, max(1, share // 2))
    return max(1, share - workers), workers


def budget_threads(train_threads: int, num_workers: int, *, concurrent: int, cores: int | None = None) -> int:
    """The torch threads of :func:`budget`."""
    return budget(train_threads, num_workers, concurrent=concurrent, cores=cores)[0]


def apply_thread_budget(settings: Settings, *, concurrent: int) -> Settings:
    """Give this process its share of the CPU and return the settings its training should use.

    Sets ``torch.set_num_threads`` (and the inter-op threads, where torch still allows it: only
    before the first parallel operation) and ``num_workers``, the DataLoader processes, as
    :func:`budget` says.

    Args:
        settings: ``train_threads`` and ``num_workers`` are read.
        concurrent: how many trainings run at once.

    Returns:
        ``settings`` with the budgeted ``num_workers``.
    """
    import torch

    threads, workers = budget(settings.train_threads, settings.num_workers, concurrent=concurrent)
    torch.set_num_threads(threads)
    try:
        torch.set_num_interop_threads(threads)
    except RuntimeError:  # torch allows it once, before any inter-op work; the intra-op count is what matters
        logger.debug("inter-op threads already fixed at %d", torch.get_num_interop_threads())
    logger.info("training with %d torch thread(s) and %d loader worker(s) (%d training(s) at once, %d cores)",
                threads, workers, concurrent, cpu_cores())
    return dataclasses.replace(settings, num_workers=workers)
