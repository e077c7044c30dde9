"""The model registry: trained checkpoints as versions, and champion/challenger promotion.

Promotion rules (``decide``), applied to every candidate and the champion evaluated on the
same held-out test split, and on each optional test split the dataset has (``test_unseen``,
``test_site``):

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

The split that ranks is the first of these that can: ``test_site``
(:data:`maskjob.vocab.SITE_TEST_SPLIT`, faces of this site's own cameras that reviewers
labelled, exported by :mod:`maskjob.review.export`), then ``test_unseen``
(:data:`maskjob.vocab.HELDOUT_SPLIT`, mask styles and identities the training never sees,
reserved by the demo builder or provided by the user), then ``test``. An optional split can
rank when every class there has at least ``site_split_min_per_class`` images and the champion
could be scored on it. Both rank before test because test is the training data's own
distribution, on which the model that fits that distribution best looks best even when it
generalises worse (issue 11: mobilenet_v2 0.978 test / 0.755 held-out beat cnn 0.958 / 0.825
on test). The site split comes first because it measures the faces this site actually sees.
Too few images per class would make a split's macro-F1 noise, so below the minimum the next
split ranks and the reason says why ("test_site has 7 partial_mask faces, needs 20; ranked on
test_unseen"). Every optional split present is scored even when it cannot rank; the figures
of every scored split are in the reason and in ``model_versions.metrics["splits"]``.

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
from maskjob.vocab import HELDOUT_SPLIT, SITE_TEST_SPLIT

__all__ = [
    "RANKING_SPLITS", "Scored", "SplitScore", "Decision", "PromotionResult", "Evaluator",
    "register", "champion", "list_versions", "decide", "promote", "json_safe", "split_shortfall",
]

logger = logging.getLogger(__name__)

# ``checkpoint path -> metrics`` on one split (promote takes one for test, one per optional split).
Evaluator = Callable[[Path], Mapping[str, Any]]
# The optional splits that may rank, most telling first; test ranks when none of them can.
RANKING_SPLITS: tuple[str, ...] = (SITE_TEST_SPLIT, HELDOUT_SPLIT)
# A gain equal to the margin is a tie; the tolerance keeps float rounding (0.905 - 0.900 is
# 0.0050000000000000044) from promoting it.
MARGIN_TOLERANCE = 1e-9


@dataclass(frozen=True)
class SplitScore:
    """A version's macro-F1 on one optional split, whether its outputs were finite, or why it has none."""

    macro_f1: float | None
    finite: bool = True
    problem: str | None = None


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
    # On each optional split that was scored (test_unseen, test_site).
    splits: Mapping[str, SplitScore] = field(default_factory=dict)

    def on(self, split: str) -> float | None:
        """Macro-F1 on ``split`` (``test`` or an optional split), ``None`` when not usable."""
        if split == "test":
            return _finite(self.macro_f1) if self.finite else None
        score = self.splits.get(split)
        return None if score is None or not score.finite else _finite(score.macro_f1)


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
    split_macro_f1: Mapping[str, float | None] = field(default_factory=dict)  # each optional split scored


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


def _bar_failures(c: Scored, settings: Settings, ranked_on: str) -> list[str]:
    if c.problem:
        return [f"could not be evaluated: {c.problem}"]
    if c.diverged:
        return ["training diverged (NaN/inf loss); a diverged model is never promoted"]
    if not c.finite or c.macro_f1 is None or not math.isfinite(c.macro_f1):
        return [f"evaluation produced NaN/inf outputs (macro-F1 {c.macro_f1}); never promoted"]
    score = c.splits.get(ranked_on) if ranked_on != "test" else None
    if ranked_on != "test" and (score is None or score.problem):
        return [f"could not be evaluated on {ranked_on}: {score.problem if score else 'not scored'}"]
    if score is not None and c.on(ranked_on) is None:
        return [f"{ranked_on} evaluation produced NaN/inf outputs (macro-F1 {score.macro_f1}); never promoted"]
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


def split_shortfall(split: str, counts: Mapping[str, int] | None, settings: Settings) -> str | None:
    """Why an optional split cannot rank (too few images of some class), ``None`` when it can or is absent."""
    if counts is None:
        return None
    need = settings.site_split_min_per_class
    short = [f"{counts.get(name, 0)} {name}" for name in CLASSES if counts.get(name, 0) < need]
    if not short:
        return None
    listed = short[0] if len(short) == 1 else f"{', '.join(short[:-1])} and {short[-1]}"
    return f"{split} has {listed} faces, needs {need}{' per class' if len(short) > 1 else ''}"


