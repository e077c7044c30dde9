"""Hostile checkpoints: every field is validated before use, by loading, evaluation and
registration alike; a malicious pickle never runs; promotion decides every candidate even
when one of them is broken."""

from __future__ import annotations

import math
import pickle
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
import sqlalchemy as sa
import torch

from maskjob import CLASSES
from maskjob.cli import main
from maskjob.config import load_settings
from maskjob.errors import MaskjobError
from maskjob.imageio import sha256_file
from maskjob.ml.checkpoint import load_checkpoint, load_classifier, save_checkpoint, validate_checkpoint
from maskjob.ml.evaluate import evaluate_checkpoint
from maskjob.ml.train import train_model
from maskjob.storage import database, schema
from maskjob.storage.registry import list_versions, promote, register
from maskjob.timeutil import utcnow
from maskjob.vocab import MAX_IMAGE_SIZE, MIN_IMAGE_SIZE
from tests.fixtures.models import write_synthetic_dataset
from tests.storage.test_registry import FakeEvaluator, ckpt_meta, make_ckpt, metrics, untrained_state

LENIENT = load_settings(overrides={"min_macro_f1": 0.0, "min_class_recall": 0.0, "num_workers": 0}, environ={})


def good_meta(**changes: Any) -> dict[str, Any]:
    return {**ckpt_meta(metrics(0.9)), **changes}


def _without(meta: dict[str, Any], key: str) -> dict[str, Any]:
    return {k: v for k, v in meta.items() if k != key}


# (field, bad value, words the message must hold). Saved with save_checkpoint, so the weights
# digest is right and only the field is wrong.
CORRUPT_META: list[tuple[str, Any, str]] = [
    ("arch", ["cnn"], "meta 'arch' must be one of ['cnn', 'resnet18', 'resnet50', 'mobilenet_v2']"),
    ("arch", None, "meta 'arch' must be one of"),
    ("arch", 3, "meta 'arch' must be one of"),
    ("arch", "vgg16", "not 'vgg16' (str)"),
    ("classes", None, f"meta 'classes' must be exactly {list(CLASSES)}"),
    ("classes", "with_mask", "meta 'classes' must be exactly"),
    ("classes", list(reversed(CLASSES)), "meta 'classes' must be exactly"),
    ("classes", [*CLASSES, "hat"], "meta 'classes' must be exactly"),
    ("classes", [0, 1, 2], "meta 'classes' must be exactly"),
    ("image_size", "64", f"meta 'image_size' must be an int from {MIN_IMAGE_SIZE} to {MAX_IMAGE_SIZE}"),
    ("image_size", 64.0, "meta 'image_size' must be an int"),
    ("image_size", True, "meta 'image_size' must be an int"),
    ("image_size", None, "meta 'image_size' must be an int"),
    ("image_size", 0, "meta 'image_size' must be an int"),
    ("image_size", -64, "meta 'image_size' must be an int"),
    ("image_size", MIN_IMAGE_SIZE - 1, "meta 'image_size' must be an int"),
    ("image_size", MAX_IMAGE_SIZE + 1, "meta 'image_size' must be an int"),
    ("image_size", 10**12, "meta 'image_size' must be an int"),
    ("mean", None, "meta 'mean' must be three finite numbers"),
    ("mean", "0.5", "meta 'mean' must be three finite numbers"),
    ("mean", [0.5, 0.5], "meta 'mean' must be three finite numbers"),
    ("mean", [0.5, "a", 0.5], "meta 'mean' must be three finite numbers"),
    ("mean", [0.5, float("nan"), 0.5], "meta 'mean' must be three finite numbers"),
    ("mean", [0.5, True, 0.5], "meta 'mean' must be three finite numbers"),
    ("std", [0.0, 0.2, 0.2], "meta 'std' must be three finite numbers > 0"),
    ("std", [-0.2, 0.2, 0.2], "meta 'std' must be three finite numbers > 0"),
    ("std", [float("inf"), 0.2, 0.2], "meta 'std' must be three finite numbers > 0"),
    ("std", {"r": 0.2}, "meta 'std' must be three finite numbers > 0"),
    ("metrics", None, "meta 'metrics' must be a dict"),
    ("metrics", [0.9], "meta 'metrics' must be a dict"),
    ("metrics", "good", "meta 'metrics' must be a dict"),
    ("metrics", {"macro_f1": torch.tensor(0.9)}, "meta 'metrics' must be a dict of plain JSON values"),
    ("metrics", {1: 0.9}, "meta 'metrics' must be a dict of plain JSON values"),
    ("history", "abc", "meta 'history' must be a list of per-epoch dicts"),
    ("history", [1, 2], "meta 'history' must be a list of per-epoch dicts"),
    ("history", None, "meta 'history' must be a list of per-epoch dicts"),
    ("dataset_fingerprint", 3, "meta 'dataset_fingerprint' must be a str of at most 64 characters"),
    ("dataset_fingerprint", "f" * 65, "meta 'dataset_fingerprint' must be a str of at most 64 characters"),
    ("val_macro_f1", "0.9", "meta 'val_macro_f1' must be a number"),
    ("val_macro_f1", None, "meta 'val_macro_f1' must be a number"),
    ("seed", "1", "meta 'seed' must be an int"),
    ("seed", 1.5, "meta 'seed' must be an int"),
    ("created_at", "yesterday", "meta 'created_at' must be an ISO 8601 time"),
    ("created_at", 20261124, "meta 'created_at' must be an ISO 8601 time"),
    ("maskjob_version", 1, "meta 'maskjob_version' must be a str"),
    ("pretrained_weights", "mobilenet.pth", "meta 'pretrained_weights' must be None or a dict"),
    ("diverged", "no", "meta 'diverged' must be true or false"),
    ("temperature", 0.0, "meta 'temperature' must be a number from 0.25 to 10"),
    ("temperature", -1.0, "meta 'temperature' must be a number"),
    ("temperature", math.inf, "meta 'temperature' must be a number"),
    ("temperature", "1.5", "meta 'temperature' must be a number"),
    ("temperature", True, "meta 'temperature' must be a number"),
    ("tta_flip", "yes", "meta 'tta_flip' must be true or false"),
    ("calibration", [0.1], "meta 'calibration' must be None or a dict"),
]


