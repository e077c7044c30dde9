"""Training: one loop for every architecture, early stopping on validation macro-F1, the
best epoch calibrated (temperature scaling on validation) and saved as a checkpoint with its
history and test metrics.

Transfer models train in two phases: the new head with the backbone frozen, then the
backbone's last stage too, at a lower learning rate. Options (settings, off by default):
label smoothing in the loss, mixup of training batches, test-time flip averaging (stored in
the checkpoint, so scoring does what evaluation measured).

Example:
    >>> result = train_model("cnn", "data/dataset", "data/models", settings)   # doctest: +SKIP
    >>> result.meta["metrics"]["macro_f1"]                                      # doctest: +SKIP
    0.98
"""

from __future__ import annotations

import json
import logging
import math
import random
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.metrics import accuracy_score, f1_score
from torch import nn
from tqdm.auto import tqdm

from maskjob import CLASSES, __version__
from maskjob.config import Settings
from maskjob.errors import MaskjobError
from maskjob.ml.calibration import calibration_summary
from maskjob.ml.checkpoint import save_checkpoint
from maskjob.ml.dataset import dataset_fingerprint, scan_dataset
from maskjob.ml.evaluate import classification_metrics, loader_logits, predict_loader
from maskjob.ml.loaders import Loaders, make_loaders
from maskjob.ml.models import ARCHS, create_model, set_trainable
from maskjob.vocab import MAX_IMAGE_SIZE, MIN_IMAGE_SIZE

