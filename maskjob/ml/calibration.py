"""Calibrated confidence: temperature scaling fitted on validation logits, the expected
calibration error, reliability bins, and test-time flip averaging.

A checkpoint stores one temperature ``T`` (``meta["temperature"]``, 1 when absent) and
whether to average over the mirror image (``meta["tta_flip"]``); :func:`probabilities` turns
logits into the probabilities every caller (evaluation, scoring, the review queue) uses.

Example:
    >>> views = model_logits(model, images, flip=False)          # doctest: +SKIP
    >>> t = fit_temperature(views, labels)                         # doctest: +SKIP
    >>> probabilities(views, t).sum(axis=1)                        # doctest: +SKIP
    array([1., 1., ...], dtype=float32)
"""

from __future__ import annotations

import math
from itertools import pairwise
from typing import Any

import numpy as np
import torch
from torch import nn

__all__ = [
    "ECE_BINS", "calibration_summary", "expected_calibration_error", "fit_temperature", "model_logits",
    "probabilities", "reliability_bins",
]

ECE_BINS = 15
# The fitted temperature is kept inside this range. A validation split with no error drives
# the NLL optimum towards T -> 0 (every face 100 % sure, so none would reach the review queue);
# sharpening at most 4x and softening at most 10x keeps one small split from saying that.
MIN_TEMPERATURE = 0.25
MAX_TEMPERATURE = 10.0


def model_logits(model: nn.Module, images: torch.Tensor, *, flip: bool) -> torch.Tensor:
    """Logits of a normalised batch ``(N, 3, H, W)``: shape ``(V, N, C)``, V = 2 with ``flip``
    (the batch and its horizontal mirror), else 1."""
    views = [model(images).float()]
    if flip:
        views.append(model(torch.flip(images, dims=[3])).float())
    return torch.stack(views)


def _probs(views: torch.Tensor, temperature: torch.Tensor | float) -> torch.Tensor:
    return torch.softmax(views / temperature, dim=2).mean(dim=0)


def probabilities(views: torch.Tensor | np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Class probabilities ``(N, C)``: softmax of ``views / temperature`` averaged over the views.

    Args:
        views: logits ``(V, N, C)`` (:func:`model_logits`).
        temperature: T > 0; 1 leaves the softmax unchanged.
    """
    with torch.no_grad():
        return _probs(torch.as_tensor(views, dtype=torch.float32), float(temperature)).numpy()


def _nll(views: torch.Tensor, labels: torch.Tensor, temperature: torch.Tensor | float) -> torch.Tensor:
    probs = _probs(views, temperature).clamp_min(1e-12)
    return -torch.log(probs[torch.arange(len(labels)), labels]).mean()


def fit_temperature(views: torch.Tensor | np.ndarray, labels: torch.Tensor | np.ndarray) -> float:
    """The temperature that minimises the negative log-likelihood of ``labels`` (LBFGS on log T,
    so T stays > 0; clipped to ``MIN_TEMPERATURE..MAX_TEMPERATURE``).

    Args:
        views: validation logits ``(V, N, C)``.
        labels: true class indices ``(N,)``.

    Returns:
        T (1.0 when there is nothing to fit or the logits are not finite).
    """
    views = torch.as_tensor(views, dtype=torch.float32).detach()
    labels = torch.as_tensor(labels, dtype=torch.long)
    if not len(labels) or not torch.isfinite(views).all():
        return 1.0
    log_t = torch.zeros((), requires_grad=True)
    optimizer = torch.optim.LBFGS([log_t], lr=0.1, max_iter=200, tolerance_grad=1e-9, tolerance_change=1e-12,
                                  line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = _nll(views, labels, log_t.exp())
        loss.backward()
        return loss

    optimizer.step(closure)
    t = float(log_t.detach().exp())
    return min(max(t, MIN_TEMPERATURE), MAX_TEMPERATURE) if math.isfinite(t) else 1.0


def reliability_bins(probs: np.ndarray, labels: np.ndarray, n_bins: int = ECE_BINS) -> list[dict[str, float]]:
    """Equal-width confidence bins: per non-empty bin its range, mean confidence, accuracy and count."""
    confidence = probs.max(axis=1)
    correct = probs.argmax(axis=1) == labels
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    bins = []
    for lo, hi in pairwise(edges):
        inside = (confidence > lo) & (confidence <= hi)
        if inside.any():
            bins.append({"lo": float(lo), "hi": float(hi), "confidence": float(confidence[inside].mean()),
                         "accuracy": float(correct[inside].mean()), "count": int(inside.sum())})
    return bins


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, n_bins: int = ECE_BINS) -> float | None:
    """ECE: the count-weighted mean gap between confidence and accuracy over ``n_bins`` bins
    (None when any probability is NaN/inf or there are no images)."""
    if not len(labels) or not np.isfinite(probs).all():
        return None
    return float(sum(b["count"] * abs(b["accuracy"] - b["confidence"])
                     for b in reliability_bins(probs, labels, n_bins)) / len(labels))


def calibration_summary(views: torch.Tensor | np.ndarray, labels: np.ndarray) -> dict[str, Any]:
    """Fit T on validation logits and describe the calibration before and after.

    Returns:
        ``temperature``, ``n_images``, ``n_bins``, ``ece_before``/``ece_after``,
        ``nll_before``/``nll_after`` and ``reliability_before``/``reliability_after``
        (:func:`reliability_bins`), plain JSON values.
    """
    views = torch.as_tensor(views, dtype=torch.float32)
    labels = np.asarray(labels, dtype=np.int64)
    t = fit_temperature(views, labels)
    summary: dict[str, Any] = {"temperature": t, "n_images": len(labels), "n_bins": ECE_BINS}
    for when, temperature in (("before", 1.0), ("after", t)):
        probs = probabilities(views, temperature)
        finite = bool(np.isfinite(probs).all()) and len(labels) > 0
        summary[f"ece_{when}"] = expected_calibration_error(probs, labels)
        summary[f"nll_{when}"] = float(_nll(views, torch.as_tensor(labels), temperature)) if finite else None
        summary[f"reliability_{when}"] = reliability_bins(probs, labels) if finite else []
    return summary
