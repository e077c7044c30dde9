"""The nightly job's steps as plain functions with JSON-serialisable inputs and outputs.

The Airflow DAG (``dags/mask_compliance.py``) passes their results between tasks as XCom;
``maskjob run`` drives the same DAG in-process. Every step takes ``config``: maskjob
settings overrides (the DAG run's params); ``None`` or empty values fall back to settings.

Example:
    >>> check = validate_dataset({"data_dir": "data"})        # doctest: +SKIP
    >>> decide_retrain({"data_dir": "data"}, check["fingerprint"])["retrain"]  # doctest: +SKIP
    True
"""

from __future__ import annotations

import logging
from dataclasses import asdict, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Mapping

from maskjob.config import Settings, load_settings
from maskjob.errors import MaskjobError

__all__ = [
    "check_transfer_weights",
    "database_url_from_connection",
    "decide_retrain",
    "export_corrections",
    "plan_scoring",
    "register_and_promote",
    "render_reports",
    "run_settings",
    "score_shard",
    "train_candidate",
    "validate_dataset",
]

logger = logging.getLogger(__name__)

_SETTING_NAMES = frozenset(f.name for f in fields(Settings))


def run_settings(config: Mapping[str, Any]) -> Settings:
    """Settings for one run: maskjob settings with the ``config`` keys that name settings applied.

    Keys that are not settings (e.g. ``image_size``, ``force_retrain``) are ignored here;
    ``None`` and empty strings mean "use the setting's default".
    """
    overrides = {k: v for k, v in config.items() if k in _SETTING_NAMES and v not in (None, "")}
    return load_settings(overrides=overrides)


def database_url_from_connection(
    conn_type: str | None,
    *,
    host: str | None = None,
    schema: str | None = None,
    login: str | None = None,
    password: str | None = None,
    port: int | None = None,
    extra: Mapping[str, Any] | str | None = None,
) -> str:
    """A SQLAlchemy URL (text) from an Airflow connection's fields and extras (``postgres`` or ``sqlite``).

    See :func:`maskjob.storage.connections.url_from_connection` (which extras are honoured).
    """
    from maskjob.storage.connections import url_from_connection

    return url_from_connection(
        conn_type, host=host, schema=schema, login=login, password=password, port=port, extra=extra
    ).render_as_string(hide_password=False)


def _utc(iso: str) -> datetime:
    """An ISO timestamp as naive UTC (the database's form); naive input is taken as UTC."""
    from maskjob.timeutil import to_naive_utc

    return to_naive_utc(datetime.fromisoformat(iso))


def export_corrections(config: Mapping[str, Any]) -> dict[str, Any]:
    """Export the reviewed faces into the training dataset (:mod:`maskjob.review.export`).

    Runs before :func:`validate_dataset`, so the check and the fingerprint see the crops: new
    or changed reviews change the fingerprint and the run retrains. A database without reviews
    exports nothing; a frame that cannot be read is listed under ``bad``, never an error. Also
    brings the database schema to head, as the first step that touches the database.

    Returns:
        :meth:`maskjob.review.export.ExportResult.to_dict` (counts per split and label, written,
        removed, bad).
    """
    from maskjob.review.export import export_corrections as export
    from maskjob.storage.database import database, upgrade

    settings = run_settings(config)
    upgrade(settings.database_url, settings=settings)
    with database(settings.database_url) as engine:
        result = export(engine, settings)
    logger.info("%s", result.format_text())
    return result.to_dict()


def check_transfer_weights(settings: Settings) -> dict[str, str]:
    """Resolve the ImageNet weights of ``settings.transfer_arch`` (cache, else download), before any training.

    Returns:
        The verified file's meta (``file``, ``sha256``, ``source``).

    Raises:
        MaskjobError: the weights do not resolve: how to install them, or which transfer model
            the offline demo's assets provide.
    """
    from maskjob.ml.models import OFFLINE_ASSETS, resolve_weights

    try:
        weights = resolve_weights(settings.transfer_arch, torch_home=settings.torch_home)
    except MaskjobError as exc:
        offline = ", ".join(sorted(OFFLINE_ASSETS))
        raise MaskjobError(
            f"{exc} Or choose a transfer model whose weights you have: the transfer_arch setting or DAG "
            f"param (the offline demo's assets provide {offline}: `maskjob run --transfer-arch mobilenet_v2`)."
        ) from None
    logger.info("%s weights %s resolve (%s)", settings.transfer_arch, weights.file_name, weights.source)
    return weights.to_meta()


