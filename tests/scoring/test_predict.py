"""``predict``: faces in ad-hoc files with the champion or a checkpoint, no database writes."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from PIL import Image

from maskjob import CLASSES
from maskjob.cli import main
from maskjob.errors import MaskjobError
from maskjob.imageio import read_rgb
from maskjob.scoring.annotate import CLASS_COLOURS
from maskjob.scoring.frames import discover_frames
from maskjob.scoring.predict import predict_files
from tests.scoring.test_score import TEST_DETECTOR, counts, failing_detector, score_settings, use_champion


@pytest.fixture
def files(tiny_demo, tmp_path):
    frame = max(discover_frames(tiny_demo.inbox), key=lambda f: f.path.stat().st_size).path
    crop = tmp_path / "plain.png"
    Image.fromarray(np.full((96, 96, 3), 128, np.uint8)).save(crop)  # no face to find: classified whole
    scene = tmp_path / "empty_scene.jpg"
    Image.fromarray(np.full((480, 640, 3), 90, np.uint8)).save(scene)
    broken = tmp_path / "broken.jpg"
    broken.write_text("not an image")
    return {"frame": frame, "crop": crop, "scene": scene, "broken": broken}


def test_predict_with_a_checkpoint_and_annotations(files, tiny_demo, tiny_checkpoints, tmp_path):
    settings = score_settings(tiny_demo.settings)
    out_dir = tmp_path / "annotated"
    paths = [files["frame"], files["crop"], files["scene"], files["broken"]]
    frame, crop, scene, broken = predict_files(paths, settings, out_dir, checkpoint=tiny_checkpoints["cnn"])

    assert frame["mode"] == "detected" and frame["faces"] and (frame["width"], frame["height"]) == (640, 480)
    for face in frame["faces"]:
        x1, y1, x2, y2 = face["box"]
        assert 0 <= x1 < x2 <= 640 and 0 <= y1 < y2 <= 480 and face["detector_score"] >= settings.detector_threshold
        assert sum(face["probs"].values()) == pytest.approx(1.0, abs=1e-4)
        assert face["label"] == max(face["probs"], key=face["probs"].get) and face["label"] in CLASSES
    assert crop["mode"] == "whole_image" and len(crop["faces"]) == 1
    assert crop["faces"][0]["box"] == [0, 0, 96, 96] and crop["faces"][0]["detector_score"] is None
    assert scene["mode"] == "no_face" and scene["faces"] == []
    assert broken["mode"] == "unreadable" and "not a recognised image" in broken["error"]
    assert broken["annotated"] is None

    drawn = read_rgb(frame["annotated"])
    original = read_rgb(files["frame"])
    assert drawn.shape == original.shape
    x1, y1, x2, y2 = frame["faces"][0]["box"]
    colour = np.array(CLASS_COLOURS[frame["faces"][0]["label"]])
    assert np.abs(drawn[(y1 + y2) // 2, x1].astype(int) - colour).max() < 60  # box edge, JPEG-blurred
    assert sorted(p.name for p in out_dir.iterdir()) == sorted([files["frame"].name, "plain.png", "empty_scene.jpg"])


def test_predict_uses_the_registry_champion_and_writes_nothing(files, tiny_demo, tiny_checkpoints, tmp_path):
    url = f"sqlite:///{tmp_path / 'registry.db'}"
    version = use_champion(url, tiny_checkpoints["mobilenet_v2"])
    before = counts(url)
    settings = score_settings(tiny_demo.settings, database_url=url)
    (result,) = predict_files([files["frame"]], settings)
    assert result["model"] == version and result["mode"] == "detected"
    assert counts(url) == before == (0, 0)


def test_predict_without_a_database_says_what_to_do(files, tiny_demo, tmp_path):
    settings = score_settings(tiny_demo.settings, database_url=f"sqlite:///{tmp_path / 'none.db'}")
    with pytest.raises(MaskjobError, match="--model"):
        predict_files([files["frame"]], settings)
    assert not (tmp_path / "none.db").exists()


def test_predict_command_json_and_exit_status(files, tiny_demo, tiny_checkpoints, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MASKJOB_DETECTOR", TEST_DETECTOR)
    monkeypatch.setenv("MASKJOB_ASSETS_DIR", str(tiny_demo.settings.assets_dir))
    base = ["--data-dir", str(tmp_path / "data"), "predict", "--model", str(tiny_checkpoints["cnn"])]
    assert main([*base, "--json", str(files["frame"]), str(files["crop"])]) == 0
    results = json.loads(capsys.readouterr().out)
    assert [r["mode"] for r in results] == ["detected", "whole_image"]

    same_name = tmp_path / "other" / files["crop"].name
    same_name.parent.mkdir()
    shutil.copyfile(files["crop"], same_name)
    out_dir = tmp_path / "ann"
    assert main([*base, "--annotate", str(out_dir), str(files["crop"]), str(same_name), str(files["broken"])]) == 1
    text = capsys.readouterr().out
    assert "mode whole_image" in text and "unreadable" in text and "face 0 box" in text
    assert sorted(p.name for p in out_dir.iterdir()) == ["plain-2.png", "plain.png"]


def test_a_file_the_models_fail_on_is_reported_and_the_rest_predicted(files, tiny_demo, tiny_checkpoints,
                                                                       tmp_path, monkeypatch):
    """Fault injection: the real detector, made to raise on 480x640 frames; and a 10x10 image,
    smaller than any face MTCNN can find, which is classified whole like any small crop."""
    from maskjob.scoring import predict as predict_module
    from maskjob.scoring.detectors import create_detector

    settings = score_settings(tiny_demo.settings)
    failing = failing_detector(create_detector(settings.detector, settings), (480, 640), "out of memory, say")
    tiny = tmp_path / "tiny.png"
    Image.fromarray(np.full((10, 10, 3), 200, np.uint8)).save(tiny)
    monkeypatch.setattr(predict_module, "create_detector", lambda name, s: failing)
    frame, crop, small = predict_files([files["frame"], files["crop"], tiny], settings,
                                       checkpoint=tiny_checkpoints["cnn"])
    assert frame["mode"] == "unreadable" and "RuntimeError: out of memory, say" in frame["error"]
    assert (frame["width"], frame["height"], frame["faces"]) == (640, 480, [])
    assert crop["mode"] == "whole_image" and small["mode"] == "whole_image" and len(small["faces"]) == 1