def _corrupt_meta_file(tmp_path: Path, field: str, value: Any) -> Path:
    return save_checkpoint(tmp_path / f"bad-{field}.pt", untrained_state(), good_meta(**{field: value}))


def _raw_file(tmp_path: Path, name: str, payload: Any) -> Path:
    path = tmp_path / name
    torch.save(payload, path)
    return path


def _valid_payload() -> dict[str, Any]:
    state = untrained_state()
    meta = good_meta()
    save = {"state_dict": state, "meta": meta}
    from maskjob.ml.checkpoint import state_digest

    save["meta"] = {**meta, "state_sha256": state_digest(state)}
    return save


def _recursive_list() -> list[Any]:
    loop: list[Any] = []
    loop.append(loop)
    return loop


# (name, payload builder, words): files whose structure (not just one meta value) is wrong.
def _raw_cases() -> list[tuple[str, Callable[[], Any], str]]:
    def with_state(state: Any) -> Callable[[], Any]:
        return lambda: {**_valid_payload(), "state_dict": state}

    def with_meta(meta: Any) -> Callable[[], Any]:
        return lambda: {**_valid_payload(), "meta": meta}

    return [
        ("list-payload", lambda: [1, 2, 3], "expected keys 'state_dict' and 'meta'"),
        ("no-meta", lambda: {"state_dict": untrained_state()}, "expected keys 'state_dict' and 'meta'"),
        ("state-list", with_state([torch.zeros(1)]), "state_dict must be a dict of parameter name -> tensor"),
        ("state-none", with_state(None), "state_dict must be a dict of parameter name -> tensor"),
        ("state-non-tensor", with_state({**untrained_state(), "features.0.weight": [1.0, 2.0]}),
         "state_dict['features.0.weight'] must be a torch.Tensor, not [1.0, 2.0] (list)"),
        ("state-int-key", with_state({**untrained_state(), 7: torch.zeros(1)}),
         "state_dict must be keyed by parameter names (str)"),
        ("state-sparse", with_state({**untrained_state(), "features.0.weight": torch.zeros(2, 2).to_sparse()}),
         "must be a dense (strided, not quantized) tensor"),
        ("state-meta-device",
         with_state({**untrained_state(), "features.0.weight": torch.empty(32, 3, 3, 3, device="meta")}),
         "state_dict must be tensors whose bytes can be read"),
        ("history-recursive", with_meta({**_valid_payload()["meta"], "history": _recursive_list()}),
         "meta 'history' must be a list of per-epoch dicts of plain JSON values, not [[[...]]] (list)"),
        ("huge-value", with_meta({**_valid_payload()["meta"], "seed": "x" * 1_000_000}),
         "meta 'seed' must be an int, not 'xxxx"),
        ("meta-list", with_meta(["arch", "cnn"]), "meta must be a dict, not"),
        ("meta-none", with_meta(None), "meta must be a dict"),
        ("meta-missing", with_meta(_without(_valid_payload()["meta"], "image_size")),
         "lacks meta keys ['image_size']"),
        ("sha-int", with_meta({**_valid_payload()["meta"], "state_sha256": 3}),
         "meta 'state_sha256' must be a sha256 in hex (str)"),
    ]