def validate_dataset(config: Mapping[str, Any]) -> dict[str, Any]:
    """Check the training dataset and fingerprint it, and check that the transfer model's
    pretrained weights resolve (:func:`check_transfer_weights`), so a run fails before training.

    Returns:
        The check as a dict (counts, problems) plus ``fingerprint`` and ``transfer_weights``.

    Raises:
        MaskjobError: a broken dataset, with every problem found and how to fix it, or missing weights.
    """
    from maskjob.ml.dataset import check_dataset
    from maskjob.storage.registry import json_safe

    settings = run_settings(config)
    check = check_dataset(settings.dataset_root, settings.max_image_pixels)
    if not check.ok:
        raise MaskjobError(
            f"the training dataset at {settings.dataset_root} is broken:\n{check.format_text()}\n"
            "Fix or remove the files listed above and run again."
        )
    fingerprint = check.fingerprint  # from the same reads as the check: each image is read once
    logger.info("dataset %s is valid (fingerprint %s)", settings.dataset_root, fingerprint[:12])
    weights = check_transfer_weights(settings)
    return {**json_safe(check.to_dict()), "fingerprint": fingerprint, "transfer_weights": weights}


def decide_retrain(
    config: Mapping[str, Any], fingerprint: str, *, force: bool = False, now: str | None = None
) -> dict[str, Any]:
    """Decide whether this run trains new candidates.

    Retrain when forced, when there is no champion, when the dataset fingerprint differs from
    the one the champion was trained on (exported reviews change it), or when the champion is
    older than ``retrain_max_age_days`` at ``now`` (ISO time; default the current time). Also
    brings the database schema to head (idempotent: in the DAG, :func:`export_corrections` did first).

    Returns:
        ``{"retrain": bool, "reason": str, "champion": version or None}``.
    """
    from maskjob.storage.database import database, upgrade
    from maskjob.storage.registry import champion
    from maskjob.timeutil import to_utc, utcnow

    settings = run_settings(config)
    upgrade(settings.database_url, settings=settings)
    with database(settings.database_url) as engine:
        current = champion(engine)
    moment = to_utc(datetime.fromisoformat(now)) if now else utcnow()
    if force:
        retrain, reason = True, "retraining was forced (force_retrain)"
    elif current is None:
        retrain, reason = True, "there is no champion model yet"
    elif current.dataset_fingerprint != fingerprint:
        retrain, reason = True, f"the dataset changed since champion {current.version} was trained"
    else:
        age_days = (moment - current.created_at).total_seconds() / 86400.0
        retrain = age_days > settings.retrain_max_age_days
        reason = (
            f"champion {current.version} is {age_days:.1f} days old "
            f"({'over' if retrain else 'within'} the {settings.retrain_max_age_days:g}-day limit)"
        )
    logger.info("%s: %s", "retraining" if retrain else "skipping training", reason)
    return {"retrain": retrain, "reason": reason, "champion": current.version if current else None}


def train_candidate(
    arch: str, config: Mapping[str, Any], *, image_size: int | None = None, concurrent: int = 1
) -> dict[str, Any]:
    """Train one candidate into its own new folder under ``models_dir/candidates``.

    A fresh folder per attempt keeps a retried or re-run training from overwriting a
    checkpoint the registry already points at. The process takes its CPU share first
    (:func:`maskjob.ml.threads.apply_thread_budget`): ``concurrent`` trainings run at once.

    Returns:
        ``{"arch", "checkpoint_path", "val_macro_f1", "test_macro_f1"}``.
    """
    from maskjob.ml.threads import apply_thread_budget
    from maskjob.ml.train import train_model

    settings = apply_thread_budget(run_settings(config), concurrent=concurrent)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%f")
    out_dir = settings.models_dir / "candidates" / f"{stamp}-{arch}"
    result = train_model(arch, settings.dataset_root, out_dir, settings, image_size=image_size)
    meta = result.meta
    summary = {
        "arch": arch,
        "checkpoint_path": str(result.checkpoint_path),
        "val_macro_f1": meta.get("val_macro_f1"),
        "test_macro_f1": (meta.get("metrics") or {}).get("macro_f1"),
    }
    logger.info("trained %s: %s", arch, summary)
    return summary


