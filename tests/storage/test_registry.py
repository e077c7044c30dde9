"""Model registry: registration, the promotion rules (pure), and promotion on both databases."""

from __future__ import annotations

import functools
import json
import math
import shutil
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from maskjob import CLASSES
from maskjob.cli import main
from maskjob.config import load_settings
from maskjob.errors import MaskjobError
from maskjob.storage import database, schema
from maskjob.storage.registry import Scored, champion, decide, list_versions, promote, register

SETTINGS = load_settings(overrides={"promotion_margin": 0.005, "min_macro_f1": 0.80, "min_class_recall": 0.5},
                         environ={})


def metrics(macro_f1: float, recall: float = 0.9, finite: bool = True, **recalls: float) -> dict[str, Any]:
    per_class = {c: {"precision": 0.9, "recall": recalls.get(c, recall), "f1": macro_f1, "support": 10}
                 for c in CLASSES}
    return {"accuracy": macro_f1, "macro_f1": macro_f1, "per_class": per_class, "finite": finite,
            "predictions": [{"path": "x.jpg", "true": "with_mask", "pred": "with_mask", "probs": [1, 0, 0]}]}


@functools.lru_cache(maxsize=None)
def untrained_state(arch: str = "cnn") -> dict[str, Any]:
    """The weights of an untrained ``arch`` (fixed seed): registration checks keys and shapes."""
    import torch

    from maskjob.ml.models import create_model

    with torch.random.fork_rng():
        torch.manual_seed(0)
        return {k: v.clone() for k, v in create_model(arch, pretrained=False).state_dict().items()}


def ckpt_meta(test: dict[str, Any], *, seed: int = 0, created_at: str = "2026-11-24T03:00:00+00:00",
              diverged: bool = False, arch: str = "cnn") -> dict[str, Any]:
    return {
        "arch": arch, "classes": list(CLASSES), "image_size": 64, "mean": [0.5] * 3, "std": [0.25] * 3,
        "dataset_fingerprint": "f" * 64, "metrics": test, "val_macro_f1": test["macro_f1"], "seed": seed,
        "history": [{"epoch": 1, "train_loss": float("nan") if diverged else 0.5, "val_loss": 0.6}],
        "created_at": created_at, "maskjob_version": "0.1.0", "pretrained_weights": None,
    }


def make_ckpt(path: Path, test: dict[str, Any], *, arch: str = "cnn", seed: int = 0,
              created_at: str = "2026-11-24T03:00:00+00:00", diverged: bool = False) -> Path:
    """A valid checkpoint of an untrained ``arch``; ``seed`` changes its head bias (and so its sha256)."""
    import torch

    from maskjob.ml.checkpoint import save_checkpoint

    state = dict(untrained_state(arch))
    head = [k for k in state if k.endswith(".bias")][-1]
    state[head] = torch.full_like(state[head], float(seed))
    meta = ckpt_meta(test, seed=seed, created_at=created_at, diverged=diverged, arch=arch)
    return save_checkpoint(path, state, meta)


def scored(vid: int, f1: float | None, recall: float = 0.9, **kw: Any) -> Scored:
    return Scored(vid, f"v{vid}", f1, {c: recall for c in CLASSES}, **kw)


# --- the rules, without a database -------------------------------------------------------

def test_no_champion_yet_promotes_the_best_passing_candidate():
    out = decide([scored(1, 0.85), scored(2, 0.90), scored(3, 0.95, recall=0.3)], None, SETTINGS)
    assert [(d.version, d.status, d.promoted) for d in out] == [
        ("v1", "rejected", False), ("v2", "champion", True), ("v3", "rejected", False)]
    assert "no champion yet" in out[1].reason
    assert "v2 scored higher" in out[0].reason
    assert "recall 0.3000 is below the minimum 0.5000" in out[2].reason


def test_candidate_that_beats_champion_by_more_than_margin_retires_it():
    out = decide([scored(2, 0.91)], scored(1, 0.90), SETTINGS)
    assert [(d.version, d.status, d.promoted) for d in out] == [("v2", "champion", True), ("v1", "retired", False)]
    assert "beats champion v1 (0.9000)" in out[0].reason
    assert "replaced by v2" in out[1].reason


