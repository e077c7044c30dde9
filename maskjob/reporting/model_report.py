"""The model report: the custom CNN and the transfer model side by side, and inside them.

Per model: training curves, confusion matrix, per-class precision/recall/F1, the promotion
decision, every evaluated split side by side (``test``; ``test_unseen``, the held-out mask
styles and identities; ``test_site``, reviewed faces of this site's cameras,
:mod:`maskjob.review.export`), the calibration (a reliability diagram of the validation split
before and after temperature scaling, ECE and NLL), first-layer filters, early/middle/late
feature maps of the same sample faces, Grad-CAM for correct and wrong predictions of each
class, and the most confidently wrong test images. One self-contained HTML file, like the
compliance report.

Example:
    >>> path = render_model_report(engine, settings)   # champion + latest of the other family  # doctest: +SKIP
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import sqlalchemy as sa
from matplotlib import rc_context
from matplotlib.figure import Figure
from PIL import Image
from sqlalchemy.engine import Engine

import maskjob
from maskjob import CLASSES
from maskjob.config import Settings
from maskjob.errors import MaskjobError
from maskjob.imageio import output_dir, read_rgb, write_text
from maskjob.reporting.compliance_data import clean_reason
from maskjob.reporting.render import CHART_RC, figure_data_uri, png_data_uri, template_environment
from maskjob.storage.database import session
from maskjob.storage.schema import ModelVersion, PromotionDecision
from maskjob.vocab import CUSTOM_ARCHS, HELDOUT_SPLIT, SITE_TEST_SPLIT, slug

__all__ = ["render_model_report", "pick_versions", "family"]

logger = logging.getLogger(__name__)

SAMPLES_PER_CLASS = 2
CAM_PER_CASE = 2
CONFIDENT_WRONG = 6
DISPLAY_PX = 112
# The splits the report can show, in column order, and what each one measures.
SPLIT_LABELS: dict[str, str] = {
    "test": "test (training's styles)",
    HELDOUT_SPLIT: "held-out styles",
    SITE_TEST_SPLIT: "site reviews",
}
# Per optional split: what its images are, and what its figures say.
SPLIT_NOTES: dict[str, tuple[str, str]] = {
    HELDOUT_SPLIT: ("images", ("Mask styles and identities the training never saw: the figure that says how the "
                               "model does on faces unlike the demo's.")),
    SITE_TEST_SPLIT: ("reviewed faces of this site's cameras", ("Faces reviewers labelled, kept out of training by "
                      "camera and day: the figure that says how the model does at these cameras.")),
}


def family(arch: str) -> str:
    """``"custom"`` for the from-scratch CNN, ``"transfer"`` for ImageNet backbones."""
    return "custom" if arch in CUSTOM_ARCHS else "transfer"


def pick_versions(engine: Engine, version: str | None = None) -> list[ModelVersion]:
    """The versions to show: ``version`` alone, or the champion plus the newest version of
    the other family (without a champion: the newest of each family), custom CNN first.

    Raises:
        MaskjobError: no version registered, or ``version`` unknown.
    """
    with session(engine) as s:
        rows = list(s.scalars(sa.select(ModelVersion).order_by(ModelVersion.created_at, ModelVersion.id)))
    if not rows:
        raise MaskjobError("no model versions are registered. Train and register models first (`maskjob run` or `maskjob train`).")
    if version is not None:
        match = [mv for mv in rows if mv.version == version]
        if not match:
            known = ", ".join(mv.version for mv in rows[-5:])
            raise MaskjobError(f"model version {version!r} is not registered. Recent versions: {known}.")
        return match
    newest = {family(mv.arch): mv for mv in rows}
    champ = next((mv for mv in rows if mv.status == "champion"), None)
    if champ is not None:
        newest[family(champ.arch)] = champ
    return [newest[f] for f in ("custom", "transfer") if f in newest]


def _decision(engine: Engine, mv: ModelVersion) -> dict[str, Any] | None:
    with session(engine) as s:
        row = s.scalars(
            sa.select(PromotionDecision).where(PromotionDecision.candidate_id == mv.id)
            .order_by(PromotionDecision.decided_at.desc(), PromotionDecision.id.desc()).limit(1)
        ).one_or_none()
        if row is None:
            return None
        before = s.get(ModelVersion, row.champion_before_id) if row.champion_before_id else None
        return {
            "promoted": row.promoted,
            "decided_at": f"{row.decided_at:%Y-%m-%d %H:%M}",
            "reason": row.reason,
            "candidate_f1": row.candidate_macro_f1,
            "champion_f1": row.champion_macro_f1,
            "champion_before": before.version if before else None,
        }


def _split_scores(name: str, scores: dict[str, Any]) -> dict[str, Any]:
    per_class = scores.get("per_class") if isinstance(scores.get("per_class"), dict) else {}
    return {
        "split": name, "label": SPLIT_LABELS[name], "macro_f1": scores.get("macro_f1"),
        "accuracy": scores.get("accuracy"), "ece": scores.get("ece"), "n_images": scores.get("n_images"),
        "evaluated_at": str(scores.get("evaluated_at") or "")[:16].replace("T", " "),
        "units": SPLIT_NOTES.get(name, ("images", ""))[0], "note": SPLIT_NOTES.get(name, ("images", ""))[1],
        "per_class": [{"name": c, **per_class[c]} for c in CLASSES if isinstance(per_class.get(c), dict)],
    }


def _splits(metrics: dict[str, Any]) -> list[dict[str, Any]]:
    """Every split evaluated for this version, in :data:`SPLIT_LABELS` order: the ones promotion
    stored (``metrics["splits"]``), ``test`` falling back to the training run's test metrics."""
    stored = metrics.get("splits") if isinstance(metrics.get("splits"), dict) else {}
    found = {name: stored[name] for name in SPLIT_LABELS if isinstance(stored.get(name), dict)}
    if "test" not in found and "macro_f1" in metrics:
        found["test"] = metrics
    return [_split_scores(name, found[name]) for name in SPLIT_LABELS if name in found]


