"""The model registry: trained checkpoints as versions, and champion/challenger promotion.

Promotion rules (``decide``), applied to every candidate and the champion evaluated on the
same held-out test split, and on the site split ``test_site`` once it is big enough:

1. A candidate that diverged in training, produced NaN/inf outputs, could not be evaluated
   (checkpoint missing, changed, unreadable or invalid, or its evaluation raised), has
   macro-F1 below ``min_macro_f1``, or any class recall below ``min_class_recall`` is
   rejected, with the reason stored; it never blocks the decision on the other candidates.
   The bar is on the test split.
2. Of the rest, the best macro-F1 (ties: the later registered) is promoted when there is no
   usable champion, or when it beats the champion's macro-F1 by MORE than
   ``promotion_margin``; the champion then becomes ``retired``.
3. Every other candidate is rejected: each candidate is decided exactly once, so a version
   that lost is never silently promoted by a later run.

The split that ranks: ``test_site`` (:data:`maskjob.vocab.SITE_TEST_SPLIT`, faces of this
site's own cameras that reviewers labelled, exported by :mod:`maskjob.review.export`) when
every class there has at least ``site_split_min_per_class`` images and the champion could be
scored on it; otherwise ``test``. The site split ranks because it measures the faces this site
actually sees: the test split is the training data's own distribution (demo or public faces),
on which every model looks better than at the cameras. Too few site faces per class would make
its macro-F1 noise, so below the minimum the decision ranks on test and its reason says why
("test_site has 7 partial_mask faces, needs 20; ranked on test"). The figures of both splits
are in the reason and in ``model_versions.metrics["splits"]``.

Example:
    >>> mv = register(engine, "data/models/candidates/x/cnn.pt")   # doctest: +SKIP
    >>> promote(engine, settings.dataset_root, settings).promoted   # doctest: +SKIP
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from maskjob import CLASSES
from maskjob.config import Settings
from maskjob.errors import MaskjobError
from maskjob.imageio import sha256_file
from maskjob.storage.database import session
from maskjob.storage.schema import ModelVersion, PromotionDecision
from maskjob.timeutil import to_utc, utcnow
from maskjob.vocab import SITE_TEST_SPLIT

__all__ = [
    "Scored", "Decision", "PromotionResult", "Evaluator",
    "register", "champion", "list_versions", "decide", "promote", "json_safe", "site_split_shortfall",
]

logger = logging.getLogger(__name__)

# ``checkpoint path -> metrics`` on one split (promote takes one for test, one for test_site).
Evaluator = Callable[[Path], Mapping[str, Any]]
# A gain equal to the margin is a tie; the tolerance keeps float rounding (0.905 - 0.900 is
# 0.0050000000000000044) from promoting it.
MARGIN_TOLERANCE = 1e-9


@dataclass(frozen=True)
class Scored:
    """A model version's evaluation, as the promotion rules see it.

    ``problem`` says why it could not be evaluated; ``note`` qualifies how it was (e.g. a
    champion compared on stored metrics because its checkpoint is gone).
    """

    version_id: int
    version: str
    macro_f1: float | None
    class_recall: Mapping[str, float] = field(default_factory=dict)
    finite: bool = True
    diverged: bool = False
    problem: str | None = None
    note: str | None = None
    # On the site split (test_site), when it was scored: macro-F1, finite outputs, or why not.
    site_macro_f1: float | None = None
    site_finite: bool = True
    site_problem: str | None = None


@dataclass(frozen=True)
class Decision:
    """What promotion does to one version: its new ``status``, why, and the split that ranked."""

    version_id: int
    version: str
    status: str
    promoted: bool
    reason: str
    macro_f1: float | None = None  # on test
    ranked_on: str = "test"
    site_macro_f1: float | None = None


@dataclass(frozen=True)
class PromotionResult:
    promoted: ModelVersion | None
    decisions: list[Decision]


def json_safe(value: Any) -> Any:
    """``value`` with NaN/inf floats as ``None`` and tuples as lists (strict JSON for both databases)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def _finite(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _created_at(meta: Mapping[str, Any], path: Path) -> datetime:
    try:
        moment = datetime.fromisoformat(str(meta["created_at"]))
    except (TypeError, ValueError):
        raise MaskjobError(f"checkpoint {path} has created_at {meta['created_at']!r}, not an ISO time; "
                           "retrain it with `maskjob train`") from None
    return to_utc(moment)


def _metrics_nonfinite(metrics: Mapping[str, Any]) -> bool:
    return metrics.get("finite") is False or _finite(metrics.get("macro_f1")) is None


def _diverged(meta: Mapping[str, Any]) -> bool:
    """Training blew up: flagged by the trainer, a NaN/inf loss in the history, or NaN test outputs."""
    metrics = meta.get("metrics") or {}
    losses = [epoch.get(key) for epoch in meta.get("history") or () for key in ("train_loss", "val_loss")]
    return (bool(meta.get("diverged"))
            or any(loss is not None and _finite(loss) is None for loss in losses)
            or ("macro_f1" in metrics and _metrics_nonfinite(metrics)))


def register(engine: Engine, ckpt_path: str | Path) -> ModelVersion:
    """Record a trained checkpoint as a ``candidate`` version.

    The checkpoint passes the same validation as evaluation and scoring
    (:func:`maskjob.ml.checkpoint.validate_checkpoint`) before any row is written, so a
    checkpoint that promotion or scoring would refuse is never registered. Registering the
    same file content again (same sha256) returns the existing row.

    Raises:
        MaskjobError: missing, unreadable, corrupt or tampered checkpoint, a meta field of the
            wrong type, or weights that do not fit the architecture.
    """
    from maskjob.ml.checkpoint import load_checkpoint

    path = Path(ckpt_path).expanduser().resolve()
    if not path.is_file():
        raise MaskjobError(f"checkpoint {path} does not exist; train one with `maskjob train` or fix the path")
    try:
        sha = sha256_file(path)
    except OSError as exc:
        raise MaskjobError(f"checkpoint {path} cannot be read ({exc.strerror or type(exc).__name__}); "
                           "check its permissions") from None
    existing = _by_sha(engine, sha)
    if existing is not None:
        logger.info("checkpoint %s is already registered as %s", path, existing.version)
        return existing
    _, meta = load_checkpoint(path)  # the full validation, before any row is written
    created_at = _created_at(meta, path)
    metrics = json_safe({k: v for k, v in (meta.get("metrics") or {}).items() if k != "predictions"})
    row = ModelVersion(
        version=f"{meta['arch']}-{created_at:%Y%m%dT%H%M%S}-{sha[:8]}",
        arch=meta["arch"], checkpoint_path=str(path), checkpoint_sha256=sha,
        dataset_fingerprint=meta.get("dataset_fingerprint"), metrics=metrics,
        test_macro_f1=_finite(metrics.get("macro_f1")),
        diverged=_diverged(meta),
        created_at=created_at, status="candidate",
    )
    try:
        with session(engine) as s:
            s.add(row)
    except sa.exc.IntegrityError:
        existing = _by_sha(engine, sha)  # registered concurrently by another process
        if existing is None:
            raise
        return existing
    logger.info("registered %s (%s, test macro-F1 %s) as candidate", row.version, path, row.test_macro_f1)
    return row


def _by_sha(engine: Engine, sha: str) -> ModelVersion | None:
    with session(engine) as s:
        return s.scalars(sa.select(ModelVersion).where(ModelVersion.checkpoint_sha256 == sha)).one_or_none()


def champion(engine: Engine) -> ModelVersion | None:
    """The current champion, or ``None`` before the first promotion."""
    with session(engine) as s:
        return s.scalars(sa.select(ModelVersion).where(ModelVersion.status == "champion")).one_or_none()


def list_versions(engine: Engine) -> list[ModelVersion]:
    """Every registered version, oldest first."""
    with session(engine) as s:
        return list(s.scalars(sa.select(ModelVersion).order_by(ModelVersion.id)))


def _bar_failures(c: Scored, settings: Settings, on_site: bool) -> list[str]:
    if c.problem:
        return [f"could not be evaluated: {c.problem}"]
    if c.diverged:
        return ["training diverged (NaN/inf loss); a diverged model is never promoted"]
    if not c.finite or c.macro_f1 is None or not math.isfinite(c.macro_f1):
        return [f"evaluation produced NaN/inf outputs (macro-F1 {c.macro_f1}); never promoted"]
    if on_site and c.site_problem:
        return [f"could not be evaluated on {SITE_TEST_SPLIT}: {c.site_problem}"]
    if on_site and (not c.site_finite or c.site_macro_f1 is None or not math.isfinite(c.site_macro_f1)):
        return [f"{SITE_TEST_SPLIT} evaluation produced NaN/inf outputs (macro-F1 {c.site_macro_f1}); never promoted"]
    failures = []
    if c.macro_f1 < settings.min_macro_f1:
        failures.append(f"macro-F1 {c.macro_f1:.4f} is below the minimum {settings.min_macro_f1:.4f}")
    for name in CLASSES:
        recall = c.class_recall.get(name)
        if recall is None or not math.isfinite(recall) or recall < settings.min_class_recall:
            shown = "missing" if recall is None else f"{recall:.4f}"
            failures.append(f"{name} recall {shown} is below the minimum {settings.min_class_recall:.4f}")
    return failures


def _f1(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def site_split_shortfall(site_counts: Mapping[str, int] | None, settings: Settings) -> str | None:
    """Why the site split cannot rank (too few faces of some class), ``None`` when it can or is absent."""
    if site_counts is None:
        return None
    need = settings.site_split_min_per_class
    short = [f"{site_counts.get(name, 0)} {name}" for name in CLASSES if site_counts.get(name, 0) < need]
    if not short:
        return None
    listed = short[0] if len(short) == 1 else f"{', '.join(short[:-1])} and {short[-1]}"
    return f"{SITE_TEST_SPLIT} has {listed} faces, needs {need}{' per class' if len(short) > 1 else ''}"


def decide(candidates: Sequence[Scored], current: Scored | None, settings: Settings, *,
           site_counts: Mapping[str, int] | None = None) -> list[Decision]:
    """Apply the promotion rules (module docstring); pure, so they are tested without training.

    Args:
        candidates: the candidates, scored on test (and on test_site when it can rank).
        current: the champion, scored the same way, or ``None``.
        settings: ``min_macro_f1``, ``min_class_recall``, ``promotion_margin``, ``site_split_min_per_class``.
        site_counts: images per class in test_site; ``None`` when the dataset has no such split.

    Returns:
        One decision per candidate (``champion`` or ``rejected``), plus ``retired`` for the
        champion when a candidate replaces it.
    """
    shortfall = site_split_shortfall(site_counts, settings)
    on_site = site_counts is not None and shortfall is None
    why_test = f"; {shortfall}; ranked on test" if shortfall else ""
    champ_site = None if current is None or not current.site_finite else _finite(current.site_macro_f1)
    if on_site and current is not None and champ_site is None:
        why = current.site_problem or "NaN/inf outputs"
        on_site, why_test = False, f"; champion {current.version} has no {SITE_TEST_SPLIT} macro-F1 ({why}); ranked on test"
    split = SITE_TEST_SPLIT if on_site else "test"
    label = f"{SITE_TEST_SPLIT} macro-F1" if on_site else "macro-F1"

    def rank(c: Scored) -> float:
        value = c.site_macro_f1 if on_site else c.macro_f1
        assert value is not None
        return value

    def decision(c: Scored, status: str, promoted: bool, reason: str) -> Decision:
        return Decision(c.version_id, c.version, status, promoted, reason, c.macro_f1, split, _finite(c.site_macro_f1))

    decisions: dict[int, Decision] = {}
    eligible = []
    for c in candidates:
        failures = _bar_failures(c, settings, on_site)
        if failures:
            decisions[c.version_id] = decision(c, "rejected", False, "; ".join(failures))
        else:
            eligible.append(c)
    best = max(eligible, key=lambda c: (rank(c), c.version_id), default=None)
    retired = None
    if best is not None:
        assert best.macro_f1 is not None
        bar = f"passes the bar (macro-F1 >= {settings.min_macro_f1:.4f}, every class recall >= {settings.min_class_recall:.4f})"
        champ_test = None if current is None or not current.finite else _finite(current.macro_f1)
        champ_f1 = champ_site if on_site else champ_test
        note = f" (champion {current.note})" if current is not None and current.note else ""
        figure = f"{label} {rank(best):.4f}" + (f" (test {best.macro_f1:.4f})" if on_site else "")
        if current is None:
            promoted, reason = True, f"no champion yet; {figure} {bar}"
        elif champ_f1 is None:
            promoted, reason = True, (f"champion {current.version} has no usable macro-F1{note}; {figure} {bar}")
        else:
            gain = rank(best) - champ_f1
            promoted = gain > settings.promotion_margin + MARGIN_TOLERANCE
            verdict = "beats" if promoted else "does not beat"
            reason = (f"{label} {rank(best):.4f} {verdict} champion {current.version} ({champ_f1:.4f}) "
                      f"by more than the margin {settings.promotion_margin:.4f} (gain {gain:+.4f})")
            if on_site:
                reason += f" (test {best.macro_f1:.4f} vs {_f1(champ_test)})"
            reason += note
        decisions[best.version_id] = decision(best, "champion" if promoted else "rejected", promoted,
                                              reason + why_test)
        if promoted and current is not None:
            retired = Decision(current.version_id, current.version, "retired", False,
                               f"replaced by {best.version} ({label} {rank(best):.4f} vs {_f1(champ_f1)}){note}",
                               champ_test, split, champ_site)
    for c in eligible:
        if c is not best:
            assert best is not None
            decisions[c.version_id] = decision(
                c, "rejected", False,
                f"passes the bar but candidate {best.version} scored higher ({label} {rank(c):.4f} "
                f"vs {rank(best):.4f}){why_test}")
    ordered = [decisions[c.version_id] for c in candidates]
    return ordered + ([retired] if retired else [])


def _recalls(metrics: Mapping[str, Any]) -> dict[str, float]:
    per_class = metrics.get("per_class")
    if not isinstance(per_class, Mapping):
        return {}
    entries = {name: per_class.get(name) for name in CLASSES}
    return {name: r for name, entry in entries.items()
            if isinstance(entry, Mapping) and (r := _finite(entry.get("recall"))) is not None}


def _scored(mv: ModelVersion, metrics: Mapping[str, Any], **extra: Any) -> Scored:
    recall = _recalls(metrics)
    macro_f1 = _finite(metrics.get("macro_f1"))
    return Scored(mv.id, mv.version, macro_f1, recall, finite=not _metrics_nonfinite(metrics),
                  diverged=mv.diverged, **extra)


def _first_line(exc: BaseException, limit: int = 300) -> str:
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0][:limit]}" if lines else type(exc).__name__


