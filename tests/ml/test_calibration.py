"""Temperature scaling, the expected calibration error, and the training options (label
smoothing, mixup) on hand-made logits and batches."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from maskjob.ml.calibration import (
    MAX_TEMPERATURE,
    MIN_TEMPERATURE,
    calibration_summary,
    expected_calibration_error,
    fit_temperature,
    model_logits,
    probabilities,
    reliability_bins,
)
from maskjob.ml.train import batch_loss


def _logits(n: int, scale: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``(1, n, 3)`` logits whose softmax is calibrated once divided by ``scale`` (labels are
    drawn from it): ``scale`` > 1 sounds over-confident, < 1 under-confident."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 1.5, (n, 3))
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    labels = np.array([rng.choice(3, p=row) for row in probs])
    return (scale * logits)[None].astype(np.float32), labels


def test_ece_of_known_cases() -> None:
    labels = np.array([0, 0, 0, 0, 1])
    sure = np.tile([1.0, 0.0, 0.0], (5, 1))
    assert expected_calibration_error(sure, labels) == pytest.approx(0.2)  # 100 % sure, 80 % right
    honest = np.tile([0.8, 0.1, 0.1], (5, 1))
    assert expected_calibration_error(honest, labels) == pytest.approx(0.0, abs=1e-9)
    assert expected_calibration_error(np.full((2, 3), np.nan), np.array([0, 1])) is None
    bins = reliability_bins(np.array([[0.9, 0.05, 0.05], [0.2, 0.5, 0.3]]), np.array([1, 1]))
    assert [(b["count"], b["accuracy"]) for b in bins] == [(1, 1.0), (1, 0.0)]
    assert bins[0]["confidence"] == pytest.approx(0.5) and bins[1]["confidence"] == pytest.approx(0.9)


def test_temperature_scaling_calibrates_over_and_under_confident_logits() -> None:
    views, labels = _logits(2000, scale=4.0)
    summary = calibration_summary(views, labels)
    assert summary["temperature"] == pytest.approx(4.0, rel=0.15)
    assert summary["ece_after"] < summary["ece_before"] / 3 and summary["ece_before"] > 0.2
    assert summary["nll_after"] < summary["nll_before"]
    assert summary["n_images"] == 2000 and summary["n_bins"] == 15
    assert sum(b["count"] for b in summary["reliability_after"]) == 2000
    # the argmax, hence every label, is unchanged by T
    assert (probabilities(views, summary["temperature"]).argmax(1) == probabilities(views).argmax(1)).all()

    shy, shy_labels = _logits(2000, scale=0.5, seed=1)
    shy_summary = calibration_summary(shy, shy_labels)
    assert shy_summary["temperature"] == pytest.approx(0.5, rel=0.15)
    assert shy_summary["ece_after"] < shy_summary["ece_before"]


def test_temperature_is_bounded_and_defaults_to_one() -> None:
    separable = np.array([[[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]], dtype=np.float32)
    assert fit_temperature(separable, np.array([0, 1])) == MIN_TEMPERATURE  # no error: never 100 % sure
    assert fit_temperature(-separable, np.array([0, 1])) == MAX_TEMPERATURE
    assert fit_temperature(np.full((1, 2, 3), np.nan), np.array([0, 1])) == 1.0
    assert fit_temperature(np.zeros((1, 0, 3)), np.array([], dtype=np.int64)) == 1.0
    summary = calibration_summary(np.full((1, 2, 3), np.inf), np.array([0, 1]))
    assert summary["temperature"] == 1.0 and summary["ece_after"] is None and summary["reliability_after"] == []


def test_flip_views_average_probabilities() -> None:
    model = nn.Sequential(nn.Flatten(), nn.Linear(2 * 3 * 1, 3, bias=False))
    with torch.no_grad():
        model[1].weight.copy_(torch.arange(18.0).view(3, 6) / 10)
    x = torch.tensor([[[[1.0, 0.0]], [[0.0, 0.0]], [[0.0, 2.0]]]])  # (1, 3, 1, 2): not mirror-symmetric
    views = model_logits(model, x, flip=True)
    assert views.shape == (2, 1, 3)
    assert torch.allclose(views[1], model(torch.flip(x, dims=[3])))
    expected = (torch.softmax(views[0] / 2, 1) + torch.softmax(views[1] / 2, 1)) / 2
    assert np.allclose(probabilities(views.detach(), 2.0), expected.detach().numpy())
    assert model_logits(model, x, flip=False).shape == (1, 1, 3)


class _Recorder(nn.Module):
    """Returns fixed logits and records the batch it saw."""

    def __init__(self, logits: torch.Tensor) -> None:
        super().__init__()
        self.logits = logits
        self.seen: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen = x
        return self.logits


def test_label_smoothing_penalises_overconfidence() -> None:
    y = torch.tensor([0, 1, 2, 0])
    confident = 20.0 * nn.functional.one_hot(y, 3).float()
    plain, _ = batch_loss(_Recorder(confident), torch.zeros(4, 3, 2, 2), y)
    smoothed, _ = batch_loss(_Recorder(confident), torch.zeros(4, 3, 2, 2), y, label_smoothing=0.1)
    assert plain.item() < 1e-6 and smoothed.item() > 0.5


def test_mixup_blends_images_and_labels() -> None:
    images = torch.stack([torch.full((3, 2, 2), float(i)) for i in range(8)])
    y = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    logits = torch.linspace(-2, 2, 24).view(8, 3)
    model = _Recorder(logits)
    torch.manual_seed(0)
    np.random.seed(0)
    loss, _ = batch_loss(model, images, y, mixup_alpha=0.4)
    seen = model.seen[:, 0, 0, 0]
    assert not torch.equal(seen, images[:, 0, 0, 0])  # the model saw blends, not the batch
    np.random.seed(0)
    torch.manual_seed(0)
    lam = float(np.random.beta(0.4, 0.4))
    order = torch.randperm(8)
    assert torch.allclose(seen, lam * images[:, 0, 0, 0] + (1 - lam) * images[order, 0, 0, 0])
    ce = nn.CrossEntropyLoss()
    assert loss.item() == pytest.approx((lam * ce(logits, y) + (1 - lam) * ce(logits, y[order])).item(), rel=1e-5)
    unmixed, _ = batch_loss(model, images, y)
    assert torch.equal(model.seen, images) and unmixed.item() == pytest.approx(ce(logits, y).item())
