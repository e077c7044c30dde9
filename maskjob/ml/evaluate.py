"""Classification metrics (scikit-learn) for a model or a saved checkpoint.

Example:
    >>> report = evaluate_checkpoint("data/models/cnn.pt", "data/dataset")   # doctest: +SKIP
    >>> round(report["macro_f1"], 3)                                           # doctest: +SKIP
    0.981
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, log_loss, precision_recall_fscore_support
from torch import nn
from torch.utils.data import DataLoader

from maskjob import CLASSES
from maskjob.config import Settings, load_settings
from maskjob.errors import MaskjobError
from maskjob.ml.calibration import expected_calibration_error, model_logits, probabilities
from maskjob.ml.checkpoint import load_classifier
from maskjob.ml.dataset import ALL_SPLITS, scan_dataset
from maskjob.ml.loaders import decode_images

__all__ = ["classification_metrics", "evaluate_checkpoint", "format_report", "loader_logits", "predict_loader"]

logger = logging.getLogger(__name__)

LABELS = list(range(len(CLASSES)))


def classification_metrics(labels: np.ndarray, probs: np.ndarray) -> dict[str, Any]:
    """Accuracy, macro-F1, per-class precision/recall/F1/support, confusion matrix, loss, ECE.

    Args:
        labels: true class indices ``(N,)``, N >= 1.
        probs: predicted probabilities ``(N, 3)`` in ``CLASSES`` order.

    Returns:
        JSON-serialisable metrics; ``loss`` is the mean cross-entropy and ``ece`` the
        expected calibration error over 15 confidence bins (both None when any probability
        is NaN/inf, and then ``finite`` is False).
    """
    finite = bool(np.isfinite(probs).all())
    preds = np.nan_to_num(probs, nan=-1.0).argmax(axis=1)
    precision, recall, f1, support = precision_recall_fscore_support(
        labels, preds, labels=LABELS, zero_division=0
    )
    loss = float(log_loss(labels, probs, labels=LABELS)) if finite else None
    return {
        "accuracy": float(accuracy_score(labels, preds)),
        "macro_f1": float(f1_score(labels, preds, labels=LABELS, average="macro", zero_division=0)),
        "per_class": {
            name: {
                "precision": float(precision[i]),
                "recall": float(recall[i]),
                "f1": float(f1[i]),
                "support": int(support[i]),
            }
            for i, name in enumerate(CLASSES)
        },
        "confusion_matrix": confusion_matrix(labels, preds, labels=LABELS).tolist(),
        "n_images": int(len(labels)),
        "loss": loss,
        "ece": expected_calibration_error(probs, labels) if finite else None,
        "finite": finite,
    }


def loader_logits(model: nn.Module, loader: DataLoader, *,
                  flip: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Run a model in eval mode over a loader of ``(images, labels, indices)``.

    Returns:
        ``(labels, logits, indices)``; logits ``(V, N, C)`` with V = 2 when ``flip`` (the
        mirror images too, :func:`maskjob.ml.calibration.model_logits`).
    """
    model.eval()
    labels, views, indices = [], [], []
    with torch.inference_mode():
        for images, y, idx in loader:
            views.append(model_logits(model, images, flip=flip).numpy())
            labels.append(y.numpy())
            indices.append(idx.numpy())
    return np.concatenate(labels), np.concatenate(views, axis=1), np.concatenate(indices)


