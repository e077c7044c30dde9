"""Checkpoint files (``{"state_dict", "meta"}``) and the :class:`Classifier` that scores
face crops with one.

Example:
    >>> clf = load_classifier("data/models/cnn.pt")     # doctest: +SKIP
    >>> clf.predict_proba([face_rgb]).shape             # doctest: +SKIP
    (1, 3)
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from maskjob import CLASSES
from maskjob.errors import MaskjobError
from maskjob.ml.loaders import normalize, resize_rgb
from maskjob.ml.models import ARCHS, create_model

__all__ = ["REQUIRED_META", "Classifier", "load_checkpoint", "load_classifier", "save_checkpoint", "state_digest"]

REQUIRED_META: tuple[str, ...] = (
    "arch", "classes", "image_size", "mean", "std", "dataset_fingerprint", "metrics",
    "val_macro_f1", "seed", "history", "created_at", "maskjob_version", "pretrained_weights",
)


def state_digest(state_dict: dict[str, torch.Tensor]) -> str:
    """sha256 over every tensor's name, dtype, shape and bytes, in name order."""
    digest = hashlib.sha256()
    for name in sorted(state_dict):
        tensor = state_dict[name].detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def save_checkpoint(path: str | Path, state_dict: dict[str, torch.Tensor], meta: dict[str, Any]) -> Path:
    """Write a checkpoint atomically; adds ``meta["state_sha256"]`` for tamper checks.

    Args:
        path: the ``.pt`` file.
        state_dict: the model weights.
        meta: the metadata (see ARCHITECTURE.md); must be ``weights_only``-loadable.

    Returns:
        The path written.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu() for k, v in state_dict.items()}
    payload = {"state_dict": state, "meta": {**meta, "state_sha256": state_digest(state)}}
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    torch.save(payload, tmp)
    tmp.replace(path)
    return path


def load_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read and verify a checkpoint.

    Args:
        path: the ``.pt`` file.

    Returns:
        ``(state_dict, meta)``.

    Raises:
        MaskjobError: missing, truncated, tampered, not a maskjob checkpoint, or missing keys.
    """
    path = Path(path)
    if not path.is_file():
        raise MaskjobError(f"checkpoint {path} does not exist; train one with `maskjob train`")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch.load raises many types (KeyError, RuntimeError, ...) on damaged files
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise MaskjobError(
            f"checkpoint {path} is truncated, corrupt or not a maskjob checkpoint ({first_line}); "
            "retrain it with `maskjob train`"
        ) from None
    if not isinstance(payload, dict) or not isinstance(payload.get("state_dict"), dict) or not isinstance(payload.get("meta"), dict):
        raise MaskjobError(f"checkpoint {path} is not a maskjob checkpoint (expected keys 'state_dict' and 'meta')")
    meta, state = payload["meta"], payload["state_dict"]
    missing = [k for k in (*REQUIRED_META, "state_sha256") if k not in meta]
    if missing:
        raise MaskjobError(f"checkpoint {path} lacks meta keys {missing}; retrain it with `maskjob train`")
    if meta["arch"] not in ARCHS:
        raise MaskjobError(f"checkpoint {path} has unknown architecture {meta['arch']!r}; known: {sorted(ARCHS)}")
    if tuple(meta["classes"]) != CLASSES:
        raise MaskjobError(f"checkpoint {path} predicts classes {meta['classes']}, not {list(CLASSES)}")
    if state_digest(state) != meta["state_sha256"]:
        raise MaskjobError(f"checkpoint {path} has been modified since it was saved (weights digest mismatch)")
    return state, meta


def _build(path: Path, state: dict[str, torch.Tensor], meta: dict[str, Any]) -> nn.Module:
    model = create_model(meta["arch"], pretrained=False)
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise MaskjobError(f"checkpoint {path} does not fit architecture {meta['arch']}: {str(exc)[:300]}") from None
    return model.eval()


@dataclass
class Classifier:
    """A trained model ready to score RGB face crops."""

    model: nn.Module
    meta: dict[str, Any]

    @property
    def image_size(self) -> int:
        return int(self.meta["image_size"])

    def preprocess(self, images: Sequence[np.ndarray]) -> torch.Tensor:
        """Resize RGB uint8 ``(H, W, 3)`` arrays to the model input and normalise.

        Args:
            images: RGB uint8 arrays of any size.

        Returns:
            A float tensor ``(N, 3, image_size, image_size)``.
        """
        size = self.image_size
        batch = np.empty((len(images), size, size, 3), dtype=np.uint8)
        for i, rgb in enumerate(images):
            if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8 or min(rgb.shape[:2]) < 1:
                raise ValueError(f"image {i}: expected an (H, W, 3) uint8 RGB array, got {rgb.shape} {rgb.dtype}")
            batch[i] = resize_rgb(rgb, size)
        return normalize(torch.from_numpy(batch).permute(0, 3, 1, 2), self.meta["mean"], self.meta["std"])

    def predict_proba(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """Class probabilities in ``CLASSES`` order, one batched forward pass.

        Args:
            images: RGB uint8 arrays of any size.

        Returns:
            ``(N, 3)`` float32 probabilities.
        """
        if len(images) == 0:
            return np.zeros((0, len(CLASSES)), dtype=np.float32)
        with torch.inference_mode():
            logits = self.model(self.preprocess(images))
        return torch.softmax(logits.float(), dim=1).numpy()


def load_classifier(path: str | Path) -> Classifier:
    """Load a checkpoint as a :class:`Classifier` (model in eval mode).

    Args:
        path: the ``.pt`` file.

    Returns:
        The classifier.

    Raises:
        MaskjobError: see :func:`load_checkpoint`.
    """
    state, meta = load_checkpoint(path)
    return Classifier(model=_build(Path(path), state, meta), meta=meta)