def _ranking_split(current: Scored | None, settings: Settings,
                   split_counts: Mapping[str, Mapping[str, int]]) -> tuple[str, list[str]]:
    """The split that ranks (:data:`RANKING_SPLITS` order, else test) and why each one before it cannot."""
    why_not = []
    for split in RANKING_SPLITS:
        if split not in split_counts:
            continue
        shortfall = split_shortfall(split, split_counts[split], settings)
        if shortfall:
            why_not.append(shortfall)
        elif current is not None and current.on(split) is None:
            score = current.splits.get(split)
            why = (score.problem if score else None) or "NaN/inf outputs"
            why_not.append(f"champion {current.version} has no {split} macro-F1 ({why})")
        else:
            return split, why_not
    return "test", why_not


def _figures(c: Scored, skip: str) -> str:
    """``"test 0.9500, test_unseen 0.8250"``: macro-F1 on every scored split but ``skip``."""
    names = ["test", *(s for s in RANKING_SPLITS[::-1] if s in c.splits)]
    return ", ".join(f"{name} {_f1(c.on(name))}" for name in names if name != skip)


def _versus(best: Scored, champ: Scored, skip: str) -> str:
    """``"test 0.9500 vs 0.9000, ..."``: both models on every split the candidate was scored on but ``skip``."""
    names = ["test", *(s for s in RANKING_SPLITS[::-1] if s in best.splits)]
    return ", ".join(f"{name} {_f1(best.on(name))} vs {_f1(champ.on(name))}" for name in names if name != skip)


def decide(candidates: Sequence[Scored], current: Scored | None, settings: Settings, *,
           split_counts: Mapping[str, Mapping[str, int]] | None = None) -> list[Decision]:
    """Apply the promotion rules (module docstring); pure, so they are tested without training.

    Args:
        candidates: the candidates, scored on test and on the optional splits present.
        current: the champion, scored the same way, or ``None``.
        settings: ``min_macro_f1``, ``min_class_recall``, ``promotion_margin``, ``site_split_min_per_class``.
        split_counts: images per class of each optional split the dataset has (absent: not there).

    Returns:
        One decision per candidate (``champion`` or ``rejected``), plus ``retired`` for the
        champion when a candidate replaces it.
    """
    split, why_not = _ranking_split(current, settings, split_counts or {})
    why_split = f"; {'; '.join(why_not)}; ranked on {split}" if why_not else ""
    label = "macro-F1" if split == "test" else f"{split} macro-F1"

    def rank(c: Scored) -> float:
        value = c.on(split)
        assert value is not None
        return value

    def decision(c: Scored, status: str, promoted: bool, reason: str) -> Decision:
        return Decision(c.version_id, c.version, status, promoted, reason, c.macro_f1, split,
                        {name: c.on(name) for name in c.splits})

    decisions: dict[int, Decision] = {}
    eligible = []
    for c in candidates:
        failures = _bar_failures(c, settings, split)
        if failures:
            decisions[c.version_id] = decision(c, "rejected", False, "; ".join(failures))
        else:
            eligible.append(c)
    best = max(eligible, key=lambda c: (rank(c), c.version_id), default=None)
    retired = None
    if best is not None:
        bar = f"passes the bar (macro-F1 >= {settings.min_macro_f1:.4f}, every class recall >= {settings.min_class_recall:.4f})"
        champ_f1 = None if current is None else current.on(split)
        note = f" (champion {current.note})" if current is not None and current.note else ""
        others = _figures(best, split)
        figure = f"{label} {rank(best):.4f}" + (f" ({others})" if others else "")
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
            versus = _versus(best, current, split)
            reason += (f" ({versus})" if versus else "") + note
        decisions[best.version_id] = decision(best, "champion" if promoted else "rejected", promoted,
                                              reason + why_split)
        if promoted and current is not None:
            retired = Decision(current.version_id, current.version, "retired", False,
                               f"replaced by {best.version} ({label} {rank(best):.4f} vs {_f1(champ_f1)}){note}",
                               current.on("test"), split, {name: current.on(name) for name in current.splits})
    for c in eligible:
        if c is not best:
            assert best is not None
            decisions[c.version_id] = decision(
                c, "rejected", False,
                f"passes the bar but candidate {best.version} scored higher ({label} {rank(c):.4f} "
                f"vs {rank(best):.4f}){why_split}")
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