def predict_loader(model: nn.Module, loader: DataLoader, *, flip: bool = False,
                   temperature: float = 1.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Like :func:`loader_logits`, with the logits turned into probabilities (divided by
    ``temperature``, averaged over the mirror image when ``flip``).

    Returns:
        ``(labels, probs, indices)`` as numpy arrays.
    """
    labels, views, indices = loader_logits(model, loader, flip=flip)
    return labels, probabilities(views, temperature), indices


def evaluate_checkpoint(
    ckpt_path: str | Path,
    data_root: str | Path,
    split: str = "test",
    settings: Settings | None = None,
) -> dict[str, Any]:
    """Score a dataset split with a checkpoint, exactly as the scorer preprocesses crops.

    Args:
        ckpt_path: the checkpoint.
        data_root: the dataset root; only ``<data_root>/<split>/<class>/`` must exist.
        split: ``test``, ``train``, ``test_unseen`` (held-out styles) or ``test_site`` (the
            reviewed site faces, when exported).
        settings: ``batch_size`` and ``max_image_pixels`` (default: loaded settings).

    Returns:
        :func:`classification_metrics` plus ``arch``, ``split``, ``checkpoint``,
        ``n_unreadable``, the checkpoint's ``temperature``, ``tta_flip`` and validation
        ``calibration`` (None for a checkpoint from before calibration) and ``predictions``
        (``{path, true, pred, probs}`` per image, calibrated probabilities).
    """
    if split not in ALL_SPLITS:
        raise MaskjobError(f"unknown split {split!r}; choose one of {list(ALL_SPLITS)}")
    settings = settings or load_settings()
    classifier = load_classifier(ckpt_path)
    index = scan_dataset(data_root, splits=(split,))  # only that split need be there
    items = index.splits[split]
    size = classifier.image_size
    chunk = max(settings.batch_size, 1) * 2
    labels, probs, paths, n_unreadable = [], [], [], 0
    for start in range(0, len(items), chunk):
        images = decode_images(items[start:start + chunk], size, settings.max_image_pixels)
        n_unreadable += len(images.skipped)
        if len(images.labels):
            probs.append(classifier.predict_proba(list(images.images)))
            labels.append(images.labels)
            paths.extend(images.paths)
    if not labels:
        raise MaskjobError(f"no readable {split} images in {index.root}; run `maskjob data check {index.root}`")
    y, p = np.concatenate(labels), np.concatenate(probs)
    report = classification_metrics(y, p)
    preds = np.nan_to_num(p, nan=-1.0).argmax(axis=1)
    report.update(
        arch=classifier.meta["arch"],
        split=split,
        checkpoint=str(Path(ckpt_path).resolve()),
        n_unreadable=n_unreadable,
        temperature=classifier.temperature,
        tta_flip=classifier.tta_flip,
        calibration=classifier.meta.get("calibration"),
        predictions=[
            {"path": str(path), "true": CLASSES[t], "pred": CLASSES[q], "probs": [float(v) for v in row]}
            for path, t, q, row in zip(paths, y.tolist(), list(preds), p)
        ],
    )
    logger.info("%s on %s/%s: accuracy %.3f, macro-F1 %.3f", report["arch"], data_root, split, report["accuracy"], report["macro_f1"])
    return report


def format_report(report: dict[str, Any]) -> str:
    """A readable table of :func:`evaluate_checkpoint`'s result."""
    width = max(len(c) for c in CLASSES) + 2
    lines = [
        f"{report.get('arch', 'model')} on {report.get('split', '?')}: {report['n_images']} images, "
        f"accuracy {report['accuracy']:.4f}, macro-F1 {report['macro_f1']:.4f}"
        + ("" if report.get("ece") is None else f", ECE {report['ece']:.4f}")
        + ("" if report["finite"] else "  (NON-FINITE OUTPUTS)"),
        f"{'class':<{width}}{'precision':>10}{'recall':>10}{'f1':>10}{'support':>10}",
    ]
    for name in CLASSES:
        c = report["per_class"][name]
        lines.append(f"{name:<{width}}{c['precision']:>10.4f}{c['recall']:>10.4f}{c['f1']:>10.4f}{c['support']:>10}")
    lines.append("confusion matrix (rows true, columns predicted): " + ", ".join(CLASSES))
    for name, row in zip(CLASSES, report["confusion_matrix"]):
        lines.append(f"{name:<{width}}" + "".join(f"{v:>10}" for v in row))
    return "\n".join(lines)