@pytest.mark.parametrize("f1", [0.90, 0.903, 0.905, 0.85])
def test_tie_within_margin_or_worse_keeps_the_champion(f1):
    out = decide([scored(2, f1)], scored(1, 0.90), SETTINGS)
    assert [(d.status, d.promoted) for d in out] == [("rejected", False)]
    assert "does not beat champion v1" in out[0].reason and "margin 0.0050" in out[0].reason


def test_margin_zero_promotes_any_improvement_but_not_a_tie():
    settings = load_settings(overrides={"promotion_margin": 0.0}, environ={})
    assert decide([scored(2, 0.9001)], scored(1, 0.90), settings)[0].promoted
    assert not decide([scored(2, 0.90)], scored(1, 0.90), settings)[0].promoted


@pytest.mark.parametrize(("candidate", "why"), [
    (scored(2, 0.79), "macro-F1 0.7900 is below the minimum 0.8000"),
    (Scored(2, "v2", 0.95, {"with_mask": 0.99, "without_mask": 0.99, "partial_mask": 0.49}), "partial_mask recall 0.4900"),
    (Scored(2, "v2", 0.95, {"with_mask": 0.99, "without_mask": 0.99}), "partial_mask recall missing"),
    (scored(2, float("nan")), "NaN/inf"),
    (scored(2, None), "NaN/inf"),
    (scored(2, 0.99, finite=False), "NaN/inf"),
    (scored(2, 0.99, diverged=True), "diverged"),
    (scored(2, None, problem="checkpoint file /x.pt is missing"), "could not be evaluated: checkpoint file /x.pt"),
])
def test_failing_models_are_never_promoted(candidate, why):
    for current in (None, scored(1, 0.10)):
        out = decide([candidate], current, SETTINGS)
        assert [(d.status, d.promoted) for d in out] == [("rejected", False)]
        assert why in out[0].reason


def test_unusable_champion_is_replaced_by_a_passing_candidate():
    out = decide([scored(2, 0.85)], scored(1, float("nan"), finite=False), SETTINGS)
    assert [(d.version, d.status) for d in out] == [("v2", "champion"), ("v1", "retired")]
    assert "no usable macro-F1" in out[0].reason


def test_equal_candidates_prefer_the_later_registered():
    out = decide([scored(1, 0.9), scored(2, 0.9)], None, SETTINGS)
    assert [d.status for d in out] == ["rejected", "champion"]


# --- registration ------------------------------------------------------------------------

def test_register_is_idempotent_per_checkpoint_content(migrated_db_url, tmp_path):
    engine = database.open_database(migrated_db_url)
    try:
        ckpt = make_ckpt(tmp_path / "a" / "cnn.pt", metrics(0.9))
        first = register(engine, ckpt)
        assert first.status == "candidate" and first.arch == "cnn" and not first.diverged
        assert first.version == f"cnn-20261124T030000-{first.checkpoint_sha256[:8]}"
        assert first.test_macro_f1 == pytest.approx(0.9)
        assert "predictions" not in first.metrics and first.metrics["per_class"]["with_mask"]["recall"] == 0.9
        copy = tmp_path / "b" / "same.pt"
        copy.parent.mkdir()
        shutil.copyfile(ckpt, copy)
        assert register(engine, ckpt).id == first.id
        assert register(engine, copy).id == first.id
        other = register(engine, make_ckpt(tmp_path / "c" / "cnn.pt", metrics(0.8), seed=1))
        assert other.id != first.id
        assert [v.id for v in list_versions(engine)] == [first.id, other.id]
    finally:
        engine.dispose()


def test_register_records_divergence_and_nan_metrics(migrated_db_url, tmp_path):
    engine = database.open_database(migrated_db_url)
    try:
        nan_loss = register(engine, make_ckpt(tmp_path / "a.pt", metrics(0.9), diverged=True))
        nan_test = register(engine, make_ckpt(tmp_path / "b.pt", metrics(float("nan"), finite=False), seed=2))
        assert nan_loss.diverged and nan_test.diverged
        assert nan_test.test_macro_f1 is None and nan_test.metrics["macro_f1"] is None
    finally:
        engine.dispose()


def test_register_rejects_missing_and_corrupt_files(migrated_db_url, tmp_path):
    engine = database.open_database(migrated_db_url)
    try:
        with pytest.raises(MaskjobError, match="does not exist"):
            register(engine, tmp_path / "nope.pt")
        bad = tmp_path / "bad.pt"
        bad.write_bytes(b"not a checkpoint")
        with pytest.raises(MaskjobError, match="corrupt"):
            register(engine, bad)
        assert list_versions(engine) == []
    finally:
        engine.dispose()


