"""Per-camera face-size ranges: full search without history, the range and its periodic
re-check with history, MTCNN's pyramid limited to the range, and a face outside the range
found by the re-check frame of a real scoring run."""

from __future__ import annotations

from datetime import datetime, timedelta

import cv2
import numpy as np
import pytest
import sqlalchemy as sa
from skimage import data as skdata

from maskjob import timeutil
from maskjob.config import replace
from maskjob.errors import MaskjobError
from maskjob.scoring.detectors import Detection, FaceSizeRange, create_detector
from maskjob.scoring.matching import iou
from maskjob.scoring.face_sizes import CameraFaceSizes, load_face_sizes
from maskjob.scoring.mtcnn import _pyramid_scales
from maskjob.scoring.score import score
from maskjob.storage import database, schema, writes
from tests.scoring.test_score import score_settings, use_champion

DAY = datetime(2026, 11, 24, 7)


def tracker(history: dict[str, list[float]], **kwargs: float) -> CameraFaceSizes:
    options = {"min_face_px": 20, "keep": 200, "min_history": 50, "recheck_frames": 4, "margin": 1.5, **kwargs}
    return CameraFaceSizes(history, **options)


def faces_of(*sides: int) -> list[Detection]:
    return [Detection((10, 10, 10 + side, 10 + side), 0.99) for side in sides]


def test_a_camera_without_enough_history_searches_fully_until_its_full_searches_make_one():
    sizes = tracker({"thin": [60.0] * 49})
    assert sizes.plan(["new", "new", "thin", "thin"]) == [None] * 4
    cameras = ["new"] * 10
    plans = sizes.plan(cameras)
    sizes.observe(cameras, plans, [faces_of(60, 90, 75, 80, 70)] * 10)
    assert sizes.history_size("new") == 50
    assert sizes.range_for("new") == FaceSizeRange(40.0, 135.0)
    assert sizes.range_for("thin") is None


def test_with_history_the_range_applies_and_every_kth_frame_searches_fully():
    sizes = tracker({"cam": [24.0] + [60.0 + k for k in range(59)], "close": [15.0] * 60}, recheck_frames=4)
    expected = FaceSizeRange(60 / 1.5, 117 * 1.5)  # the lone 24 px box and the largest 2% trimmed
    assert sizes.plan(["cam"] * 9) == [None, expected, expected, expected, None, expected, expected, expected, None]
    assert sizes.range_for("close") == FaceSizeRange(20.0, 22.5)  # never below min_face_px
    # A frame searched within the range adds nothing (300 px would move the trimmed maximum
    # to 118); a full search's faces join the history (30 px: the lone 24 is trimmed now).
    sizes.observe(["cam", "cam"], [expected, None], [faces_of(300), [(faces_of(30)[0], np.ones(3))]])
    assert sizes.range_for("cam") == FaceSizeRange(20.0, 117 * 1.5)
    assert tracker({"cam": [80.0] * 60}, recheck_frames=1).plan(["cam", "cam"]) == [None, None]


def test_failed_frames_add_nothing():
    sizes = tracker({})
    sizes.observe(["cam"], [None], [RuntimeError("detector failed")])
    assert sizes.history_size("cam") == 0


def test_settings_refuse_a_history_that_can_never_be_enough(settings_factory):
    with pytest.raises(MaskjobError, match="face_size_min_history"):
        settings_factory(face_size_min_history=300, face_size_history_faces=200)
    with pytest.raises(MaskjobError, match="face_size_margin"):
        settings_factory(face_size_margin=0.9)


def scored_image(path: str, camera: str, when: datetime, version_id: int, sides: list[int]) -> dict:
    faces = [{"face_index": i, "x1": 0, "y1": 0, "x2": side, "y2": side - 5, "detector_score": 0.99,
              "label": "with_mask", "p_with_mask": 0.9, "p_without_mask": 0.05, "p_partial_mask": 0.05,
              "confidence": 0.9} for i, side in enumerate(sides)]
    return {"path": path, "content_sha256": "0" * 64, "camera_id": camera, "captured_at": when, "width": 640,
            "height": 480, "status": "ok" if faces else "no_face", "reason": None, "n_faces": len(faces),
            "model_version_id": version_id, "scoring_run_id": None, "scored_at": timeutil.utcnow(), "faces": faces}


def add_history(url: str, camera: str, start: datetime, sides: list[int], per_image: int = 2) -> None:
    engine = database.make_engine(url)
    with engine.begin() as conn:
        version_id = conn.scalar(sa.select(schema.ModelVersion.id))
        rows = [scored_image(f"{camera}/hist-{start:%Y%m%d}-{i:04d}.jpg", camera, start + timedelta(minutes=i),
                             version_id, sides[k:k + per_image])
                for i, k in enumerate(range(0, len(sides), per_image))]
        writes.insert_scored_images(conn, rows)
    engine.dispose()


