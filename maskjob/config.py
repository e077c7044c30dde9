"""Settings: defaults in code, an optional TOML file overrides them, then ``MASKJOB_*``
environment variables, then explicit keyword overrides (command-line flags).

Example:
    >>> s = load_settings(overrides={"seed": 7})
    >>> s.seed
    7
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import re
import tomllib
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Callable, Mapping

from maskjob.errors import MaskjobError
from maskjob.vocab import DEFAULT_MAX_IMAGE_PIXELS, DETECTORS, TRANSFER_ARCHS

__all__ = [
    "BOUNDS", "CHOICES", "CONFIG_ENV", "ENV_PREFIX", "SecretFilter", "Settings", "bounds_text", "load_settings",
    "redact", "register_secrets", "within_bounds",
]

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
    # The design card's fine-tuned ResNet. Its ImageNet file must resolve (cache, download) or a
    # run fails at validation; the offline demo selects mobilenet_v2, whose file its assets hold.
    transfer_arch: str = "resnet18"
    demo_scale: float = 1.0
    # train_threads: torch threads per training (0: the CPU cores divided by the trainings that
    # run at once, loader workers included, at least 1: maskjob.ml.threads); label smoothing and
    # mixup in the loss, and test-time flip averaging.
    train_threads: int = 0
    label_smoothing: float = 0.0
    mixup_alpha: float = 0.0
    tta_flip: bool = False

    promotion_margin: float = 0.005
    min_macro_f1: float = 0.80
    min_class_recall: float = 0.5
    retrain_max_age_days: float = 7.0

    detector: str = "mtcnn"
    detector_threshold: float = 0.6
    min_face_px: int = 20
    # MTCNN's image pyramid: each level's scale over the previous one's (facenet-pytorch's 0.709).
    # A coarser step is cheaper but finds fewer faces that fall between levels (README "Benchmarks").
    mtcnn_scale_factor: float = 0.709
    # Per-camera face-size range for MTCNN (maskjob.scoring.face_sizes): a camera with at
    # least face_size_min_history faces in its recent history searches only its own size
    # (2%-trimmed) range widened by face_size_margin, except every face_size_recheck_frames-th frame
    # (1: every frame searches fully, i.e. off).
    face_size_recheck_frames: int = 10
    face_size_min_history: int = 50
    face_size_history_faces: int = 200
    face_size_history_days: float = 7.0
    face_size_margin: float = 1.25
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS
    score_batch_frames: int = 16
    retry_unreadable: bool = False
    score_lease_s: float = 60.0
    score_lease_wait_s: float = 0.0
    shards: int = 2

    review_threshold: float = 0.75
    blur_faces: bool = True
    gallery_cap: int = 24
    # The review page and the corrections loop (issue 12).
    review_sample_rate: float = 0.02  # share of confident faces sampled into the queue (agreement estimate)
    review_host: str = "127.0.0.1"
    review_port: int = 8765
    review_secret: str = ""  # signs session cookies; empty: a random key kept in <data_dir>/review_secret
    review_secure_cookies: bool = True
    review_session_hours: float = 12.0
    review_login_attempts: int = 5  # failed logins per user and address per review_login_window_s
    review_login_window_s: float = 900.0
    site_test_fraction: float = 0.3  # share of (camera, local day) groups exported to the site test split
    site_split_min_per_class: int = 20  # the gate scores the site split once each class has this many
    # The site (issue 13): local days, cameras, alerts.
    site_timezone: str = "UTC"
    default_compliance_target: float = 0.9
    default_expected_frames_per_hour: float = 0.0
    late_upload_grace_minutes: float = 0.0
    alert_conn_id: str = "smtp_default"
    alert_email_to: str = ""
    alert_unreadable_fraction: float = 0.05

    def __post_init__(self) -> None:
        _check_types(self)
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
    "train_threads": {"minimum": 0, "maximum": 256},
    "label_smoothing": {"minimum": 0.0, "exclusiveMaximum": 0.5},
    "mixup_alpha": {"minimum": 0.0, "maximum": 10.0},
    "promotion_margin": {"minimum": 0.0, "exclusiveMaximum": 1.0},
    "min_macro_f1": {"minimum": 0.0, "maximum": 1.0},
    "min_class_recall": {"minimum": 0.0, "maximum": 1.0},
    "retrain_max_age_days": {"exclusiveMinimum": 0.0},
    "detector_threshold": {"exclusiveMinimum": 0.0, "exclusiveMaximum": 1.0},
    "min_face_px": {"minimum": 8},
    "mtcnn_scale_factor": {"minimum": 0.3, "maximum": 0.9},
    "face_size_recheck_frames": {"minimum": 1},
    "face_size_min_history": {"minimum": 1},
    "face_size_history_faces": {"minimum": 1},
    "face_size_history_days": {"exclusiveMinimum": 0.0, "maximum": 3660.0},
    "face_size_margin": {"minimum": 1.0, "maximum": 10.0},
    "max_image_pixels": {"exclusiveMinimum": 0},
    "score_batch_frames": {"minimum": 1},
    "shards": {"minimum": 1},
    "score_lease_s": {"exclusiveMinimum": 0.0, "maximum": 86400.0},
    "score_lease_wait_s": {"minimum": 0.0, "maximum": 86400.0},
    "review_threshold": {"exclusiveMinimum": 0.0, "maximum": 1.0},
    "gallery_cap": {"minimum": 0},
    "review_sample_rate": {"minimum": 0.0, "maximum": 1.0},
    "review_port": {"minimum": 0, "maximum": 65535},
    "review_session_hours": {"exclusiveMinimum": 0.0, "maximum": 720.0},
    "review_login_attempts": {"minimum": 1},
    "review_login_window_s": {"exclusiveMinimum": 0.0},
    "site_test_fraction": {"minimum": 0.0, "maximum": 1.0},
    "site_split_min_per_class": {"minimum": 1},
    "default_compliance_target": {"minimum": 0.0, "maximum": 1.0},
    "default_expected_frames_per_hour": {"minimum": 0.0},
    "late_upload_grace_minutes": {"minimum": 0.0, "maximum": 1440.0},
    "alert_unreadable_fraction": {"exclusiveMinimum": 0.0, "maximum": 1.0},
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


def within_bounds(name: str, value: float) -> bool:
    """True when ``value`` satisfies every keyword of ``BOUNDS[name]``."""
    return all(_CHECKS[key][0](value, limit) for key, limit in BOUNDS[name].items())


def _validate(s: Settings) -> None:
    for name in BOUNDS:
        value = getattr(s, name)
        if not within_bounds(name, value):
            raise MaskjobError(f"bad setting: {name} must be {bounds_text(name)}, not {value!r}. "
                               "Fix it in your config file, MASKJOB_* variable or flag.")
    for name, allowed in CHOICES.items():
        if getattr(s, name) not in allowed:
            raise MaskjobError(f"bad setting: {name} must be one of {list(allowed)}, not {getattr(s, name)!r}. "
                               "Fix it in your config file, MASKJOB_* variable or flag.")
    if s.face_size_min_history > s.face_size_history_faces:
        raise MaskjobError(f"bad setting: face_size_min_history ({s.face_size_min_history}) must not exceed "
                           f"face_size_history_faces ({s.face_size_history_faces}), or no camera ever has enough "
                           "history. Fix it in your config file, MASKJOB_* variable or flag.")
    from maskjob.timeutil import zone

    try:
        zone(s.site_timezone)
    except ValueError as exc:
        raise MaskjobError(f"bad setting: site_timezone: {exc}. "
                           "Fix it in your config file, MASKJOB_* variable or flag.") from None


def _field_types() -> dict[str, str]:
    return {f.name: str(f.type) for f in fields(Settings)}


_INT_TEXT = re.compile(r"[+-]?[0-9]+")
_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})
# Values of these settings are never echoed in messages (a database URL may hold a password).
_SECRET_SETTINGS = frozenset({"database_url", "review_secret"})
_EXPECTED = {
    "int": "an int (a whole number such as 3)",
    "float": "a finite number such as 0.5",
    "bool": "true or false",
    "str": "a string",
    "Path": "a path (a string)",
}


def _kind(name: str) -> str:
    kind = _field_types()[name]
    return "Path" if "Path" in kind else kind


def _as_int(raw: Any) -> int:
    if isinstance(raw, int) and not isinstance(raw, bool):
        return raw
    if isinstance(raw, str) and _INT_TEXT.fullmatch(raw.strip()):
        return int(raw.strip())
    raise ValueError(raw)


def _as_float(raw: Any) -> float:
    if isinstance(raw, bool) or not isinstance(raw, (int, float, str)):
        raise ValueError(raw)
    value = float(raw.strip() if isinstance(raw, str) else raw)
    if not math.isfinite(value):
        raise ValueError(raw)
    return value


def _as_bool(raw: Any) -> bool:
    if isinstance(raw, bool):
        return raw
    if isinstance(raw, str):
        text = raw.strip().lower()
        if text in _TRUE:
            return True
        if text in _FALSE:
            return False
    raise ValueError(raw)


def _as_str(raw: Any) -> str:
    if isinstance(raw, str):
        return raw
    raise ValueError(raw)


def _as_path(raw: Any) -> Path:
    if isinstance(raw, os.PathLike):
        raw = os.fspath(raw)
    if isinstance(raw, str) and raw.strip():
        return Path(raw)
    raise ValueError(raw)


_CONVERTERS: dict[str, Callable[[Any], Any]] = {
    "int": _as_int, "float": _as_float, "bool": _as_bool, "str": _as_str, "Path": _as_path,
}


def _shown(name: str, raw: Any) -> str:
    if name in _SECRET_SETTINGS:
        return f"a {type(raw).__name__} (value not shown)"
    text = repr(raw)
    return f"{text if len(text) <= 80 else text[:77] + '...'} ({type(raw).__name__})"


def _coerce(name: str, raw: Any, source: str) -> Any:
    """``raw`` as setting ``name``'s type, strictly: an int refuses 3.7 and "3.7", a str or
    path refuses numbers, lists and tables; strings (env variables) are parsed."""
    kind = _kind(name)
    try:
        return _CONVERTERS[kind](raw)
    except (TypeError, ValueError, OverflowError):
        raise MaskjobError(
            f"bad setting {name} from {source}: expected {_EXPECTED[kind]}, got {_shown(name, raw)}. "
            "Fix the value and run again."
        ) from None


_TYPE_CHECKS: dict[str, Callable[[Any], bool]] = {
    "int": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "float": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v),
    "bool": lambda v: isinstance(v, bool),
    "str": lambda v: isinstance(v, str),
    "Path": lambda v: isinstance(v, os.PathLike) or (isinstance(v, str) and bool(v.strip())),
}


def _check_types(s: Settings) -> None:
    """Every field has its declared type (catches ``Settings(...)``/``replace`` with raw values);
    a path field may be a str, and a derived one ``None``."""
    types = _field_types()
    for name, declared in types.items():
        value, kind = getattr(s, name), _kind(name)
        if value is None and "None" in declared:
            continue
        if not _TYPE_CHECKS[kind](value):
            raise MaskjobError(f"bad setting {name}: expected {_EXPECTED[kind]}, got {_shown(name, value)}. "
                               "Fix it in your config file, MASKJOB_* variable or flag.")


def _settings_table(path: Path, data: dict[str, Any]) -> dict[str, Any]:
    """The settings in a parsed TOML file: all under ``[maskjob]`` or all at the top level."""
    if "maskjob" in data:
        table = data["maskjob"]
        if not isinstance(table, dict):
            raise MaskjobError(f"config file {path}: 'maskjob' must be a table ([maskjob]) of settings, "
                               f"got {_shown('maskjob', table)}.")
        others = sorted(k for k in data if k != "maskjob")
        if others:
            raise MaskjobError(
                f"config file {path} has settings under [maskjob] and also {others} outside it; "
                "put them all under [maskjob] or all at the top level."
            )
        return table
    known = _field_types()  # a table named like a setting is that setting's (wrong-typed) value
    tables = sorted(k for k, v in data.items() if isinstance(v, dict) and k not in known)
    if tables:
        raise MaskjobError(
            f"config file {path} has tables {['[' + t + ']' for t in tables]}; the only table maskjob reads "
            "is [maskjob]: put the settings all under [maskjob] or all at the top level."
        )
    return data


def _read_file(path: Path) -> dict[str, Any]:
    if path.is_dir():
        raise MaskjobError(f"config file {path} is a directory, not a TOML file. Pass the path of a .toml file.")
    try:
        with path.open("rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        raise MaskjobError(f"config file {path} does not exist. Pass an existing TOML file or unset {CONFIG_ENV}.") from None
    except OSError as exc:
        raise MaskjobError(f"config file {path} cannot be read ({exc.strerror or type(exc).__name__}). "
                           "Check the path and its permissions.") from None
    except UnicodeDecodeError:
        raise MaskjobError(f"config file {path} is not UTF-8 text, so not TOML. Pass a TOML file.") from None
    except tomllib.TOMLDecodeError as exc:
        raise MaskjobError(f"config file {path} is not valid TOML ({exc}). Fix its syntax.") from None
    table = _settings_table(path, data)
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


# --- secrets kept out of log output ---------------------------------------------------------
# Here (not in storage.database) so the CLI can install the filter without importing SQLAlchemy.

_SECRETS: set[str] = set()
_REDACTED = "***"


def register_secrets(values: Any) -> None:
    """Remember strings (a database password, connection extras) that no log line may show."""
    _SECRETS.update(v for v in values if isinstance(v, str) and v)


def redact(text: str) -> str:
    """``text`` with every registered secret replaced by ``***`` (longest first)."""
    for secret in sorted(_SECRETS, key=len, reverse=True):
        if secret in text:
            text = text.replace(secret, _REDACTED)
    return text


class SecretFilter(logging.Filter):
    """A handler filter that redacts registered secrets from each record's message and traceback.

    Libraries' own debug lines (psycopg, SQLAlchemy's pool) can echo a server's error, which
    may quote a connection extra; put this filter on every handler that writes records out.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if not _SECRETS:
            return True
        message = record.getMessage()
        clean = redact(message)
        if clean != message:
            record.msg, record.args = clean, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        return True


def replace(settings: Settings, **changes: Any) -> Settings:
    """A copy of ``settings`` with ``changes`` applied and validated."""
    return dataclasses.replace(settings, **changes)
