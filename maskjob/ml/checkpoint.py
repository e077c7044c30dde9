"""Checkpoint files (``{"state_dict", "meta"}``) and the :class:`Classifier` that scores
face crops with one.

Example:
    >>> clf = load_classifier("data/models/cnn.pt")     # doctest: +SKIP
    >>> clf.predict_proba([face_rgb]).shape             # doctest: +SKIP
    (1, 3)
"""

from __future__ import annotations

import hashlib
import math
import os
import reprlib
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from maskjob import CLASSES
from maskjob.errors import MaskjobError
from maskjob.imageio import output_dir
from maskjob.ml.calibration import MAX_TEMPERATURE, MIN_TEMPERATURE, model_logits, probabilities
from maskjob.ml.loaders import normalize, resize_rgb
from maskjob.ml.models import create_model
from maskjob.vocab import ARCHS as ARCH_NAMES
from maskjob.vocab import MAX_IMAGE_SIZE, MIN_IMAGE_SIZE

__all__ = [
    "REQUIRED_META", "Classifier", "ValidCheckpoint", "load_checkpoint", "load_classifier", "save_checkpoint",
    "state_digest", "validate_checkpoint",
]

REQUIRED_META: tuple[str, ...] = (
    "arch", "classes", "image_size", "mean", "std", "dataset_fingerprint", "metrics",
    "val_macro_f1", "seed", "history", "created_at", "maskjob_version", "pretrained_weights",
)
RETRAIN = "retrain it with `maskjob train`"
# model_versions.dataset_fingerprint is a String(64) column (a sha256 in hex).
MAX_FINGERPRINT_CHARS = 64
# JSON-like metadata (metrics, history) deeper than this is refused rather than walked.
MAX_META_DEPTH = 16
_SHOWN_KEYS = 3


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
    path = output_dir(Path(path).parent, "checkpoint folder") / Path(path).name
    state = {k: v.detach().cpu() for k, v in state_dict.items()}
    payload = {"state_dict": state, "meta": {**meta, "state_sha256": state_digest(state)}}
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        torch.save(payload, tmp)
        tmp.replace(path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise MaskjobError(f"cannot write checkpoint {path}: {exc.strerror or exc}; "
                           "free some space or choose another --out folder") from None
    return path


# --- validation ---------------------------------------------------------------------------

_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxlist, _REPR.maxtuple, _REPR.maxdict, _REPR.maxstring, _REPR.maxother = 2, 4, 4, 4, 40, 40


def _show(value: Any) -> str:
    """A short description of a (possibly huge or hostile) value for a message."""
    text = _REPR.repr(value)
    if len(text) > 80:
        text = text[:77] + "..."
    return f"{text} ({type(value).__name__})"


def _bad(path: Path, field: str, expected: str, value: Any, *, got: str | None = None) -> MaskjobError:
    return MaskjobError(f"checkpoint {path}: {field} must be {expected}, not {got or _show(value)}; {RETRAIN}")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_real(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _json_like(value: Any, depth: int = 0) -> bool:
    """Plain JSON data: str-keyed dicts, lists/tuples, str, int, float, bool, None."""
    if depth > MAX_META_DEPTH:
        return False
    if value is None or isinstance(value, (str, int, float, bool)):
        return True
    if isinstance(value, dict):
        return all(isinstance(k, str) and _json_like(v, depth + 1) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return all(_json_like(v, depth + 1) for v in value)
    return False


def _is_iso_time(value: Any) -> bool:
    if not isinstance(value, str):
        return False
    try:
        datetime.fromisoformat(value)
    except ValueError:
        return False
    return True


def _check_state(path: Path, state: Any) -> dict[str, torch.Tensor]:
    if not isinstance(state, dict):
        raise _bad(path, "state_dict", "a dict of parameter name -> tensor", state)
    for name, tensor in state.items():
        if not isinstance(name, str):
            raise _bad(path, "state_dict", "keyed by parameter names (str)", name)
        if not isinstance(tensor, torch.Tensor):
            raise _bad(path, f"state_dict[{name[:80]!r}]", "a torch.Tensor", tensor)
        if tensor.layout != torch.strided or tensor.is_quantized:
            raise _bad(path, f"state_dict[{name[:80]!r}]", "a dense (strided, not quantized) tensor", None,
                       got=f"a {tensor.layout} {tensor.dtype} tensor")
    return state


def _check_triple(path: Path, meta: dict[str, Any], field: str, positive: bool) -> None:
    value = meta[field]
    expected = "three finite numbers" + (" > 0" if positive else "")
    if not isinstance(value, (list, tuple)) or len(value) != 3 or not all(_is_real(v) for v in value):
        raise _bad(path, f"meta {field!r}", expected, value)
    if not all(math.isfinite(v) and (v > 0 or not positive) for v in value):
        raise _bad(path, f"meta {field!r}", expected, value)


def _check_meta(path: Path, meta: Any) -> dict[str, Any]:
    if not isinstance(meta, dict):
        raise _bad(path, "meta", "a dict", meta)
    missing = [k for k in (*REQUIRED_META, "state_sha256") if k not in meta]
    if missing:
        raise MaskjobError(f"checkpoint {path} lacks meta keys {missing}; {RETRAIN}")
    arch = meta["arch"]
    if not isinstance(arch, str) or arch not in ARCH_NAMES:
        raise _bad(path, "meta 'arch'", f"one of {list(ARCH_NAMES)}", arch)
    classes = meta["classes"]
    if not isinstance(classes, (list, tuple)) or list(classes) != list(CLASSES):
        raise _bad(path, "meta 'classes'", f"exactly {list(CLASSES)}", classes)
    size = meta["image_size"]
    if not _is_int(size) or not MIN_IMAGE_SIZE <= size <= MAX_IMAGE_SIZE:
        raise _bad(path, "meta 'image_size'", f"an int from {MIN_IMAGE_SIZE} to {MAX_IMAGE_SIZE}", size)
    _check_triple(path, meta, "mean", positive=False)
    _check_triple(path, meta, "std", positive=True)
    if not isinstance(meta["metrics"], dict) or not _json_like(meta["metrics"]):
        raise _bad(path, "meta 'metrics'", "a dict of plain JSON values (the test metrics)", meta["metrics"])
    history = meta["history"]
    if not isinstance(history, (list, tuple)) or not all(isinstance(e, dict) for e in history) \
            or not _json_like(history):
        raise _bad(path, "meta 'history'", "a list of per-epoch dicts of plain JSON values", history)
    fingerprint = meta["dataset_fingerprint"]
    if not isinstance(fingerprint, str) or len(fingerprint) > MAX_FINGERPRINT_CHARS:
        raise _bad(path, "meta 'dataset_fingerprint'", f"a str of at most {MAX_FINGERPRINT_CHARS} characters",
                   fingerprint)
    if not _is_real(meta["val_macro_f1"]):
        raise _bad(path, "meta 'val_macro_f1'", "a number", meta["val_macro_f1"])
    if not _is_int(meta["seed"]):
        raise _bad(path, "meta 'seed'", "an int", meta["seed"])
    if not _is_iso_time(meta["created_at"]):
        raise _bad(path, "meta 'created_at'", "an ISO 8601 time (str)", meta["created_at"])
    if not isinstance(meta["maskjob_version"], str):
        raise _bad(path, "meta 'maskjob_version'", "a str", meta["maskjob_version"])
    weights = meta["pretrained_weights"]
    if weights is not None and (not isinstance(weights, dict) or not _json_like(weights)):
        raise _bad(path, "meta 'pretrained_weights'", "None or a dict of plain JSON values", weights)
    if "diverged" in meta and not isinstance(meta["diverged"], bool):
        raise _bad(path, "meta 'diverged'", "true or false", meta["diverged"])
    _check_calibration(path, meta)
    if not isinstance(meta["state_sha256"], str):
        raise _bad(path, "meta 'state_sha256'", "a sha256 in hex (str)", meta["state_sha256"])
    return meta


def _check_calibration(path: Path, meta: dict[str, Any]) -> None:
    """The optional calibration keys: ``temperature`` (absent on old checkpoints: T = 1),
    ``tta_flip`` and ``calibration`` (the validation summary)."""
    t = meta.get("temperature", 1.0)
    if not _is_real(t) or not math.isfinite(t) or not MIN_TEMPERATURE <= t <= MAX_TEMPERATURE:
        raise _bad(path, "meta 'temperature'", f"a number from {MIN_TEMPERATURE} to {MAX_TEMPERATURE:g}", t)
    if not isinstance(meta.get("tta_flip", False), bool):
        raise _bad(path, "meta 'tta_flip'", "true or false", meta["tta_flip"])
    calibration = meta.get("calibration")
    if calibration is not None and (not isinstance(calibration, dict) or not _json_like(calibration)):
        raise _bad(path, "meta 'calibration'", "None or a dict of plain JSON values", calibration)


def _names(names: Sequence[str]) -> str:
    return ", ".join(names[:_SHOWN_KEYS]) + (f", ... ({len(names)} in all)" if len(names) > _SHOWN_KEYS else "")


def _check_architecture(path: Path, state: dict[str, torch.Tensor], arch: str) -> nn.Module:
    """Build ``arch`` (no pretrained weights), compare every key and shape, load the weights."""
    model = create_model(arch, pretrained=False)
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    mismatched = [
        f"{k} {list(state[k].shape)} {state[k].dtype} vs {list(v.shape)} {v.dtype}" for k, v in expected.items()
        if k in state and (state[k].shape != v.shape or state[k].is_floating_point() != v.is_floating_point())
    ]
    problems = [f"{len(names)} {what} ({_names([n[:120] for n in names])})"
                for what, names in (("missing", missing), ("unexpected", unexpected), ("mismatched", mismatched))
                if names]
    if problems:
        raise MaskjobError(f"checkpoint {path}: state_dict does not fit architecture {arch!r}: "
                           f"{'; '.join(problems)} keys; {RETRAIN}")
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise MaskjobError(f"checkpoint {path} does not fit architecture {arch}: {str(exc)[:300]}") from None
    return model.eval()


@dataclass(frozen=True)
class ValidCheckpoint:
    """A checkpoint that passed :func:`validate_checkpoint`: its weights, meta and built model (eval mode)."""

    state_dict: dict[str, torch.Tensor]
    meta: dict[str, Any]
    model: nn.Module


def validate_checkpoint(path: str | Path, payload: Any) -> ValidCheckpoint:
    """Check a loaded checkpoint field by field before anything uses it.

    The one validation behind :func:`load_checkpoint`, :func:`load_classifier` (hence
    evaluation and scoring) and registration: ``state_dict`` a dict of str -> dense tensor,
    ``meta`` a dict with every :data:`REQUIRED_META` key of the right type (``arch`` one of
    ``vocab.ARCHS``, ``classes`` exactly ``CLASSES``, ``image_size`` an int within
    ``MIN_IMAGE_SIZE..MAX_IMAGE_SIZE``, ``mean``/``std`` three finite numbers, std > 0,
    ``metrics`` a dict, ...), the weights digest unchanged, and the keys and shapes equal to
    those of the architecture the factory builds.

    Args:
        path: the file the payload came from (named in every message).
        payload: what ``torch.load(path, weights_only=True)`` returned.

    Returns:
        The weights, the meta and the model built from them.

    Raises:
        MaskjobError: naming the file, the field and what was expected.
    """
    path = Path(path)
    if not isinstance(payload, dict) or "state_dict" not in payload or "meta" not in payload:
        raise MaskjobError(f"checkpoint {path} is not a maskjob checkpoint (expected keys 'state_dict' and 'meta')")
    state = _check_state(path, payload["state_dict"])
    meta = _check_meta(path, payload["meta"])
    try:
        digest = state_digest(state)
    except (RuntimeError, TypeError, ValueError) as exc:
        raise _bad(path, "state_dict", "tensors whose bytes can be read", None,
                   got=f"unreadable ({(str(exc).strip().splitlines() or [type(exc).__name__])[0][:100]})") from None
    if digest != meta["state_sha256"]:
        raise MaskjobError(f"checkpoint {path} has been modified since it was saved (weights digest mismatch)")
    return ValidCheckpoint(state, meta, _check_architecture(path, state, meta["arch"]))


def _read(path: Path) -> Any:
    if not path.is_file():
        raise MaskjobError(f"checkpoint {path} does not exist; train one with `maskjob train`")
    try:
        # weights_only: tensors and plain containers only; a pickle that would run code is refused.
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch.load raises many types (KeyError, RuntimeError, ...) on damaged files
        lines = str(exc).strip().splitlines()
        first_line = lines[0][:200] if lines else type(exc).__name__
        raise MaskjobError(
            f"checkpoint {path} is truncated, corrupt or not a maskjob checkpoint ({first_line}); {RETRAIN}"
        ) from None


def _load_valid(path: str | Path) -> ValidCheckpoint:
    path = Path(path)
    return validate_checkpoint(path, _read(path))


def load_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read and verify a checkpoint (:func:`validate_checkpoint`).

    Args:
        path: the ``.pt`` file.

    Returns:
        ``(state_dict, meta)``.

    Raises:
        MaskjobError: missing, truncated, tampered, not a maskjob checkpoint, a meta field of
            the wrong type or value, or weights that do not fit the architecture.
    """
    valid = _load_valid(path)
    return valid.state_dict, valid.meta


@dataclass
class Classifier:
    """A trained model ready to score RGB face crops, with the checkpoint's temperature and
    test-time flip setting applied to every probability it gives."""

    model: nn.Module
    meta: dict[str, Any]

    @property
    def image_size(self) -> int:
        return int(self.meta["image_size"])

    @property
    def temperature(self) -> float:
        """The fitted temperature (1.0 for a checkpoint saved before calibration)."""
        return float(self.meta.get("temperature", 1.0))

    @property
    def tta_flip(self) -> bool:
        """Whether probabilities average the crop and its mirror image."""
        return bool(self.meta.get("tta_flip", False))

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
        """Calibrated class probabilities in ``CLASSES`` order: softmax of the logits divided by
        :attr:`temperature`, averaged with the mirror image's when :attr:`tta_flip`.

        Args:
            images: RGB uint8 arrays of any size.

        Returns:
            ``(N, 3)`` float32 probabilities.
        """
        if len(images) == 0:
            return np.zeros((0, len(CLASSES)), dtype=np.float32)
        with torch.inference_mode():
            views = model_logits(self.model, self.preprocess(images), flip=self.tta_flip)
        return probabilities(views, self.temperature)


def load_classifier(path: str | Path) -> Classifier:
    """Load a checkpoint as a :class:`Classifier` (model in eval mode).

    Args:
        path: the ``.pt`` file.

    Returns:
        The classifier.

    Raises:
        MaskjobError: see :func:`validate_checkpoint`.
    """
    valid = _load_valid(path)
    return Classifier(model=valid.model, meta=valid.meta)
