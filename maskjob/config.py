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
from typing import Any, Mapping

from maskjob.errors import MaskjobError

__all__ = ["Settings", "load_settings", "ENV_PREFIX", "CONFIG_ENV"]

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
    max_image_pixels: int = 40_000_000
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


def _validate(s: Settings) -> None:
    checks = [
        (s.num_workers >= 0, "num_workers must be >= 0"),
        (s.batch_size >= 1, "batch_size must be >= 1"),
        (s.max_epochs >= 1, "max_epochs must be >= 1"),
        (s.patience >= 1, "patience must be >= 1"),
        (0.0 < s.val_fraction < 0.5, "val_fraction must be in (0, 0.5)"),
        (s.demo_scale > 0, "demo_scale must be > 0"),
        (0.0 <= s.promotion_margin < 1.0, "promotion_margin must be in [0, 1)"),
        (0.0 <= s.min_macro_f1 <= 1.0, "min_macro_f1 must be in [0, 1]"),
        (0.0 <= s.min_class_recall <= 1.0, "min_class_recall must be in [0, 1]"),
        (s.retrain_max_age_days > 0, "retrain_max_age_days must be > 0"),
        (0.0 < s.detector_threshold < 1.0, "detector_threshold must be in (0, 1)"),
        (s.min_face_px >= 8, "min_face_px must be >= 8"),
        (s.max_image_pixels > 0, "max_image_pixels must be > 0"),
        (s.score_batch_frames >= 1, "score_batch_frames must be >= 1"),
        (s.shards >= 1, "shards must be >= 1"),
        (0.0 < s.review_threshold <= 1.0, "review_threshold must be in (0, 1]"),
        (s.gallery_cap >= 0, "gallery_cap must be >= 0"),
    ]
    for ok, message in checks:
        if not ok:
            raise MaskjobError(f"bad setting: {message}. Fix it in your config file or MASKJOB_* variable.")


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