def _all_bad_files(tmp_path: Path) -> list[tuple[Path, str]]:
    files = [(_corrupt_meta_file(tmp_path / str(i), f, v), words) for i, (f, v, words) in enumerate(CORRUPT_META)]
    files += [(_raw_file(tmp_path, f"{name}.pt", build()), words) for name, build, words in _raw_cases()]
    return files


# --- loading -----------------------------------------------------------------------------

def test_a_valid_checkpoint_loads_and_predicts(tmp_path):
    path = make_ckpt(tmp_path / "ok.pt", metrics(0.9))
    state, meta = load_checkpoint(path)
    assert meta["arch"] == "cnn" and set(state) == set(untrained_state())
    clf = load_classifier(path)
    assert not clf.model.training
    probs = clf.predict_proba([np.zeros((40, 30, 3), np.uint8)])
    assert probs.shape == (1, 3) and math.isclose(float(probs.sum()), 1.0, rel_tol=1e-5)


@pytest.mark.parametrize(("field", "value", "words"), CORRUPT_META,
                         ids=[f"{f}-{i}" for i, (f, _, _) in enumerate(CORRUPT_META)])
def test_corrupt_meta_field_is_one_clear_error(tmp_path, field, value, words):
    path = _corrupt_meta_file(tmp_path, field, value)
    for load in (load_checkpoint, load_classifier,
                 lambda p: evaluate_checkpoint(p, tmp_path / "no-dataset", settings=LENIENT)):
        with pytest.raises(MaskjobError) as info:
            load(path)
        message = str(info.value)
        assert message.startswith(f"checkpoint {path}")
        assert words in message, message
        assert "retrain it with `maskjob train`" in message


@pytest.mark.parametrize(("name", "build", "words"), _raw_cases(), ids=[c[0] for c in _raw_cases()])
def test_wrong_structure_is_one_clear_error(tmp_path, name, build, words):
    path = _raw_file(tmp_path, f"{name}.pt", build())
    with pytest.raises(MaskjobError) as info:
        load_classifier(path)
    assert str(info.value).startswith(f"checkpoint {path}") and words in str(info.value), str(info.value)
    assert len(str(info.value)) < 400


def test_validate_checkpoint_is_the_one_check(tmp_path):
    payload = _valid_payload()
    valid = validate_checkpoint(tmp_path / "x.pt", payload)
    assert valid.meta["arch"] == "cnn" and not valid.model.training
    with pytest.raises(MaskjobError, match=r"checkpoint .*x\.pt: meta 'image_size' must be an int"):
        validate_checkpoint(tmp_path / "x.pt", {**payload, "meta": {**payload["meta"], "image_size": "big"}})


# --- weights that do not fit the architecture --------------------------------------------