def _evaluate(mv: ModelVersion, evaluate: Evaluator) -> tuple[Mapping[str, Any] | None, str | None]:
    """``(metrics, None)``, or ``(None, why)``: one bad model never stops promotion deciding the others."""
    path = Path(mv.checkpoint_path)
    try:
        if not path.is_file():
            return None, f"checkpoint file {path} is missing"
        if sha256_file(path) != mv.checkpoint_sha256:
            return None, f"checkpoint file {path} changed since registration (sha256 mismatch)"
        metrics = evaluate(path)
    except MaskjobError as exc:
        return None, str(exc)
    except Exception as exc:  # an evaluation that crashes rejects that model only, with its reason
        logger.warning("evaluating %s (%s) failed", mv.version, path, exc_info=True)
        return None, f"evaluating checkpoint {path} failed ({_first_line(exc)})"
    if not isinstance(metrics, Mapping):
        return None, f"evaluating checkpoint {path} returned {type(metrics).__name__}, not a metrics mapping"
    return metrics, None


def _summary(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """What ``model_versions.metrics["splits"]`` keeps of an evaluation: all but the per-image predictions."""
    return json_safe({k: v for k, v in metrics.items() if k != "predictions"})


@dataclass
class _Scoring:
    """A version's scores for ``decide`` and the per-split metrics stored with it."""

    scored: Scored
    splits: dict[str, dict[str, Any]] = field(default_factory=dict)


def _with_site(scoring: _Scoring, mv: ModelVersion, evaluate_site: Evaluator | None) -> _Scoring:
    if evaluate_site is None:
        return scoring
    metrics, problem = _evaluate(mv, evaluate_site)
    if metrics is None:
        scored = replace(scoring.scored, site_problem=problem)
    else:
        scoring.splits[SITE_TEST_SPLIT] = _summary(metrics)
        scored = replace(scoring.scored, site_macro_f1=_finite(metrics.get("macro_f1")),
                         site_finite=not _metrics_nonfinite(metrics))
    return _Scoring(scored, scoring.splits)


def _score_candidate(mv: ModelVersion, evaluate: Evaluator, evaluate_site: Evaluator | None) -> _Scoring:
    metrics, problem = _evaluate(mv, evaluate)
    if metrics is None:
        return _Scoring(Scored(mv.id, mv.version, None, diverged=mv.diverged, problem=problem))
    return _with_site(_Scoring(_scored(mv, metrics), {"test": _summary(metrics)}), mv, evaluate_site)


def _score_champion(mv: ModelVersion, evaluate: Evaluator, evaluate_site: Evaluator | None) -> _Scoring:
    metrics, problem = _evaluate(mv, evaluate)
    if metrics is not None:
        return _with_site(_Scoring(_scored(mv, metrics), {"test": _summary(metrics)}), mv, evaluate_site)
    logger.warning("champion %s cannot be re-evaluated (%s); comparing on its stored test metrics",
                   mv.version, problem)
    stored = {**(mv.metrics if isinstance(mv.metrics, Mapping) else {}), "macro_f1": mv.test_macro_f1}
    note = f"not re-evaluated: {problem}; compared on its stored test metrics"
    return _Scoring(_scored(mv, stored, note=note, site_problem=f"not re-evaluated: {problem}"))


def _default_evaluator(data_root: str | Path, settings: Settings, split: str = "test") -> Evaluator:
    def evaluate(path: Path) -> Mapping[str, Any]:
        from maskjob.ml.evaluate import evaluate_checkpoint

        return evaluate_checkpoint(path, data_root, split=split, settings=settings)

    return evaluate


def promote(engine: Engine, data_root: str | Path, settings: Settings, *,
            evaluate: Evaluator | None = None, evaluate_site: Evaluator | None = None) -> PromotionResult:
    """Evaluate the candidates and the champion on ``data_root``'s test split (and its
    ``test_site`` split when every class there has ``site_split_min_per_class`` images) and
    apply the rules.

    Every decision is stored (``promotion_decisions`` and ``model_versions.decision_reason``),
    and each evaluated version's metrics per split in ``model_versions.metrics["splits"]``.

    Args:
        engine: a migrated database.
        data_root: the dataset with a ``test`` split, the same for every model compared.
        settings: ``promotion_margin``, ``min_macro_f1``, ``min_class_recall``, ``site_split_min_per_class``.
        evaluate: ``path -> metrics`` on test (default ``maskjob.ml.evaluate.evaluate_checkpoint``).
        evaluate_site: the same on test_site (default: ``evaluate_checkpoint`` on that split).

    Returns:
        The new champion (``None`` when nothing was promoted) and every decision.

    Raises:
        MaskjobError: the test_site folder has a wrong layout, or the registry changed meanwhile.
    """
    from maskjob.ml.dataset import split_counts

    evaluate = evaluate or _default_evaluator(data_root, settings)
    with session(engine) as s:
        candidates = list(s.scalars(sa.select(ModelVersion).where(ModelVersion.status == "candidate")
                                    .order_by(ModelVersion.id)))
        current = s.scalars(sa.select(ModelVersion).where(ModelVersion.status == "champion")).one_or_none()
    if not candidates:
        logger.info("no candidates to promote; champion stays %s", current.version if current else None)
        return PromotionResult(None, [])
    site_counts = split_counts(data_root, SITE_TEST_SPLIT)
    site_ranks = site_counts is not None and site_split_shortfall(site_counts, settings) is None
    on_site = (evaluate_site or _default_evaluator(data_root, settings, SITE_TEST_SPLIT)) if site_ranks else None
    scorings = [_score_candidate(mv, evaluate, on_site) for mv in candidates]
    champion_scoring = _score_champion(current, evaluate, on_site) if current else None
    scored_champion = champion_scoring.scored if champion_scoring else None
    decisions = decide([sc.scored for sc in scorings], scored_champion, settings, site_counts=site_counts)
    splits = {sc.scored.version_id: sc.splits for sc in scorings + ([champion_scoring] if champion_scoring else [])}
    promoted = _apply(engine, decisions, [mv.id for mv in candidates], current, scored_champion, splits)
    for d in decisions:
        logger.info("%s -> %s: %s", d.version, d.status, d.reason)
    return PromotionResult(promoted, decisions)


def _apply(engine: Engine, decisions: list[Decision], candidate_ids: list[int],
           current: ModelVersion | None, scored_champion: Scored | None,
           splits: Mapping[int, Mapping[str, Any]]) -> ModelVersion | None:
    now = utcnow()
    with session(engine) as s:
        rows = {mv.id: mv for mv in s.scalars(
            sa.select(ModelVersion).where(ModelVersion.status.in_(("candidate", "champion"))).with_for_update())}
        now_champion = next((mv.id for mv in rows.values() if mv.status == "champion"), None)
        if any(rows.get(i) is None or rows[i].status != "candidate" for i in candidate_ids) or \
                now_champion != (current.id if current else None):
            raise MaskjobError("the model registry changed while promotion was evaluating (another "
                               "`maskjob promote` ran?); run `maskjob promote` again")
        for version_id, per_split in splits.items():
            if per_split and version_id in rows:
                mv = rows[version_id]
                stored = dict(mv.metrics) if isinstance(mv.metrics, Mapping) else {}
                evaluated = {split: {**m, "evaluated_at": now.isoformat()} for split, m in per_split.items()}
                mv.metrics = {**stored, "splits": evaluated}  # a new dict: the JSON column sees the change
        promoted = None
        # Retire first: the database allows one champion at a time.
        for d in sorted(decisions, key=lambda d: d.status != "retired"):
            mv = rows[d.version_id]
            mv.status, mv.decision_reason = d.status, d.reason
            if d.promoted:
                mv.promoted_at, promoted = now, mv
            s.flush()
            if d.status != "retired":
                s.add(PromotionDecision(
                    decided_at=now, candidate_id=d.version_id, champion_before_id=current.id if current else None,
                    promoted=d.promoted, candidate_macro_f1=_finite(d.macro_f1),
                    champion_macro_f1=_finite(scored_champion.macro_f1) if scored_champion else None,
                    reason=d.reason,
                ))
    return promoted


def load_registered(model: ModelVersion) -> Any:
    from maskjob.ml.checkpoint import load_classifier

    path = Path(model.checkpoint_path)
    if not path.is_file():
        raise MaskjobError(
            f"checkpoint {path} of model {model.version} is missing; restore it or promote another model"
        )
    if sha256_file(path) != model.checkpoint_sha256:
        raise MaskjobError(
            f"checkpoint {path} of model {model.version} changed since it was registered "
            "(sha256 mismatch); restore the original file or register the new one"
        )
    return load_classifier(path)