def _reliability_chart(calibration: dict[str, Any]) -> tuple[str, tuple[int, int]] | None:
    """Accuracy against confidence per bin on the validation split, before and after scaling."""
    curves = [(when, calibration.get(f"reliability_{when}") or []) for when in ("before", "after")]
    if not any(bins for _, bins in curves):
        return None
    with rc_context(CHART_RC):
        fig = Figure(figsize=(3.6, 3.1), layout="constrained")
        ax = fig.subplots()
        ax.plot([0, 1], [0, 1], ":", color="grey", label="perfectly calibrated")
        for (when, bins), marker in zip(curves, ("o", "s")):
            ece = calibration.get(f"ece_{when}")
            label = f"{'before' if when == 'before' else 'after'} (ECE {'n/a' if ece is None else f'{ece:.3f}'})"
            ax.plot([b["confidence"] for b in bins], [b["accuracy"] for b in bins], "-", marker=marker,
                    markersize=4, label=label)
        ax.set_xlim(0, 1.02)
        ax.set_ylim(0, 1.02)
        ax.set_xlabel("confidence")
        ax.set_ylabel("accuracy")
        ax.grid(alpha=0.3)
        ax.legend(frameon=False, fontsize=7, loc="upper left")
        return figure_data_uri(fig)


def _calibration(calibration: Any) -> dict[str, Any] | None:
    """What the report shows of a checkpoint's validation calibration (None when it has none)."""
    if not isinstance(calibration, dict):
        return None
    keys = ("temperature", "n_images", "ece_before", "ece_after", "nll_before", "nll_after")
    return {**{k: calibration.get(k) for k in keys}, "chart": _reliability_chart(calibration)}


def _curves_chart(history: Sequence[dict[str, Any]]) -> tuple[str, tuple[int, int]] | None:
    if not history:
        return None
    epochs = [h.get("epoch", i + 1) for i, h in enumerate(history)]
    with rc_context(CHART_RC):
        fig = Figure(figsize=(7.2, 2.3), layout="constrained")
        for ax, (key, title) in zip(fig.subplots(1, 3), (("loss", "loss"), ("acc", "accuracy"), ("macro_f1", "macro-F1"))):
            for split, style in (("train", "-"), ("val", "--")):
                values = [h.get(f"{split}_{key}") for h in history]
                ax.plot(epochs, [np.nan if v is None else v for v in values], style, marker="o", markersize=3,
                        label="train" if split == "train" else "validation")
            ax.set_title(title)
            ax.set_xlabel("epoch")
            ax.grid(alpha=0.3)
        ax.legend(frameon=False)
        return figure_data_uri(fig)