def register_and_promote(config: Mapping[str, Any], checkpoint_paths: list[str]) -> dict[str, Any]:
    """Register the candidates, then apply the promotion rules (on test, and on test_site once
    it holds ``site_split_min_per_class`` faces of every class: :mod:`maskjob.storage.registry`).

    Returns:
        ``{"registered": [versions], "promoted": version or None, "champion": version or None,
        "decisions": [...]}``.
    """
    from maskjob.storage.database import database
    from maskjob.storage.registry import champion, json_safe, promote, register

    settings = run_settings(config)
    with database(settings.database_url) as engine:
        registered = [register(engine, Path(path)).version for path in checkpoint_paths]
        result = promote(engine, settings.dataset_root, settings)
        current = champion(engine)
    outcome = {
        "registered": registered,
        "promoted": result.promoted.version if result.promoted else None,
        "champion": current.version if current else None,
        "decisions": [json_safe(asdict(d)) for d in result.decisions],
    }
    logger.info("registered %s; champion now %s", registered, outcome["champion"])
    return outcome


def plan_scoring(config: Mapping[str, Any], start: str, end: str, shard_count: int) -> list[dict[str, Any]]:
    """Split the frames captured in ``[start, end)`` into scoring shards for the champion.

    Only non-empty shards are returned, so an interval without frames maps to no work.

    Raises:
        MaskjobError: no champion model (nothing passed the promotion rules yet).
    """
    from maskjob.scoring.frames import discover_frames, shard_frames
    from maskjob.storage.cameras import camera_zones, ensure_cameras
    from maskjob.storage.database import database
    from maskjob.storage.registry import champion

    settings = run_settings(config)
    with database(settings.database_url) as engine:
        current = champion(engine)
        if current is None:
            raise MaskjobError(
                "there is no champion model to score with: no candidate has passed the promotion rules. "
                "See `maskjob models list` for the decisions, then retrain (force_retrain) or promote one."
            )
        with engine.connect() as conn:
            zones = camera_zones(conn, settings)
        frames = discover_frames(settings.inbox_dir, since=_utc(start), until=_utc(end), zones=zones)
        # Before the shards fan out: each new camera is registered once, with the site defaults.
        with engine.begin() as conn:
            new = ensure_cameras(conn, (f.camera_id for f in frames), settings)
    if new:
        logger.info("registered %d new camera(s) with the site defaults: %s", len(new), ", ".join(new))
    shards = []
    for index in range(shard_count):
        n_frames = len(shard_frames(frames, index, shard_count))
        if n_frames:
            shards.append({"index": index, "count": shard_count, "start": start, "end": end,
                           "model_version": current.version, "n_frames": n_frames})
    logger.info("%d frames in [%s, %s) -> %d shards for %s", len(frames), start, end, len(shards), current.version)
    return shards


def score_shard(config: Mapping[str, Any], shard: Mapping[str, Any]) -> dict[str, Any]:
    """Score one shard from :func:`plan_scoring`; idempotent per (frame, model version)."""
    from maskjob.scoring.score import score
    from maskjob.storage.database import database

    settings = run_settings(config)
    with database(settings.database_url) as engine:
        summary = score(
            engine, settings, settings.inbox_dir, _utc(shard["start"]), _utc(shard["end"]),
            shard=(int(shard["index"]), int(shard["count"])), model_version=shard["model_version"],
        )
    logger.info("%s", summary.format_line())
    return summary.to_dict()


def render_reports(config: Mapping[str, Any], start: str, end: str, *, with_model_report: bool) -> dict[str, Any]:
    """Render the interval's compliance report, and the champion's model report if asked.

    Returns:
        ``{"compliance_report": path, "model_report": path or None}``.
    """
    from maskjob.reporting.compliance import render_compliance_report
    from maskjob.storage.database import database

    settings = run_settings(config)
    with database(settings.database_url) as engine:
        compliance = render_compliance_report(engine, settings, _utc(start), _utc(end), out_dir=settings.reports_dir)
        model = None
        if with_model_report:
            from maskjob.reporting.model_report import render_model_report

            model = render_model_report(engine, settings, out_dir=settings.reports_dir)
    logger.info("compliance report %s; model report %s", compliance, model)
    return {"compliance_report": str(compliance), "model_report": str(model) if model else None}
