"""Settings: defaults in code, an optional TOML file overrides them, then ``MASKJOB_*``
environment variables, then explicit keyword overrides (command-line flags).

Example:
    >>> s = load_settings(overrides={"seed": 7})
    >>> s.seed
    7
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Callable, Mapping

from maskjob.errors import MaskjobError
from maskjob.vocab import DEFAULT_MAX_IMAGE_PIXELS, DETECTORS, TRANSFER_ARCHS

__all__ = ["BOUNDS", "CHOICES", "CONFIG_ENV", "ENV_PREFIX", "Settings", "bounds_text", "load_settings"]

ENV_PREFIX = "MASKJOB_"
CONFIG_ENV = "MASKJOB_CONFIG"
DEFAULT_CONFIG_NAME = "maskjob.toml"


@dataclass(frozen=True)
class Settings:
    """Every setting maskjob reads. README's "Settings" table documents each one."""

    data_dir: Path = Path("data")
    database_url: str = ""
    dataset_root: Path | None = None
    inbox_dir: Path | None = None
    models_dir: Path | None = None
    reports_dir: Path | None = None
    assets_dir: Path | None = None
    torch_home: Path | None = None

    seed: int = 1234
    num_workers: int = 2
    batch_size: int = 32
    max_epochs: int = 24
    patience: int = 5
    val_fraction: float = 0.15
    transfer_arch: str = "mobilenet_v2"
    demo_scale: float = 1.0

    promotion_margin: float = 0.005
    min_macro_f1: float = 0.80
    min_class_recall: float = 0.5
    retrain_max_age_days: float = 7.0

    detector: str = "mtcnn"
    detector_threshold: float = 0.6
    min_face_px: int = 20
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS
    score_batch_frames: int = 16
    retry_unreadable: bool = False
    shards: int = 2

    review_threshold: float = 0.75
    blur_faces: bool = True
    gallery_cap: int = 24

    def __post_init__(self) -> None:
        data_dir = Path(self.data_dir).expanduser().resolve()
        object.__setattr__(self, "data_dir", data_dir)
        derived = {
            "dataset_root": data_dir / "dataset",
            "inbox_dir": data_dir / "inbox",
            "models_dir": data_dir / "models",
            "reports_dir": data_dir / "reports",
            "assets_dir": data_dir / "assets",
            "torch_home": data_dir / "torch",
        }
        for name, default in derived.items():
            value = getattr(self, name)
            object.__setattr__(self, name, default if value is None else Path(value).expanduser().resolve())
        if not self.database_url:
            object.__setattr__(self, "database_url", f"sqlite:///{data_dir / 'maskjob.db'}")
        _validate(self)


# JSON-schema bounds of the numeric settings: ``_validate`` checks them, and the DAG's
# Params carry the same keywords, so the UI refuses exactly what a task would refuse.
BOUNDS: dict[str, dict[str, float]] = {
    "num_workers": {"minimum": 0},
    "batch_size": {"minimum": 1},
    "max_epochs": {"minimum": 1},
    "patience": {"minimum": 1},
    "val_fraction": {"exclusiveMinimum": 0.0, "exclusiveMaximum": 0.5},
    "demo_scale": {"exclusiveMinimum": 0.0},
    "promotion_margin": {"minimum": 0.0, "exclusiveMaximum": 1.0},
    "min_macro_f1": {"minimum": 0.0, "maximum": 1.0},
    "min_class_recall": {"minimum": 0.0, "maximum": 1.0},
    "retrain_max_age_days": {"exclusiveMinimum": 0.0},
    "detector_threshold": {"exclusiveMinimum": 0.0, "exclusiveMaximum": 1.0},
    "min_face_px": {"minimum": 8},
    "max_image_pixels": {"exclusiveMinimum": 0},
    "score_batch_frames": {"minimum": 1},
    "shards": {"minimum": 1},
    "review_threshold": {"exclusiveMinimum": 0.0, "maximum": 1.0},
    "gallery_cap": {"minimum": 0},
}

# Settings that take one of a fixed set of names.
CHOICES: dict[str, tuple[str, ...]] = {
    "transfer_arch": TRANSFER_ARCHS,
    "detector": DETECTORS,
}