def _shape_cases() -> list[tuple[str, Callable[[dict[str, torch.Tensor]], dict[str, Any]], dict[str, Any], list[str]]]:
    def drop(state):
        return {k: v for k, v in state.items() if k != "features.0.weight"}

    def extra(state):
        return {**state, "backdoor.weight": torch.zeros(3)}

    def wrong_shape(state):
        return {**state, "classifier.2.weight": torch.zeros(4, state["classifier.2.weight"].shape[1])}

    def wrong_kind(state):
        return {**state, "classifier.2.bias": torch.zeros(3, dtype=torch.int64)}

    return [
        ("missing", drop, {}, ["1 missing (features.0.weight)"]),
        ("unexpected", extra, {}, ["1 unexpected (backdoor.weight)"]),
        ("mismatched", wrong_shape, {}, ["1 mismatched (classifier.2.weight [4, 1024]", "vs [3, 1024]"]),
        ("int-weights", wrong_kind, {}, ["1 mismatched (classifier.2.bias [3] torch.int64 vs [3] torch.float32)"]),
        ("other-arch", lambda s: s, {"arch": "mobilenet_v2"}, ["does not fit architecture 'mobilenet_v2'",
                                                               "missing (", "unexpected ("]),
        ("tiny-state", lambda s: {"w": torch.zeros(2)}, {}, ["missing (", "in all)", "1 unexpected (w)"]),
        ("empty-state", lambda s: {}, {}, ["missing (", "in all)"]),
    ]


@pytest.mark.parametrize(("name", "change", "meta", "words"), _shape_cases(), ids=[c[0] for c in _shape_cases()])
def test_weights_must_fit_the_architecture(tmp_path, name, change, meta, words):
    path = save_checkpoint(tmp_path / f"{name}.pt", change(dict(untrained_state())), good_meta(**meta))
    with pytest.raises(MaskjobError) as info:
        load_classifier(path)
    message = str(info.value)
    assert message.startswith(f"checkpoint {path}: state_dict does not fit architecture"), message
    for word in words:
        assert word in message, message
    assert len(message) < 700  # brief, even when hundreds of keys are off


# --- a malicious pickle never runs ---------------------------------------------------------