__all__ = ["Phase", "TrainResult", "batch_loss", "make_optimizer", "phases_for", "train_model", "train_one_epoch"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Phase:
    """A stretch of epochs with one set of trainable parameters and learning rates.

    ``stage`` is passed to :func:`maskjob.ml.models.set_trainable`; ``backbone_lr`` applies
    to trainable parameters outside the head.
    """

    name: str
    stage: str
    epochs: int
    head_lr: float
    backbone_lr: float


@dataclass(frozen=True)
class TrainResult:
    checkpoint_path: Path
    meta: dict[str, Any]


CNN_LR = 3e-3
HEAD_LR = 2e-3
LAST_STAGE_LR = 4e-4
HEAD_EPOCHS = 2
WEIGHT_DECAY = 1e-4


def phases_for(arch: str, max_epochs: int) -> list[Phase]:
    """The training schedule: ``cnn`` trains everything; transfer models train the head for
    up to :data:`HEAD_EPOCHS` epochs, then the last stage for the rest.

    Args:
        arch: the architecture.
        max_epochs: the epoch budget across phases.

    Returns:
        The phases (epochs sum to ``max_epochs``).
    """
    if not ARCHS[arch].transfer:
        return [Phase("train", "all", max_epochs, CNN_LR, CNN_LR)]
    head = min(HEAD_EPOCHS, max(1, max_epochs // 2))
    phases = [Phase("head", "head", head, HEAD_LR, 0.0)]
    if max_epochs > head:
        phases.append(Phase("last_stage", "last_stage", max_epochs - head, HEAD_LR / 2, LAST_STAGE_LR))
    return phases


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def make_optimizer(model: nn.Module, arch: str, phase: Phase) -> torch.optim.Optimizer:
    """AdamW over the trainable parameters: the head at ``phase.head_lr``, the rest at
    ``phase.backbone_lr``."""
    head_prefixes = ARCHS[arch].head or ("",)
    head, backbone = [], []
    for name, param in model.named_parameters():
        if param.requires_grad:
            (head if name.startswith(head_prefixes) else backbone).append(param)
    groups = [{"params": head, "lr": phase.head_lr}]
    if backbone:
        groups.append({"params": backbone, "lr": phase.backbone_lr})
    return torch.optim.AdamW(groups, weight_decay=WEIGHT_DECAY)


def _train_mode(model: nn.Module) -> None:
    """Train mode, except frozen BatchNorm layers keep their (ImageNet) running statistics."""
    model.train()
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and not any(p.requires_grad for p in module.parameters()):
            module.eval()


def batch_loss(
    model: nn.Module, images: torch.Tensor, y: torch.Tensor, *, label_smoothing: float = 0.0, mixup_alpha: float = 0.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """The training loss of one batch: cross-entropy with ``label_smoothing``; with
    ``mixup_alpha > 0`` the batch is blended with a shuffled copy of itself (weight
    ``lam ~ Beta(alpha, alpha)``) and the loss blends both label sets the same way.

    Returns:
        ``(loss, logits)``.
    """
    criterion = nn.CrossEntropyLoss(label_smoothing=label_smoothing)
    if mixup_alpha <= 0 or len(y) < 2:
        logits = model(images)
        return criterion(logits, y), logits
    lam = float(np.random.beta(mixup_alpha, mixup_alpha))
    order = torch.randperm(len(y))
    logits = model(lam * images + (1 - lam) * images[order])
    return lam * criterion(logits, y) + (1 - lam) * criterion(logits, y[order]), logits


def train_one_epoch(
    model: nn.Module,
    loader: torch.utils.data.DataLoader,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    desc: str,
    *,
    label_smoothing: float = 0.0,
    mixup_alpha: float = 0.0,
) -> dict[str, float]:
    """One pass over the training loader (:func:`batch_loss` per batch).

    Returns:
        ``train_loss``, ``train_acc``, ``train_macro_f1`` and ``finite`` (False when a
        loss was NaN/inf; the epoch stops there).
    """
    _train_mode(model)
    total_loss, n_seen, finite = 0.0, 0, True
    labels, preds = [], []
    for images, y, _ in tqdm(loader, desc=desc, leave=False, disable=None, unit="batch"):
        loss, logits = batch_loss(model, images, y, label_smoothing=label_smoothing, mixup_alpha=mixup_alpha)
        if not torch.isfinite(loss):
            finite = False
            break
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        total_loss += loss.item() * len(y)
        n_seen += len(y)
        labels.append(y.numpy())
        preds.append(logits.detach().argmax(1).numpy())
    if not n_seen:
        return {"train_loss": math.nan, "train_acc": 0.0, "train_macro_f1": 0.0, "finite": False}
    y_true, y_pred = np.concatenate(labels), np.concatenate(preds)
    return {
        "train_loss": total_loss / n_seen,
        "train_acc": float(accuracy_score(y_true, y_pred)),
        "train_macro_f1": float(f1_score(y_true, y_pred, labels=list(range(len(CLASSES))), average="macro", zero_division=0)),
        "finite": finite,
    }


def _evaluate(model: nn.Module, loader: torch.utils.data.DataLoader) -> dict[str, Any]:
    labels, probs, _ = predict_loader(model, loader)
    return classification_metrics(labels, probs)


def _snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _fit(
    model: nn.Module, arch: str, loaders: Loaders, max_epochs: int, settings: Settings
) -> tuple[dict[str, torch.Tensor], list[dict[str, Any]], int, bool]:
    history: list[dict[str, Any]] = []
    best_state, best_f1, best_epoch, diverged = _snapshot(model), -1.0, 0, False
    epoch = 0
    bar = tqdm(total=max_epochs, desc=f"{arch} epochs", disable=None, unit="epoch")
    for phase in phases_for(arch, max_epochs):
        set_trainable(model, arch, phase.stage)
        optimizer = make_optimizer(model, arch, phase)
        steps = max(1, phase.epochs * len(loaders.train))
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step, steps=steps: 0.5 * (1 + math.cos(math.pi * min(step, steps) / steps))
        )
        since_best = 0
        for _ in range(phase.epochs):
            epoch += 1
            started = time.perf_counter()
            train = train_one_epoch(model, loaders.train, optimizer, scheduler, f"{arch} epoch {epoch}",
                                    label_smoothing=settings.label_smoothing, mixup_alpha=settings.mixup_alpha)
            val = _evaluate(model, loaders.val)
            row = {
                "epoch": epoch,
                "phase": phase.name,
                "train_loss": train["train_loss"],
                "train_acc": train["train_acc"],
                "train_macro_f1": train["train_macro_f1"],
                "val_loss": val["loss"],
                "val_acc": val["accuracy"],
                "val_macro_f1": val["macro_f1"],
                "seconds": round(time.perf_counter() - started, 2),
            }
            history.append(row)
            bar.update(1)
            bar.set_postfix(val_f1=f"{val['macro_f1']:.3f}")
            logger.info(
                "%s epoch %d (%s): train loss %.4f, val loss %s, val macro-F1 %.4f, %.1f s",
                arch, epoch, phase.name, row["train_loss"], row["val_loss"], row["val_macro_f1"], row["seconds"],
            )
            if not train["finite"] or not val["finite"]:
                logger.error("%s diverged at epoch %d (NaN/inf loss); stopping, checkpoint marked diverged", arch, epoch)
                diverged = True
                break
            if val["macro_f1"] > best_f1:
                best_state, best_f1, best_epoch, since_best = _snapshot(model), val["macro_f1"], epoch, 0
            else:
                since_best += 1
                if since_best >= settings.patience:
                    logger.info("%s: no val macro-F1 gain for %d epochs; stopping %s phase",
                                arch, settings.patience, phase.name)
                    break
        if diverged:
            break
    bar.close()
    return best_state, history, best_epoch, diverged


def _check_train_args(max_epochs: Any, image_size: Any) -> None:
    """Refuse an epoch budget below 1 or an input size outside the supported range, before any work."""
    if max_epochs is not None and (not isinstance(max_epochs, int) or isinstance(max_epochs, bool) or max_epochs < 1):
        raise MaskjobError(f"--epochs {max_epochs!r} is not a positive whole number; train for at least 1 epoch")
    if image_size is None:
        return
    if not isinstance(image_size, int) or isinstance(image_size, bool):
        raise MaskjobError(f"--image-size {image_size!r} is not a whole number of pixels; "
                           f"use {MIN_IMAGE_SIZE} to {MAX_IMAGE_SIZE}")
    if image_size < MIN_IMAGE_SIZE:
        raise MaskjobError(f"--image-size {image_size} is too small; use at least {MIN_IMAGE_SIZE} pixels")
    if image_size > MAX_IMAGE_SIZE:
        raise MaskjobError(f"--image-size {image_size} is too large; use at most {MAX_IMAGE_SIZE} pixels")


def train_model(
    arch: str,
    data_root: str | Path,
    out_dir: str | Path,
    settings: Settings,
    *,
    max_epochs: int | None = None,
    weights_path: str | Path | None = None,
    image_size: int | None = None,
) -> TrainResult:
    """Train ``arch`` on ``data_root`` and save the best epoch (by validation macro-F1).

    Pretrained weights are resolved before any data is loaded, so missing weights fail fast.

    Args:
        arch: ``cnn``, ``resnet18``, ``resnet50`` or ``mobilenet_v2``.
        data_root: the dataset root (``train/`` and ``test/``).
        out_dir: where ``<arch>.pt`` and ``<arch>.history.json`` go.
        settings: seed, batch size, workers, patience, max_epochs, val_fraction, torch_home.
        max_epochs: the epoch budget (default: the architecture's, ``ARCH_DEFAULTS[arch]["epochs"]``,
            capped by ``settings.max_epochs``).
        weights_path: an explicit pretrained-weights file for transfer models.
        image_size: overrides the architecture's default input size.

    Returns:
        The checkpoint path and its meta (``meta["diverged"]`` is True when the loss went NaN/inf).
    """
    started = time.perf_counter()
    _check_train_args(max_epochs, image_size)
    scan_dataset(data_root)
    _seed_everything(settings.seed)
    model = create_model(arch, pretrained=True, weights_path=weights_path, torch_home=settings.torch_home)
    spec = ARCHS[arch]
    size = image_size or spec.image_size
    epochs = max_epochs or min(spec.epochs, settings.max_epochs)
    fingerprint = dataset_fingerprint(data_root)
    loaders = make_loaders(data_root, size, settings, spec.mean, spec.std)
    best_state, history, best_epoch, diverged = _fit(model, arch, loaders, epochs, settings)
    model.load_state_dict(best_state)
    calibration = _calibrate(model, loaders.val, settings.tta_flip)
    labels, probs, _ = predict_loader(model, loaders.test, flip=settings.tta_flip,
                                      temperature=calibration["temperature"])
    test = {**classification_metrics(labels, probs), "calibration": calibration}
    meta = _checkpoint_meta(arch, size, spec, settings, fingerprint, test, history, best_epoch, diverged,
                            n_skipped=len(loaders.skipped), seconds=time.perf_counter() - started,
                            pretrained_weights=model.pretrained_weights)
    path = _save(Path(out_dir), arch, best_state, meta)
    return TrainResult(checkpoint_path=path, meta=meta)


def _calibrate(model: nn.Module, val: torch.utils.data.DataLoader, flip: bool) -> dict[str, Any]:
    """Temperature scaling on the validation split (:func:`calibration_summary`), logged."""
    labels, views, _ = loader_logits(model, val, flip=flip)
    summary = calibration_summary(views, labels)
    if summary["ece_before"] is not None:
        logger.info("temperature %.3f: validation ECE %.4f -> %.4f, NLL %.4f -> %.4f", summary["temperature"],
                    summary["ece_before"], summary["ece_after"], summary["nll_before"], summary["nll_after"])
    return summary


def _checkpoint_meta(arch: str, size: int, spec: Any, settings: Settings, fingerprint: str, test: dict[str, Any],
                     history: list[dict[str, Any]], best_epoch: int, diverged: bool, *, n_skipped: int,
                     seconds: float, pretrained_weights: Any) -> dict[str, Any]:
    """The checkpoint's ``meta`` (docs/ARCHITECTURE.md lists every key)."""
    return {
        "arch": arch,
        "classes": list(CLASSES),
        "image_size": size,
        "mean": list(spec.mean),
        "std": list(spec.std),
        "dataset_fingerprint": fingerprint,
        "metrics": test,
        "val_macro_f1": history[best_epoch - 1]["val_macro_f1"] if best_epoch else 0.0,
        "seed": settings.seed,
        "history": history,
        "best_epoch": best_epoch,
        "diverged": diverged or not test["finite"],
        "n_skipped_images": n_skipped,
        "train_seconds": round(seconds, 1),
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "maskjob_version": __version__,
        "pretrained_weights": pretrained_weights,
        "temperature": test["calibration"]["temperature"],
        "tta_flip": settings.tta_flip,
        "calibration": test["calibration"],
        "label_smoothing": settings.label_smoothing,
        "mixup_alpha": settings.mixup_alpha,
    }


def _save(out: Path, arch: str, state: dict[str, Any], meta: dict[str, Any]) -> Path:
    """``out/<arch>.pt`` and its ``<arch>.history.json`` summary; the checkpoint's path."""
    path = save_checkpoint(out / f"{arch}.pt", state, meta)
    summary = {k: meta[k] for k in ("arch", "best_epoch", "diverged", "val_macro_f1", "train_seconds", "history")}
    (out / f"{arch}.history.json").write_text(json.dumps(summary, indent=2) + "\n")
    logger.info(
        "%s: best epoch %d, val macro-F1 %.4f, test macro-F1 %.4f, %.0f s -> %s",
        arch, meta["best_epoch"], meta["val_macro_f1"], meta["metrics"]["macro_f1"], meta["train_seconds"], path,
    )
    return path