def _confusion_chart(matrix: Sequence[Sequence[int]]) -> tuple[str, tuple[int, int]] | None:
    if not matrix:
        return None
    cm = np.asarray(matrix, dtype=float)
    share = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    names = [c.replace("_", " ") for c in CLASSES]
    with rc_context(CHART_RC):
        fig = Figure(figsize=(3.6, 3.1), layout="constrained")
        ax = fig.subplots()
        ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
        for (i, j), n in np.ndenumerate(cm):
            ax.text(j, i, f"{int(n)}\n{100 * share[i, j]:.0f}%", ha="center", va="center",
                    color="white" if share[i, j] > 0.6 else "black", fontsize=8)
        ax.set_xticks(range(3), names, rotation=20)
        ax.set_yticks(range(3), names)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        return figure_data_uri(fig)


@dataclass
class _TestImages:
    """The test split as the model saw it, plus predictions (from ``evaluate_checkpoint``)."""

    root: Path
    predictions: list[dict[str, Any]]

    def shown(self, path: str) -> str:
        p = Path(path)
        return str(p.relative_to(self.root)) if p.is_relative_to(self.root) else p.name


def _display(rgb: np.ndarray) -> np.ndarray:
    return np.asarray(Image.fromarray(rgb).resize((DISPLAY_PX, DISPLAY_PX), Image.Resampling.BILINEAR))


def _sample_paths(root: Path) -> list[tuple[str, str]]:
    """The first ``SAMPLES_PER_CLASS`` readable test images of each class: the same faces for
    every model (a listed entry that is not a readable image is passed over)."""
    from maskjob.ml.dataset import scan_dataset

    index = scan_dataset(root)
    picked: list[tuple[str, str]] = []
    for label, name in enumerate(CLASSES):
        found = 0
        for path, y in index.splits["test"]:
            if y != label or found == SAMPLES_PER_CLASS:
                continue
            try:
                read_rgb(path)
            except MaskjobError:
                continue
            picked.append((str(path), name))
            found += 1
    return picked


def _interpretation(clf: Any, tests: _TestImages, samples: list[tuple[str, str]], max_pixels: int) -> dict[str, Any]:
    from maskjob.ml.interpret import (
        conv_layers,
        depth_layers,
        feature_map_grid,
        feature_maps,
        filters_grid,
        grad_cam,
        overlay_heatmap,
    )

    size = clf.image_size
    layers = depth_layers(clf.model)
    sample_rgb = [read_rgb(p, max_pixels) for p, _ in samples]
    maps = feature_maps(clf.model, clf.preprocess(sample_rgb), list(layers.values()))
    feature_rows = [
        {"label": label, "file": tests.shown(path), "input": png_data_uri(_display(rgb), "JPEG"),
         "maps": [{"depth": depth, "layer": name, "uri": png_data_uri(feature_map_grid(maps[name][i]), "JPEG")}
                  for depth, name in layers.items()]}
        for i, ((path, label), rgb) in enumerate(zip(samples, sample_rgb))
    ]

    def confidence(p: dict[str, Any]) -> float:
        return max(p["probs"])

    cases: list[tuple[str, str, dict[str, Any]]] = []
    for name in CLASSES:
        of_class = sorted((p for p in tests.predictions if p["true"] == name), key=confidence, reverse=True)
        cases += [(name, "correct", p) for p in [p for p in of_class if p["pred"] == name][:CAM_PER_CASE]]
        cases += [(name, "wrong", p) for p in [p for p in of_class if p["pred"] != name][:CAM_PER_CASE]]
    wrong = sorted((p for p in tests.predictions if p["pred"] != p["true"]), key=confidence, reverse=True)[:CONFIDENT_WRONG]

    def card(p: dict[str, Any], rgb: np.ndarray) -> dict[str, Any]:
        return {"true": p["true"], "pred": p["pred"], "confidence": confidence(p), "file": tests.shown(p["path"]),
                "uri": png_data_uri(_display(rgb), "JPEG")}

    cam_cards: dict[str, dict[str, list[dict[str, Any]]]] = {c: {"correct": [], "wrong": []} for c in CLASSES}
    if cases:
        from maskjob.ml.loaders import resize_rgb

        rgbs = [resize_rgb(read_rgb(p["path"], max_pixels), size) for _, _, p in cases]
        heat = grad_cam(clf.model, clf.preprocess(rgbs), [CLASSES.index(p["pred"]) for _, _, p in cases])
        for (name, kind, p), rgb, h in zip(cases, rgbs, heat):
            cam_cards[name][kind].append(card(p, overlay_heatmap(rgb, h)))
    return {
        "layers": layers,
        "filters": png_data_uri(filters_grid(clf.model)),
        "feature_rows": feature_rows,
        "grad_cam": cam_cards,
        "cam_layer": conv_layers(clf.model)[-1][0],
        "wrong": [card(p, resize_rgb(read_rgb(p["path"], max_pixels), size)) for p in wrong],
        "n_test": len(tests.predictions),
    }