def _with_splits(scoring: _Scoring, mv: ModelVersion, evaluators: Mapping[str, Evaluator]) -> _Scoring:
    scores: dict[str, SplitScore] = {}
    for split, evaluate in evaluators.items():
        metrics, problem = _evaluate(mv, evaluate)
        if metrics is None:
            scores[split] = SplitScore(None, problem=problem)
        else:
            scoring.splits[split] = _summary(metrics)
            scores[split] = SplitScore(_finite(metrics.get("macro_f1")), finite=not _metrics_nonfinite(metrics))
    return _Scoring(replace(scoring.scored, splits=scores), scoring.splits)


def _score_candidate(mv: ModelVersion, evaluate: Evaluator, evaluators: Mapping[str, Evaluator]) -> _Scoring:
    metrics, problem = _evaluate(mv, evaluate)
    if metrics is None:
        return _Scoring(Scored(mv.id, mv.version, None, diverged=mv.diverged, problem=problem))
    return _with_splits(_Scoring(_scored(mv, metrics), {"test": _summary(metrics)}), mv, evaluators)


def _score_champion(mv: ModelVersion, evaluate: Evaluator, evaluators: Mapping[str, Evaluator]) -> _Scoring:
    metrics, problem = _evaluate(mv, evaluate)
    if metrics is not None:
        return _with_splits(_Scoring(_scored(mv, metrics), {"test": _summary(metrics)}), mv, evaluators)
    logger.warning("champion %s cannot be re-evaluated (%s); comparing on its stored test metrics",
                   mv.version, problem)
    stored = {**(mv.metrics if isinstance(mv.metrics, Mapping) else {}), "macro_f1": mv.test_macro_f1}
    note = f"not re-evaluated: {problem}; compared on its stored test metrics"
    gone = {split: SplitScore(None, problem=f"not re-evaluated: {problem}") for split in evaluators}
    return _Scoring(_scored(mv, stored, note=note, splits=gone))


def _default_evaluator(data_root: str | Path, settings: Settings, split: str = "test") -> Evaluator:
    def evaluate(path: Path) -> Mapping[str, Any]:
        from maskjob.ml.evaluate import evaluate_checkpoint

        return evaluate_checkpoint(path, data_root, split=split, settings=settings)

    return evaluate


def promote(engine: Engine, data_root: str | Path, settings: Settings, *,
            evaluate: Evaluator | None = None,
            evaluate_on: Mapping[str, Evaluator] | None = None) -> PromotionResult:
    """Evaluate the candidates and the champion on ``data_root``'s test split and on each
    optional split it has (``test_unseen``, ``test_site``), and apply the rules (module docstring).

    Every decision is stored (``promotion_decisions`` and ``model_versions.decision_reason``),
    and each evaluated version's metrics per split in ``model_versions.metrics["splits"]``.

    Args:
        engine: a migrated database.
        data_root: the dataset with a ``test`` split, the same for every model compared.
        settings: ``promotion_margin``, ``min_macro_f1``, ``min_class_recall``, ``site_split_min_per_class``.
        evaluate: ``path -> metrics`` on test (default ``maskjob.ml.evaluate.evaluate_checkpoint``).
        evaluate_on: the same per optional split (default: ``evaluate_checkpoint`` on that split).

    Returns:
        The new champion (``None`` when nothing was promoted) and every decision.

    Raises:
        MaskjobError: an optional split's folder has a wrong layout, or the registry changed meanwhile.
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
    counts = {split: c for split in RANKING_SPLITS if (c := split_counts(data_root, split)) is not None}
    given = evaluate_on or {}
    evaluators = {split: given.get(split) or _default_evaluator(data_root, settings, split)
                  for split, c in counts.items() if sum(c.values()) > 0}
    scorings = [_score_candidate(mv, evaluate, evaluators) for mv in candidates]
    champion_scoring = _score_champion(current, evaluate, evaluators) if current else None
    scored_champion = champion_scoring.scored if champion_scoring else None
    decisions = decide([sc.scored for sc in scorings], scored_champion, settings, split_counts=counts)
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
