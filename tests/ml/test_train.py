"""Training, checkpoints, the classifier and evaluation, end to end on synthetic data."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

import maskjob.ml.train as train_module
from maskjob import CLASSES
from maskjob.cli import main
from maskjob.errors import MaskjobError
from maskjob.imageio import read_rgb
from maskjob.ml.checkpoint import load_checkpoint, load_classifier, save_checkpoint
from maskjob.ml.evaluate import evaluate_checkpoint, format_report
from maskjob.ml.train import phases_for, train_model
from tests.fixtures.models import synthetic_face


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A cnn trained for 4 epochs at 32 px on a separable synthetic dataset."""
    from maskjob.config import load_settings
    from tests.fixtures.models import write_synthetic_dataset

    base = tmp_path_factory.mktemp("train")
    root = write_synthetic_dataset(base / "dataset", n_train=30, n_test=6)
    settings = load_settings(
        overrides={"data_dir": base / "data", "num_workers": 0, "batch_size": 8, "seed": 7}, environ={}
    )
    result = train_model("cnn", root, base / "models", settings, max_epochs=4, image_size=32)
    return root, settings, result


def test_train_writes_checkpoint_history_and_meta(trained):
    root, settings, result = trained
    meta = result.meta
    assert result.checkpoint_path.name == "cnn.pt"
    assert meta["arch"] == "cnn" and meta["image_size"] == 32 and meta["seed"] == 7
    assert meta["classes"] == list(CLASSES) and meta["diverged"] is False
    assert [row["epoch"] for row in meta["history"]] == [1, 2, 3, 4]
    assert set(meta["history"][0]) >= {"train_loss", "train_acc", "train_macro_f1", "val_loss", "val_acc", "val_macro_f1"}
    assert meta["val_macro_f1"] == max(row["val_macro_f1"] for row in meta["history"])
    assert meta["metrics"]["n_images"] == 18 and meta["metrics"]["macro_f1"] >= 0.9
    assert meta["pretrained_weights"] is None
    history = json.loads((result.checkpoint_path.parent / "cnn.history.json").read_text())
    assert history["history"] == json.loads(json.dumps(meta["history"]))
    _, saved = load_checkpoint(result.checkpoint_path)
    from maskjob.ml.dataset import dataset_fingerprint

    assert saved["dataset_fingerprint"] == dataset_fingerprint(root)


def test_training_is_reproducible(trained, tmp_path):
    root, settings, result = trained
    again = train_model("cnn", root, tmp_path, settings, max_epochs=4, image_size=32)
    _, first_meta = load_checkpoint(result.checkpoint_path)
    _, second_meta = load_checkpoint(again.checkpoint_path)
    assert first_meta["state_sha256"] == second_meta["state_sha256"]


def test_classifier_predicts_crops_of_any_size(trained):
    root, _, result = trained
    clf = load_classifier(result.checkpoint_path)
    assert not clf.model.training
    rng = np.random.default_rng(3)
    crops = [synthetic_face(label, rng, size) for label, size in ((0, 40), (1, 57), (2, 33), (1, 120))]
    probs = clf.predict_proba(crops)
    assert probs.shape == (4, 3) and probs.dtype == np.float32
    assert np.allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    assert probs.argmax(1).tolist() == [0, 1, 2, 1]
    assert clf.predict_proba([]).shape == (0, 3)
    with pytest.raises(ValueError, match="uint8 RGB"):
        clf.predict_proba([np.zeros((10, 10), dtype=np.uint8)])


def test_evaluate_checkpoint_matches_classifier(trained):
    root, settings, result = trained
    report = evaluate_checkpoint(result.checkpoint_path, root, "test", settings)
    assert report["n_images"] == 18 and report["finite"] is True
    cm = np.array(report["confusion_matrix"])
    assert cm.sum() == 18 and cm.sum(axis=1).tolist() == [6, 6, 6]
    assert report["accuracy"] == pytest.approx(np.trace(cm) / 18)
    assert report["per_class"]["with_mask"]["support"] == 6
    assert report["macro_f1"] == pytest.approx(result.meta["metrics"]["macro_f1"])
    first = report["predictions"][0]
    clf = load_classifier(result.checkpoint_path)
    direct = clf.predict_proba([read_rgb(first["path"])])[0]
    assert np.allclose(first["probs"], direct, atol=1e-5)
    assert first["pred"] == CLASSES[int(np.argmax(direct))]
    assert "confusion matrix" in format_report(report) and f", ECE {report['ece']:.4f}" in format_report(report)