@pytest.fixture
def champion_url(migrated_db_url, tiny_checkpoints) -> str:
    use_champion(migrated_db_url, tiny_checkpoints["cnn"])
    return migrated_db_url


def test_history_is_the_cameras_newest_faces_in_its_window(champion_url):
    add_history(champion_url, "cam-a", DAY - timedelta(days=20), [500] * 10)  # too old
    add_history(champion_url, "cam-a", DAY - timedelta(days=2), list(range(40, 80)))
    add_history(champion_url, "cam-b", DAY - timedelta(days=1), [300] * 10)
    engine = database.make_engine(champion_url)
    with engine.connect() as conn:
        window = (DAY - timedelta(days=7), DAY)
        got = load_face_sizes(conn, {"cam-a": window, "cam-b": window, "cam-c": window}, limit=30)
    engine.dispose()
    assert got["cam-a"] == [float(s) for s in range(50, 80)]  # the newest 30, oldest first
    assert got["cam-b"] == [300.0] * 10 and got["cam-c"] == []


def test_mtcnn_searches_only_the_range(settings_factory):
    astronaut = skdata.astronaut()  # one face, MTCNN's box about 90 x 113 px
    detector = create_detector("mtcnn", settings_factory())
    # A pyramid level finds faces up to about twice the size it stands for: ranges well apart.
    found = detector.detect_batch([astronaut] * 4, face_px=[None, FaceSizeRange(20, 40), FaceSizeRange(300, 600),
                                                           FaceSizeRange(80, 200)])
    assert [len(f) for f in found] == [1, 0, 0, 1]
    assert iou(found[3][0].box, found[0][0].box) > 0.9  # other pyramid levels: a pixel or two apart
    full = _pyramid_scales(480, 640, 20)
    limited = _pyramid_scales(480, 640, 20, 100)
    assert limited == full[:len(limited)] and 12 / limited[-1] <= 100 < 12 / full[len(limited)]


def write_frames(inbox, camera: str, image: np.ndarray, n: int, start: datetime = DAY) -> None:
    folder = inbox / camera
    folder.mkdir(parents=True)
    for i in range(n):
        name = (start + timedelta(minutes=i)).strftime("%Y%m%dT%H%M%S") + ".jpg"
        cv2.imwrite(str(folder / name), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))


def test_a_face_outside_the_range_is_found_by_the_recheck_frames(champion_url, tiny_demo, tmp_path):
    inbox = tmp_path / "inbox"
    astronaut = skdata.astronaut()
    write_frames(inbox, "cam-far", astronaut, 6)  # its history says faces of 400-500 px: range 320-620
    write_frames(inbox, "cam-new", astronaut, 3, DAY + timedelta(minutes=30))  # no history: full search
    add_history(champion_url, "cam-far", DAY - timedelta(days=1), list(range(400, 500, 2)))
    settings = score_settings(tiny_demo.settings, score_batch_frames=1, face_size_recheck_frames=3)
    engine = database.make_engine(champion_url)
    summary = score(engine, settings, inbox, since=DAY, until=DAY + timedelta(hours=1))
    with engine.connect() as conn:
        n_faces = dict(conn.execute(sa.select(schema.Image.path, schema.Image.n_faces)
                                    .where(schema.Image.captured_at >= DAY)).all())
    engine.dispose()
    far = [n_faces[k] for k in sorted(n_faces) if k.startswith("cam-far/")]
    new = [n_faces[k] for k in sorted(n_faces) if k.startswith("cam-new/")]
    assert summary.n_frames == 9
    # Frames 0 and 3 re-check and find the 113 px face; frames 1 and 2 search 320-620 px and
    # miss it (frames are scored in time order, cam-far's first; 1 and 2 were planned before
    # frame 3 was scored).
    assert far[:4] == [1, 0, 0, 1]
    assert new == [1, 1, 1]


def test_detectors_that_search_every_size_score_as_before(champion_url, tiny_demo, tmp_path):
    inbox = tmp_path / "inbox"
    write_frames(inbox, "cam-far", skdata.astronaut(), 2)
    add_history(champion_url, "cam-far", DAY - timedelta(days=1), list(range(300, 400, 2)))
    settings = replace(tiny_demo.settings, detector="ultralight", score_batch_frames=1)
    engine = database.make_engine(champion_url)
    summary = score(engine, settings, inbox, since=DAY, until=DAY + timedelta(hours=1))
    engine.dispose()
    assert summary.n_faces == 2