# --- promotion against the database ------------------------------------------------------

def fill_split(root: Path, split: str, per_class: int) -> None:
    """``per_class`` distinct tiny images in every class folder of ``root/split`` (an optional split)."""
    from PIL import Image

    for i, name in enumerate(CLASSES):
        folder = root / split / name
        folder.mkdir(parents=True, exist_ok=True)
        for k in range(per_class):
            Image.new("RGB", (8, 8), (i * 60, k, 7)).save(folder / f"{split}-{k}.png")


class FakeEvaluator:
    """``path -> metrics`` from a table, recording which checkpoints were evaluated."""

    def __init__(self) -> None:
        self.results: dict[Path, dict[str, Any]] = {}
        self.calls: list[Path] = []

    def __call__(self, path: Path) -> dict[str, Any]:
        self.calls.append(Path(path))
        return self.results[Path(path)]


def _candidate(engine: sa.Engine, evaluator: FakeEvaluator, path: Path, f1: float, seed: int, **kw: Any) -> Any:
    mv = register(engine, make_ckpt(path, metrics(f1), seed=seed))
    evaluator.results[path.resolve()] = metrics(f1, **kw)
    return mv


def _decisions(engine: sa.Engine) -> list[tuple[str, bool, str | None]]:
    with database.session(engine) as s:
        rows = s.execute(sa.select(schema.ModelVersion.version, schema.PromotionDecision.promoted,
                                   schema.PromotionDecision.champion_before_id)
                         .join(schema.ModelVersion, schema.ModelVersion.id == schema.PromotionDecision.candidate_id)
                         .order_by(schema.PromotionDecision.id)).all()
    return [tuple(r) for r in rows]


def test_promotion_rounds(migrated_db_url, tmp_path):
    engine = database.open_database(migrated_db_url)
    ev = FakeEvaluator()
    try:
        assert promote(engine, tmp_path, SETTINGS, evaluate=ev).decisions == []

        a = _candidate(engine, ev, tmp_path / "a.pt", 0.85, 1)
        low = _candidate(engine, ev, tmp_path / "low.pt", 0.95, 2, partial_mask=0.2)
        result = promote(engine, tmp_path, SETTINGS, evaluate=ev)
        assert result.promoted is not None and result.promoted.id == a.id
        assert champion(engine).id == a.id and champion(engine).promoted_at is not None
        by_id = {v.id: v for v in list_versions(engine)}
        assert by_id[low.id].status == "rejected" and "partial_mask recall" in by_id[low.id].decision_reason
        assert _decisions(engine) == [(a.version, True, None), (low.version, False, None)]

        # Within the margin: champion stays, candidate rejected; both evaluated on the same split.
        close = _candidate(engine, ev, tmp_path / "close.pt", 0.853, 3)
        ev.calls.clear()
        result = promote(engine, tmp_path, SETTINGS, evaluate=ev)
        assert result.promoted is None and champion(engine).id == a.id
        assert set(ev.calls) == {tmp_path / "close.pt", tmp_path / "a.pt"}
        assert [(d.version, d.status) for d in result.decisions] == [(close.version, "rejected")]

        # A NaN candidate and a clear winner: the winner takes over, the old champion retires.
        nan = _candidate(engine, ev, tmp_path / "nan.pt", 0.99, 4, finite=False)
        ev.results[(tmp_path / "nan.pt").resolve()]["macro_f1"] = math.nan
        best = _candidate(engine, ev, tmp_path / "best.pt", 0.90, 5)
        result = promote(engine, tmp_path, SETTINGS, evaluate=ev)
        assert result.promoted.id == best.id
        by_id = {v.id: v for v in list_versions(engine)}
        assert by_id[a.id].status == "retired" and f"replaced by {best.version}" in by_id[a.id].decision_reason
        assert by_id[nan.id].status == "rejected" and "NaN/inf" in by_id[nan.id].decision_reason
        assert by_id[best.id].status == "champion" and "beats champion" in by_id[best.id].decision_reason
        assert _decisions(engine)[-2:] == [(nan.version, False, a.id), (best.version, True, a.id)]
        with database.session(engine) as s:  # NaN is stored as NULL on both databases
            nan_row = s.scalars(sa.select(schema.PromotionDecision).where(schema.PromotionDecision.candidate_id == nan.id)).one()
            assert nan_row.candidate_macro_f1 is None
        with database.session(engine) as s:
            last = s.scalars(sa.select(schema.PromotionDecision).order_by(schema.PromotionDecision.id.desc())).first()
            assert (last.candidate_macro_f1, last.champion_macro_f1) == (pytest.approx(0.90), pytest.approx(0.85))
    finally:
        engine.dispose()


