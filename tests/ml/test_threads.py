"""The training CPU budget: torch threads and loader workers per training process."""

from __future__ import annotations

import torch

from maskjob.ml.threads import apply_thread_budget, budget, budget_threads, cpu_cores
from tests.fixtures.demo import tiny_settings


def test_automatic_budget_divides_the_cores_among_the_trainings_and_counts_the_workers():
    assert budget(0, 2, concurrent=1, cores=2) == (1, 1)  # one training on the 2-core reference machine
    assert budget(0, 2, concurrent=2, cores=2) == (1, 1)  # never below one thread
    assert budget(0, 2, concurrent=2, cores=16) == (6, 2)
    assert budget(0, 0, concurrent=1, cores=2) == (2, 0)  # no workers: every core to torch
    assert budget(0, 4, concurrent=1, cores=4) == (2, 2)
    threads, workers = budget(0, 2, concurrent=2)
    assert threads + workers <= max(2, cpu_cores() // 2)
    assert budget_threads(0, 2, concurrent=2) == threads


def test_a_set_train_threads_wins_over_the_automatic_budget():
    assert budget(3, 2, concurrent=2, cores=2) == (3, 2)
    assert budget(1, 2, concurrent=1, cores=16) == (1, 1)


def test_apply_sets_torch_threads_and_the_loader_workers(tmp_path):
    before = torch.get_num_threads()
    try:
        settings = tiny_settings(tmp_path, num_workers=4, train_threads=1)
        budgeted = apply_thread_budget(settings, concurrent=2)
        assert torch.get_num_threads() == 1
        assert budgeted.num_workers == 1 and settings.num_workers == 4
        assert budgeted.dataset_root == settings.dataset_root
        assert apply_thread_budget(tiny_settings(tmp_path, num_workers=0, train_threads=2),
                                   concurrent=1).num_workers == 0
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