def test_evaluate_cli_json_and_table(trained, capsys):
    root, _, result = trained
    assert main(["evaluate", "--model", str(result.checkpoint_path), "--data", str(root), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert "predictions" not in report and report["n_images"] == 18
    assert main(["evaluate", "--model", str(result.checkpoint_path), "--data", str(root), "--split", "train"]) == 0
    out = capsys.readouterr().out
    assert "macro-F1" in out and "partial_mask" in out


def test_evaluate_needs_only_the_split_it_scores(trained, tmp_path, capsys):
    import shutil

    root, settings, result = trained
    own = tmp_path / "own"
    shutil.copytree(root / "test", own / "test")
    report = evaluate_checkpoint(result.checkpoint_path, own, "test", settings)
    full = evaluate_checkpoint(result.checkpoint_path, root, "test", settings)
    assert report["n_images"] == 18
    assert (report["accuracy"], report["macro_f1"], report["confusion_matrix"]) == (
        full["accuracy"], full["macro_f1"], full["confusion_matrix"])
    with pytest.raises(MaskjobError, match=r"has no train/ folder; expected .*/own/train/\{with_mask"):
        evaluate_checkpoint(result.checkpoint_path, own, "train", settings)
    assert main(["evaluate", "--model", str(result.checkpoint_path), "--data", str(own)]) == 0
    assert capsys.readouterr().out.startswith("cnn on test: 18 images")


def test_train_cli(trained, tmp_path, capsys, monkeypatch):
    root, _, _ = trained
    monkeypatch.setenv("MASKJOB_NUM_WORKERS", "0")
    code = main(["--data-dir", str(tmp_path), "train", "--arch", "cnn", "--data", str(root),
                 "--out", str(tmp_path / "m"), "--epochs", "1", "--image-size", "40"])
    assert code == 0
    assert "test macro-F1" in capsys.readouterr().out
    assert load_checkpoint(tmp_path / "m" / "cnn.pt")[1]["image_size"] == 40


def test_tampered_truncated_and_foreign_checkpoints_fail(trained, tmp_path):
    _, _, result = trained
    state, meta = load_checkpoint(result.checkpoint_path)

    tampered = tmp_path / "tampered.pt"
    bad_state = {k: v.clone() for k, v in state.items()}
    bad_state["classifier.2.bias"] += 1.0
    torch.save({"state_dict": bad_state, "meta": meta}, tampered)
    with pytest.raises(MaskjobError, match="modified since it was saved"):
        load_classifier(tampered)

    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(result.checkpoint_path.read_bytes()[:5000])
    with pytest.raises(MaskjobError, match="truncated, corrupt or not a maskjob checkpoint"):
        load_classifier(truncated)

    text = tmp_path / "notes.pt"
    text.write_text("hello")
    with pytest.raises(MaskjobError, match="not a maskjob checkpoint"):
        load_classifier(text)

    plain = tmp_path / "plain.pt"
    torch.save(state, plain)
    with pytest.raises(MaskjobError, match="expected keys 'state_dict' and 'meta'"):
        load_classifier(plain)

    missing = tmp_path / "missing.pt"
    save_checkpoint(missing, state, {k: v for k, v in meta.items() if k not in ("image_size", "state_sha256")})
    with pytest.raises(MaskjobError, match=r"lacks meta keys \['image_size'\]"):
        load_classifier(missing)

    with pytest.raises(MaskjobError, match="does not exist"):
        load_classifier(tmp_path / "nope.pt")


def test_nan_loss_stops_and_marks_checkpoint_diverged(trained, tmp_path, monkeypatch):
    root, settings, _ = trained
    monkeypatch.setattr(train_module, "CNN_LR", float("nan"))
    result = train_model("cnn", root, tmp_path, settings, max_epochs=3, image_size=32)
    assert result.meta["diverged"] is True
    assert len(result.meta["history"]) < 3
    assert load_checkpoint(result.checkpoint_path)[1]["diverged"] is True


def test_missing_weights_fail_before_training(synthetic_dataset, settings_factory, tmp_path, monkeypatch):
    import maskjob.ml.models as models

    def offline(url, dest, timeout_s):
        raise OSError("offline")

    monkeypatch.setattr(models, "_download", offline)
    root = synthetic_dataset(n_train=4, n_test=2)
    settings = settings_factory(torch_home=tmp_path / "no-weights")
    with pytest.raises(MaskjobError, match="maskjob weights install mobilenet_v2"):
        train_model("mobilenet_v2", root, tmp_path / "out", settings, max_epochs=1)
    assert not (tmp_path / "out").exists()


def test_too_small_image_size_is_refused(trained, tmp_path):
    root, settings, _ = trained
    with pytest.raises(MaskjobError, match="at least 32"):
        train_model("cnn", root, tmp_path, settings, max_epochs=1, image_size=16)


def test_two_phase_schedule():
    assert [p.stage for p in phases_for("cnn", 5)] == ["all"]
    phases = phases_for("mobilenet_v2", 8)
    assert [(p.stage, p.epochs) for p in phases] == [("head", 2), ("last_stage", 6)]
    assert phases[1].backbone_lr < phases[1].head_lr
    assert [(p.stage, p.epochs) for p in phases_for("resnet18", 1)] == [("head", 1)]


def test_tiny_checkpoints_fixture(tiny_checkpoints, tiny_demo):
    for arch, path in tiny_checkpoints.items():
        clf = load_classifier(path)
        assert clf.meta["arch"] == arch
        rgb = read_rgb(next((tiny_demo.root / "test" / "with_mask").iterdir()))
        assert clf.predict_proba([rgb]).shape == (1, 3)
    meta = load_classifier(tiny_checkpoints["mobilenet_v2"]).meta
    assert meta["pretrained_weights"]["file"] == "mobilenet_v2-b0353104.pth"


# --- calibration and the training options -------------------------------------------------

def _resaved(tmp_path, source, name, drop=(), **meta_changes):
    """A copy of checkpoint ``source`` with meta keys changed and the ``drop`` keys removed."""
    state, meta = load_checkpoint(source)
    meta = {k: v for k, v in {**meta, **meta_changes}.items() if k not in (*drop, "state_sha256")}
    return save_checkpoint(tmp_path / name, state, meta)


def _test_crops(root):
    return [read_rgb(p) for c in CLASSES for p in sorted((root / "test" / c).iterdir())[:2]]


def test_training_fits_and_stores_a_temperature(trained):
    _, _, result = trained
    meta = result.meta
    calibration = meta["calibration"]
    assert meta["temperature"] == calibration["temperature"] and meta["tta_flip"] is False
    assert (meta["label_smoothing"], meta["mixup_alpha"]) == (0.0, 0.0)
    assert calibration["n_images"] == 12 and calibration["n_bins"] == 15  # the validation split
    assert calibration["ece_after"] < calibration["ece_before"]
    assert calibration["nll_after"] < calibration["nll_before"]
    assert meta["metrics"]["calibration"] == calibration and meta["metrics"]["ece"] is not None


def test_the_stored_temperature_is_applied_and_old_checkpoints_score_as_before(trained, tmp_path):
    root, settings, result = trained
    crops = _test_crops(root)
    old = _resaved(tmp_path, result.checkpoint_path, "old.pt", drop=("temperature", "tta_flip", "calibration"))
    clf = load_classifier(old)
    assert clf.temperature == 1.0 and clf.tta_flip is False
    with torch.inference_mode():
        raw = torch.softmax(clf.model(clf.preprocess(crops)), dim=1).numpy()
    assert np.allclose(clf.predict_proba(crops), raw, atol=1e-6)  # T = 1: what it scored before

    hot = load_classifier(_resaved(tmp_path, result.checkpoint_path, "hot.pt", temperature=4.0))
    with torch.inference_mode():
        logits = hot.model(hot.preprocess(crops))
    probs = hot.predict_proba(crops)
    assert np.allclose(probs, torch.softmax(logits / 4.0, dim=1).numpy(), atol=1e-6)
    assert probs.max(axis=1).mean() < raw.max(axis=1).mean() - 0.05  # softer, same labels
    assert (probs.argmax(1) == raw.argmax(1)).all()

    report = evaluate_checkpoint(tmp_path / "hot.pt", root, "test", settings)
    assert report["temperature"] == 4.0 and report["calibration"] == result.meta["calibration"]
    first = report["predictions"][0]
    assert np.allclose(first["probs"], hot.predict_proba([read_rgb(first["path"])])[0], atol=1e-6)
    old_report = evaluate_checkpoint(old, root, "test", settings)
    assert old_report["temperature"] == 1.0 and old_report["calibration"] is None
    assert old_report["macro_f1"] == report["macro_f1"] and old_report["ece"] != report["ece"]


def test_flip_averaging_is_stored_and_applied(trained, tmp_path):
    root, _, result = trained
    crops = [crop.copy() for crop in _test_crops(root)]
    for crop in crops:
        crop[:, : crop.shape[1] // 2] = 0  # half dark: the mirror image is another face
    flip = load_classifier(_resaved(tmp_path, result.checkpoint_path, "flip.pt", tta_flip=True, temperature=1.0))
    assert flip.tta_flip is True
    mirrored = [np.ascontiguousarray(c[:, ::-1]) for c in crops]
    plain = load_classifier(_resaved(tmp_path, result.checkpoint_path, "plain.pt", temperature=1.0))
    expected = (plain.predict_proba(crops) + plain.predict_proba(mirrored)) / 2
    assert np.allclose(flip.predict_proba(crops), expected, atol=1e-5)
    assert np.abs(flip.predict_proba(crops) - plain.predict_proba(crops)).max() > 0.01


def test_training_options_are_used_and_recorded(trained, tmp_path):
    root, settings, result = trained
    options = dataclasses.replace(settings, label_smoothing=0.1, mixup_alpha=0.4, tta_flip=True)
    meta = train_model("cnn", root, tmp_path, options, max_epochs=1, image_size=32).meta
    assert (meta["label_smoothing"], meta["mixup_alpha"], meta["tta_flip"]) == (0.1, 0.4, True)
    assert meta["history"][0]["train_loss"] != result.meta["history"][0]["train_loss"]
    clf = load_classifier(tmp_path / "cnn.pt")
    assert clf.tta_flip is True and clf.temperature == meta["temperature"]