def test_diverged_candidate_is_rejected_even_with_good_test_metrics(migrated_db_url, tmp_path):
    engine = database.open_database(migrated_db_url)
    ev = FakeEvaluator()
    try:
        path = make_ckpt(tmp_path / "d.pt", metrics(0.95), diverged=True)
        register(engine, path)
        ev.results[path.resolve()] = metrics(0.95)
        result = promote(engine, tmp_path, SETTINGS, evaluate=ev)
        assert result.promoted is None and champion(engine) is None
        assert result.decisions[0].status == "rejected" and "diverged" in result.decisions[0].reason
    finally:
        engine.dispose()


def test_missing_champion_checkpoint_compares_on_stored_metrics(migrated_db_url, tmp_path):
    engine = database.open_database(migrated_db_url)
    ev = FakeEvaluator()
    try:
        _candidate(engine, ev, tmp_path / "old.pt", 0.85, 1)
        promote(engine, tmp_path, SETTINGS, evaluate=ev)
        (tmp_path / "old.pt").unlink()
        weak = _candidate(engine, ev, tmp_path / "weak.pt", 0.852, 2)
        result = promote(engine, tmp_path, SETTINGS, evaluate=ev)
        assert result.promoted is None
        assert "not re-evaluated: checkpoint file" in result.decisions[0].reason
        assert "stored test metrics" in result.decisions[0].reason
        strong = _candidate(engine, ev, tmp_path / "strong.pt", 0.9, 3)
        result = promote(engine, tmp_path, SETTINGS, evaluate=ev)
        assert result.promoted.id == strong.id
        assert {d.status for d in result.decisions} == {"champion", "retired"}
        assert weak.id not in {d.version_id for d in result.decisions}  # decided once, already rejected
    finally:
        engine.dispose()


def test_changed_candidate_checkpoint_is_rejected(migrated_db_url, tmp_path):
    engine = database.open_database(migrated_db_url)
    ev = FakeEvaluator()
    try:
        _candidate(engine, ev, tmp_path / "x.pt", 0.95, 1)
        make_ckpt(tmp_path / "x.pt", metrics(0.95), seed=9)  # overwritten after registration
        result = promote(engine, tmp_path, SETTINGS, evaluate=ev)
        assert result.promoted is None and "sha256 mismatch" in result.decisions[0].reason
        assert ev.calls == []
    finally:
        engine.dispose()


# --- command line ------------------------------------------------------------------------

def test_cli_register_promote_models(tmp_path, capsys, monkeypatch):
    url = f"sqlite:///{tmp_path / 'reg.db'}"
    flags = ["--database-url", url]
    assert main(["models", *flags]) == 2
    assert "Run `maskjob db upgrade`" in capsys.readouterr().err
    assert main(["db", "upgrade", *flags]) == 0
    assert main(["models", *flags]) == 0
    assert "no model versions registered" in capsys.readouterr().out

    ckpt = make_ckpt(tmp_path / "m" / "cnn.pt", metrics(0.9))
    assert main(["register", str(ckpt), *flags]) == 0
    assert ": candidate" in capsys.readouterr().out

    import maskjob.ml.evaluate

    seen: dict[str, Any] = {}

    def fake_evaluate(path, data_root, split="test", settings=None):
        seen.update(data_root=Path(data_root), split=split, margin=settings.promotion_margin)
        return metrics(0.9)

    monkeypatch.setattr(maskjob.ml.evaluate, "evaluate_checkpoint", fake_evaluate)
    assert main(["promote", "--data", str(tmp_path / "ds"), "--margin", "0.02", *flags]) == 0
    out = capsys.readouterr().out
    assert "champion - no champion yet" in out and seen == {"data_root": tmp_path / "ds", "split": "test", "margin": 0.02}

    assert main(["models", "--json", *flags]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [(v["arch"], v["status"]) for v in listed] == [("cnn", "champion")]
    assert listed[0]["test_macro_f1"] == pytest.approx(0.9)
    assert main(["models", *flags]) == 0
    assert "champion" in capsys.readouterr().out