def _model_section(engine: Engine, settings: Settings, mv: ModelVersion,
                   samples: list[tuple[str, str]] | None) -> dict[str, Any]:
    from maskjob.ml.checkpoint import load_classifier
    from maskjob.ml.evaluate import evaluate_checkpoint

    section: dict[str, Any] = {
        "version": mv.version, "arch": mv.arch, "family": family(mv.arch), "status": mv.status,
        "created_at": f"{mv.created_at:%Y-%m-%d %H:%M}", "macro_f1": mv.test_macro_f1,
        "accuracy": (mv.metrics or {}).get("accuracy"), "decision_reason": mv.decision_reason,
        "checkpoint": Path(mv.checkpoint_path).name, "decision": _decision(engine, mv),
        "problems": [], "curves": None, "confusion": None, "per_class": [], "inside": None,
        "tta_flip": None,
    }
    metrics = dict(mv.metrics or {})
    try:
        clf = load_classifier(mv.checkpoint_path)
    except MaskjobError as exc:
        section["problems"].append(f"checkpoint unavailable ({clean_reason(str(exc))}); showing stored metrics only.")
        clf = None
    if clf is not None:
        metrics = {**clf.meta.get("metrics", {}), **metrics}
        section["tta_flip"] = clf.tta_flip
        section["curves"] = _curves_chart(clf.meta.get("history") or [])
        if samples is None:
            section["problems"].append("no test split under the dataset root: feature maps and Grad-CAM need it.")
        else:
            report = evaluate_checkpoint(mv.checkpoint_path, settings.dataset_root, "test", settings)
            tests = _TestImages(root=settings.dataset_root, predictions=report["predictions"])
            section["inside"] = _interpretation(clf, tests, samples, settings.max_image_pixels)
    section["splits"] = _splits(metrics)
    section["calibration"] = _calibration(metrics.get("calibration"))
    section["confusion"] = _confusion_chart(metrics.get("confusion_matrix") or [])
    section["per_class"] = [{"name": c, **metrics["per_class"][c]} for c in CLASSES if c in metrics.get("per_class", {})]
    return section


def render_model_report(engine: Engine, settings: Settings, version: str | None = None,
                        out_dir: Path | None = None) -> Path:
    """Render the model page and return its path.

    Args:
        engine: the prediction database (for versions and promotion decisions).
        settings: ``dataset_root`` (its test split feeds the interpretation), ``reports_dir``.
        version: one registered version; default the champion plus the newest version of
            the other family, side by side.
        out_dir: where to write (default ``settings.reports_dir``).

    Returns:
        The HTML file, e.g. ``reports/models_cnn-..._mobilenet_v2-....html``.

    Raises:
        MaskjobError: nothing registered, or an unknown ``version``.
    """
    versions = pick_versions(engine, version)
    try:
        samples: list[tuple[str, str]] | None = _sample_paths(settings.dataset_root)
    except MaskjobError as exc:
        logger.warning("model report without interpretation: %s", exc)
        samples = None
    sections = [_model_section(engine, settings, mv, samples) for mv in versions]
    html = template_environment().get_template("model.html").render(
        columns=len(sections),
        sections=sections,
        classes=CLASSES,
        split_labels=SPLIT_LABELS,
        generated_at=datetime.now(UTC).strftime("%Y-%m-%d %H:%M"),
        maskjob_version=maskjob.__version__,
    )
    out = output_dir(out_dir or settings.reports_dir, "report folder")
    path = write_text(out / f"models_{'_'.join(slug(mv.version, 60, 'model') for mv in versions)}.html", html,
                      "report")
    logger.info("model report for %s: %s", ", ".join(mv.version for mv in versions), path)
    return path