class Exploit:
    """Unpickling this would create ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').write('pwned')",))


def _malicious_files(tmp_path: Path) -> tuple[list[Path], Path]:
    marker = tmp_path / "PWNED"
    whole = _raw_file(tmp_path, "whole.pt", Exploit(marker))
    payload = _valid_payload()
    in_meta = _raw_file(tmp_path, "in-meta.pt", {**payload, "meta": {**payload["meta"], "metrics": Exploit(marker)}})
    in_state = _raw_file(tmp_path, "in-state.pt",
                         {**payload, "state_dict": {**payload["state_dict"], "x": Exploit(marker)}})
    legacy = tmp_path / "legacy.pt"  # torch's pre-zip format
    torch.save({**payload, "meta": Exploit(marker)}, legacy, _use_new_zipfile_serialization=False)
    plain = tmp_path / "plain-pickle.pt"
    with plain.open("wb") as fh:
        pickle.dump({"state_dict": {}, "meta": Exploit(marker)}, fh)
    return [whole, in_meta, in_state, legacy, plain], marker


def test_the_exploit_is_real(tmp_path):
    """Guards the test below: loaded without weights_only, these files do run code."""
    files, marker = _malicious_files(tmp_path)
    for path in files[:4]:
        torch.load(path, map_location="cpu", weights_only=False)
        assert marker.exists(), path.name
        marker.unlink()


def test_malicious_pickle_never_runs(tmp_path, migrated_db_url):
    files, marker = _malicious_files(tmp_path)
    engine = database.open_database(migrated_db_url)
    try:
        for path in files:
            for load in (load_checkpoint, load_classifier, lambda p: register(engine, p)):
                with pytest.raises(MaskjobError, match="truncated, corrupt or not a maskjob checkpoint"):
                    load(path)
                assert not marker.exists(), f"{path.name} ran code"
        assert list_versions(engine) == []
    finally:
        engine.dispose()


# --- registration refuses what evaluation would refuse -----------------------------------

def test_register_refuses_every_bad_checkpoint_before_writing(tmp_path, migrated_db_url):
    bad = _all_bad_files(tmp_path)
    bad += [(save_checkpoint(tmp_path / f"{name}.pt", change(dict(untrained_state())), good_meta(**meta)), words[0])
            for name, change, meta, words in _shape_cases()]
    engine = database.open_database(migrated_db_url)
    try:
        for path, words in bad:
            with pytest.raises(MaskjobError) as info:
                register(engine, path)
            assert words in str(info.value), str(info.value)
            with pytest.raises(MaskjobError):  # the same file, the same refusal by evaluation
                evaluate_checkpoint(path, tmp_path / "no-dataset", settings=LENIENT)
        assert list_versions(engine) == []
        with database.session(engine) as s:
            assert s.scalar(sa.select(sa.func.count()).select_from(schema.ModelVersion)) == 0
        good = register(engine, make_ckpt(tmp_path / "good.pt", metrics(0.9)))
        assert [v.id for v in list_versions(engine)] == [good.id]
    finally:
        engine.dispose()


def test_register_cli_refuses_bad_image_size(tmp_path, capsys):
    url = f"sqlite:///{tmp_path / 'reg.db'}"
    assert main(["db", "upgrade", "--database-url", url]) == 0
    path = _corrupt_meta_file(tmp_path, "image_size", 5)
    assert main(["register", str(path), "--database-url", url]) == 2
    err = capsys.readouterr().err
    assert "meta 'image_size' must be an int from 32 to 512, not 5 (int)" in err and "Traceback" not in err


# --- promotion: one bad candidate never blocks the others --------------------------------

def _insert_unvalidated(engine: sa.Engine, path: Path, version: str) -> int:
    """A row as an older maskjob (no validation) could have registered it."""
    with database.session(engine) as s:
        row = schema.ModelVersion(version=version, arch="cnn", checkpoint_path=str(path.resolve()),
                                  checkpoint_sha256=sha256_file(path), dataset_fingerprint="f" * 64,
                                  metrics={"macro_f1": 0.99}, test_macro_f1=0.99, diverged=False,
                                  created_at=utcnow(), status="candidate")
        s.add(row)
        s.flush()
        return row.id


def _stored(engine: sa.Engine) -> dict[int, tuple[str, str | None, list[bool]]]:
    with database.session(engine) as s:
        versions = s.scalars(sa.select(schema.ModelVersion)).all()
        decisions = s.scalars(sa.select(schema.PromotionDecision)).all()
    return {v.id: (v.status, v.decision_reason, [d.promoted for d in decisions if d.candidate_id == v.id])
            for v in versions}


def test_promote_with_broken_candidates_decides_every_one(tmp_path, migrated_db_url):
    engine = database.open_database(migrated_db_url)
    ev = FakeEvaluator()
    try:
        paths = {name: make_ckpt(tmp_path / f"{name}.pt", metrics(f1), seed=i)
                 for i, (name, f1) in enumerate([("good", 0.90), ("best", 0.95), ("vanished", 0.99),
                                                 ("corrupted", 0.99), ("raises", 0.99), ("garbage", 0.99),
                                                 ("other", 0.85)])}
        ids = {name: register(engine, path).id for name, path in paths.items()}
        for name, path in paths.items():
            ev.results[path.resolve()] = metrics({"good": 0.90, "best": 0.95, "other": 0.85}.get(name, 0.99))
        bad_image = _corrupt_meta_file(tmp_path, "image_size", 7)
        ids["old-bad"] = _insert_unvalidated(engine, bad_image, "cnn-old-bad")

        paths["vanished"].unlink()
        paths["corrupted"].write_bytes(b"\x00garbage")

        def evaluate(path: Path) -> Any:
            if path == paths["raises"].resolve():
                raise RuntimeError("CUDA exploded in evaluation")
            if path == paths["garbage"].resolve():
                return [0.99]
            if path == bad_image.resolve():
                return evaluate_checkpoint(path, tmp_path / "no-dataset", settings=LENIENT)
            return ev(path)

        result = promote(engine, tmp_path, load_settings(environ={}), evaluate=evaluate)
        assert result.promoted is not None and result.promoted.id == ids["best"]
        assert {d.version_id for d in result.decisions} == set(ids.values())
        stored = _stored(engine)
        assert all(promoted_flags for _, _, promoted_flags in stored.values()), stored  # a decision for every one
        assert stored[ids["best"]][0] == "champion" and stored[ids["best"]][2] == [True]
        for name in ("good", "other"):
            assert stored[ids[name]][0] == "rejected" and "scored higher" in stored[ids[name]][1]
        reasons = {name: stored[ids[name]][1] for name in ("vanished", "corrupted", "raises", "garbage", "old-bad")}
        assert "checkpoint file" in reasons["vanished"] and "is missing" in reasons["vanished"]
        assert "sha256 mismatch" in reasons["corrupted"]
        assert "failed (RuntimeError: CUDA exploded in evaluation)" in reasons["raises"]
        assert "returned list, not a metrics mapping" in reasons["garbage"]
        assert "meta 'image_size' must be an int from 32 to 512, not 7" in reasons["old-bad"]
        for name, reason in reasons.items():
            assert stored[ids[name]][0] == "rejected" and reason.startswith("could not be evaluated"), (name, reason)
    finally:
        engine.dispose()


def test_promote_with_only_a_broken_candidate_and_a_broken_champion(tmp_path, migrated_db_url):
    engine = database.open_database(migrated_db_url)
    try:
        champ_path = make_ckpt(tmp_path / "champ.pt", metrics(0.9), seed=1)
        champ = register(engine, champ_path)
        promote(engine, tmp_path, load_settings(environ={}), evaluate=lambda p: metrics(0.9))
        bad_image = _corrupt_meta_file(tmp_path, "image_size", 4096)
        bad_id = _insert_unvalidated(engine, bad_image, "cnn-old-bad")

        def explode(path: Path) -> Any:
            if path == champ_path.resolve():
                raise ValueError("champion evaluation broke")
            return load_classifier(path)

        result = promote(engine, tmp_path, load_settings(environ={}), evaluate=explode)
        assert result.promoted is None
        [decision] = result.decisions
        assert decision.version_id == bad_id and decision.status == "rejected"
        assert "meta 'image_size'" in decision.reason
        stored = _stored(engine)
        assert stored[champ.id][0] == "champion" and stored[bad_id][2] == [False]
    finally:
        engine.dispose()


@pytest.mark.slow
def test_promote_with_the_real_evaluator_and_a_broken_old_row(tmp_path, migrated_db_url):
    """End to end: evaluate_checkpoint scores the good ones, the invalid one is rejected."""
    root = write_synthetic_dataset(tmp_path / "ds", n_train=1, n_test=2)
    engine = database.open_database(migrated_db_url)
    try:
        good = register(engine, make_ckpt(tmp_path / "good.pt", metrics(0.5), seed=1))
        bad_id = _insert_unvalidated(engine, _corrupt_meta_file(tmp_path, "std", [0.2, 0.0, 0.2]), "cnn-old-bad")
        result = promote(engine, root, LENIENT)
        by_id = {d.version_id: d for d in result.decisions}
        assert set(by_id) == {good.id, bad_id}
        assert by_id[good.id].promoted and by_id[bad_id].status == "rejected"
        assert "meta 'std' must be three finite numbers > 0" in by_id[bad_id].reason
    finally:
        engine.dispose()


# --- training refuses budgets and sizes it cannot honour -----------------------------------

@pytest.mark.parametrize(("kwargs", "words"), [
    ({"max_epochs": 0}, "--epochs 0 is not a positive whole number"),
    ({"max_epochs": -1}, "--epochs -1 is not a positive whole number"),
    ({"max_epochs": True}, "--epochs True is not a positive whole number"),
    ({"max_epochs": 1.5}, "--epochs 1.5 is not a positive whole number"),
    ({"image_size": MIN_IMAGE_SIZE - 1}, f"use at least {MIN_IMAGE_SIZE} pixels"),
    ({"image_size": 0}, f"use at least {MIN_IMAGE_SIZE} pixels"),
    ({"image_size": MAX_IMAGE_SIZE + 1}, f"use at most {MAX_IMAGE_SIZE} pixels"),
    ({"image_size": "64"}, "is not a whole number of pixels"),
])
def test_train_model_refuses_bad_budget_and_size_before_any_work(tmp_path, kwargs, words):
    out = tmp_path / "out"
    with pytest.raises(MaskjobError, match=words.replace("(", r"\(")):
        train_model("cnn", tmp_path / "no-dataset", out, LENIENT, **kwargs)
    assert not out.exists()


@pytest.mark.parametrize("epochs", ["0", "-1"])
def test_train_cli_refuses_non_positive_epochs(tmp_path, capsys, epochs):
    code = main(["--data-dir", str(tmp_path), "train", "--arch", "cnn", "--data", str(tmp_path / "none"),
                 "--out", str(tmp_path / "m"), "--epochs", epochs])
    assert code == 2
    assert "is not a positive whole number" in capsys.readouterr().err
    assert not (tmp_path / "m").exists()