_CHECKS: dict[str, tuple[Callable[[float, float], bool], str]] = {
    "minimum": (lambda v, b: v >= b, ">= {}"),
    "maximum": (lambda v, b: v <= b, "<= {}"),
    "exclusiveMinimum": (lambda v, b: v > b, "> {}"),
    "exclusiveMaximum": (lambda v, b: v < b, "< {}"),
}


def bounds_text(name: str) -> str:
    """``BOUNDS[name]`` in words, e.g. ``">= 0 and < 1"``."""
    return " and ".join(_CHECKS[key][1].format(limit) for key, limit in BOUNDS[name].items())


def _validate(s: Settings) -> None:
    for name, bounds in BOUNDS.items():
        value = getattr(s, name)
        if not all(_CHECKS[key][0](value, limit) for key, limit in bounds.items()):
            raise MaskjobError(f"bad setting: {name} must be {bounds_text(name)}, not {value!r}. "
                               "Fix it in your config file, MASKJOB_* variable or flag.")
    for name, allowed in CHOICES.items():
        if getattr(s, name) not in allowed:
            raise MaskjobError(f"bad setting: {name} must be one of {list(allowed)}, not {getattr(s, name)!r}. "
                               "Fix it in your config file, MASKJOB_* variable or flag.")


def _field_types() -> dict[str, str]:
    return {f.name: str(f.type) for f in fields(Settings)}


def _coerce(name: str, raw: Any, source: str) -> Any:
    kind = _field_types()[name]
    try:
        if "Path" in kind:
            return Path(str(raw))
        if kind == "bool":
            if isinstance(raw, bool):
                return raw
            text = str(raw).strip().lower()
            if text in {"1", "true", "yes", "on"}:
                return True
            if text in {"0", "false", "no", "off"}:
                return False
            raise ValueError(raw)
        if kind == "int":
            if isinstance(raw, bool):
                raise ValueError(raw)
            return int(raw)
        if kind == "float":
            return float(raw)
        return str(raw)
    except (TypeError, ValueError):
        raise MaskjobError(
            f"bad setting {name}={raw!r} from {source}: expected {kind}. Fix the value and run again."
        ) from None


def _read_file(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        raise MaskjobError(f"config file {path} does not exist. Pass an existing TOML file or unset {CONFIG_ENV}.") from None
    except tomllib.TOMLDecodeError as exc:
        raise MaskjobError(f"config file {path} is not valid TOML ({exc}). Fix its syntax.") from None
    table = data.get("maskjob", data)
    known = _field_types()
    unknown = sorted(set(table) - set(known))
    if unknown:
        raise MaskjobError(
            f"config file {path} has unknown settings {unknown}. Known settings: {sorted(known)}."
        )
    return {k: _coerce(k, v, str(path)) for k, v in table.items()}


def load_settings(
    config_path: str | Path | None = None,
    overrides: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> Settings:
    """Build the settings: defaults < TOML file < ``MASKJOB_*`` env < ``overrides``.

    Args:
        config_path: a TOML file; else ``$MASKJOB_CONFIG``; else ``./maskjob.toml`` if present.
        overrides: values from flags; ``None`` values are ignored.
        environ: the environment to read (default ``os.environ``).

    Returns:
        The validated, frozen settings with every path absolute.
    """
    env = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    path = config_path or env.get(CONFIG_ENV)
    if path:
        values.update(_read_file(Path(path)))
    elif Path(DEFAULT_CONFIG_NAME).is_file():
        values.update(_read_file(Path(DEFAULT_CONFIG_NAME)))
    for name in _field_types():
        key = ENV_PREFIX + name.upper()
        if key in env and env[key] != "":
            values[name] = _coerce(name, env[key], f"${key}")
    for name, value in (overrides or {}).items():
        if value is None:
            continue
        if name not in _field_types():
            raise MaskjobError(f"unknown setting {name!r}")
        values[name] = _coerce(name, value, "command line")
    return Settings(**values)


def replace(settings: Settings, **changes: Any) -> Settings:
    """A copy of ``settings`` with ``changes`` applied and validated."""
    return dataclasses.replace(settings, **changes)
