"""Face detectors: real faces found, batched == single, threads, factory errors, crops, drawing."""

from __future__ import annotations

import threading

import cv2
import numpy as np
import pytest
from skimage import data as skdata

from maskjob.errors import MaskjobError
from maskjob.scoring.annotate import CLASS_COLOURS, draw_faces
from maskjob.scoring.detectors import DETECTORS, Detection, UltraLight, create_detector
from maskjob.scoring.faces import classify_faces, crop_face
from maskjob.scoring.matching import iou, match_boxes
from tests.fixtures.paths import REPO_ASSETS

# The astronaut photo (NASA, public domain) has one face; this box is hand-labelled.
ASTRONAUT_FACE = (175, 50, 275, 180)


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    return skdata.astronaut()


@pytest.mark.parametrize("name", sorted(DETECTORS))
def test_detector_finds_the_real_face_single_and_batched(name, settings_factory, astronaut):
    detector = create_detector(name, settings_factory())
    assert detector.name == name
    (face,) = detector.detect(astronaut)
    assert iou(face.box, ASTRONAUT_FACE) > 0.5 and 0.6 <= face.score <= 1.0

    small = astronaut[::2, ::2].copy()  # another size in the same batch
    blank = np.full((240, 320, 3), 127, np.uint8)
    batch = detector.detect_batch([astronaut, blank, small, astronaut])
    assert [len(d) for d in batch] == [1, 0, 1, 1]
    assert iou(batch[0][0].box, face.box) > 0.95 and iou(batch[3][0].box, face.box) > 0.95
    assert iou(batch[2][0].box, tuple(v / 2 for v in ASTRONAUT_FACE)) > 0.5
    assert detector.detect_batch([]) == []


def test_mtcnn_looks_for_faces_down_to_min_face_px(settings_factory, astronaut):
    tiny = cv2.resize(astronaut, (128, 128), interpolation=cv2.INTER_AREA)  # its face is about 28 px tall
    assert create_detector("mtcnn", settings_factory()).min_face_px == 20
    assert len(create_detector("mtcnn", settings_factory(min_face_px=20)).detect(tiny)) == 1
    assert create_detector("mtcnn", settings_factory(min_face_px=60)).detect(tiny) == []


def test_unknown_detector_names_the_choices(settings_factory):
    with pytest.raises(MaskjobError, match="mtcnn.*res10.*ultralight"):
        create_detector("yolo", settings_factory())


def test_missing_or_tampered_mtcnn_weights_say_how_to_fetch(settings_factory, tmp_path):
    with pytest.raises(MaskjobError, match="mtcnn_pnet.*missing.*maskjob assets fetch"):
        create_detector("mtcnn", settings_factory(assets_dir=tmp_path / "empty"))
    assets = tmp_path / "assets" / "facenet-pytorch"
    assets.mkdir(parents=True)
    for name in ("pnet.pt", "rnet.pt", "onet.pt"):
        (assets / name).write_bytes((REPO_ASSETS / "facenet-pytorch" / name).read_bytes())
    (assets / "onet.pt").write_bytes((assets / "onet.pt").read_bytes()[:-10])
    with pytest.raises(MaskjobError, match="mtcnn_onet.*wrong sha256.*maskjob assets fetch"):
        create_detector("mtcnn", settings_factory(assets_dir=tmp_path / "assets"))


def test_missing_res10_files_say_how_to_fetch(settings_factory, tmp_path):
    with pytest.raises(MaskjobError, match="maskjob assets fetch"):
        create_detector("res10", settings_factory(assets_dir=tmp_path / "empty"))


def test_missing_or_broken_ultralight_model_says_how_to_fetch(settings_factory, tmp_path):
    with pytest.raises(MaskjobError, match="ultralight_onnx.*missing.*maskjob assets fetch"):
        create_detector("ultralight", settings_factory(assets_dir=tmp_path / "empty"))
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not an onnx model")
    with pytest.raises(MaskjobError, match="ultralight.*maskjob assets fetch"):
        UltraLight(str(broken), 0.6)
    with pytest.raises(MaskjobError, match="ultralight.*maskjob assets fetch"):
        UltraLight(str(tmp_path / "absent.onnx"), 0.6)


def test_ultralight_in_two_threads_at_once_equals_one_at_a_time(settings_factory, astronaut):
    detector = create_detector("ultralight", settings_factory())
    small = astronaut[::2, ::2].copy()
    wide = cv2.resize(astronaut, (960, 400))
    blank = np.full((480, 640, 3), 127, np.uint8)
    jobs = [[astronaut, small, blank, wide] * 3, [wide, blank, astronaut[:, ::-1].copy(), small] * 3]
    alone = [[[d.box for d in dets] for dets in detector.detect_batch(images)] for images in jobs]
    together: list = [None, None]
    start = threading.Barrier(len(jobs))

    def run(i: int) -> None:
        start.wait()
        together[i] = [[d.box for d in dets] for dets in detector.detect_batch(jobs[i])]

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert together == alone
    assert [len(boxes) for boxes in alone[0][:4]] == [1, 1, 0, 1]


def test_crop_face_is_square_centred_and_reflects_at_borders():
    rgb = np.zeros((100, 200, 3), np.uint8)
    rgb[:, :100] = 255
    inner = crop_face(rgb, (50, 20, 90, 70), scale=1.2)  # 40x50 box: 60 px square
    assert inner.shape == (60, 60, 3)
    corner = crop_face(rgb, (0, 0, 40, 40), scale=2.0)  # half of it lies outside the image
    assert corner.shape == (80, 80, 3)
    assert corner[:20, :20].min() == 255  # reflected from inside, not black
    edge = crop_face(rgb, (90, 40, 110, 60), scale=1.0)  # straddles the white/black split
    assert edge.shape == (20, 20, 3) and edge[:, :10].min() == 255 and edge[:, 10:].max() == 0


def test_iou():
    assert iou((0, 0, 10, 10), (0, 0, 10, 10)) == 1.0
    assert iou((0, 0, 10, 10), (5, 0, 15, 10)) == pytest.approx(50 / 150)
    assert iou((0, 0, 10, 10), (20, 20, 30, 30)) == 0.0


class _Constant:
    """A stand-in classifier that records each forward pass."""

    def __init__(self) -> None:
        self.calls: list[int] = []

    def predict_proba(self, images):
        self.calls.append(len(images))
        return np.tile(np.array([[0.1, 0.7, 0.2]], np.float32), (len(images), 1))


def test_classify_faces_uses_one_forward_for_the_whole_batch(settings_factory, astronaut):
    classifier = _Constant()
    blank = np.zeros((50, 50, 3), np.uint8)
    out = classify_faces([astronaut, blank, astronaut], create_detector("res10", settings_factory()), classifier)
    assert classifier.calls == [2]
    assert [len(faces) for faces in out] == [1, 0, 1]
    det, probs = out[2][0]
    assert isinstance(det, Detection) and probs.tolist() == pytest.approx([0.1, 0.7, 0.2])


def test_draw_faces_uses_the_class_colour():
    rgb = np.zeros((120, 160, 3), np.uint8)
    drawn = draw_faces(rgb, [((40, 40, 100, 110), "without_mask", 0.91)])
    assert rgb.max() == 0  # the input is untouched
    assert tuple(drawn[80, 40]) == CLASS_COLOURS["without_mask"]  # left edge of the box
    assert (drawn[20:40, 40:100] != 0).any()  # the label above the box


def test_match_boxes_is_one_to_one_best_first():
    truth = [(0, 0, 10, 10), (8, 0, 18, 10)]
    found = [(1, 0, 11, 10), (0, 0, 10, 10), (50, 50, 60, 60)]
    assert sorted(match_boxes(truth, found)) == [(0, 1)]
    assert sorted(match_boxes(truth, found, min_iou=0.1)) == [(0, 1), (1, 0)]
    assert match_boxes([], found) == []


def _demo_recall(name: str, tiny_demo) -> dict[str, float]:
    """Recall of detector ``name`` on the tiny demo inbox, over all faces and over masked ones."""
    import csv

    from maskjob.imageio import read_rgb

    truth: dict[str, list] = {}
    with tiny_demo.ground_truth.open() as fh:
        for row in csv.DictReader(fh):
            box = tuple(int(row[k]) for k in ("x1", "y1", "x2", "y2"))
            truth.setdefault(row["image"], []).append((box, row["label"] != "without_mask"))
    detector = create_detector(name, tiny_demo.settings)
    paths = sorted(truth)
    found = detector.detect_batch([read_rgb(tiny_demo.inbox / p) for p in paths])
    hit_masked = [
        truth[p][ti][1]
        for p, dets in zip(paths, found)
        for ti, _ in match_boxes([box for box, _ in truth[p]], [d.box for d in dets])
    ]
    masked = [is_masked for faces in truth.values() for _, is_masked in faces]
    return {"all": len(hit_masked) / len(masked), "masked": sum(hit_masked) / sum(masked)}


def test_mtcnn_finds_more_demo_faces_than_res10(tiny_demo):
    """The measurement behind the detector choice (README "Face detector"), in small."""
    mtcnn, res10 = _demo_recall("mtcnn", tiny_demo)["all"], _demo_recall("res10", tiny_demo)["all"]
    assert mtcnn >= 0.7 and mtcnn > res10, (mtcnn, res10)


def test_ultralight_finds_most_demo_faces_but_not_more_masked_ones_than_mtcnn(tiny_demo):
    """ultralight is the fast option; MTCNN stays the default for masked faces."""
    mtcnn, ultralight = _demo_recall("mtcnn", tiny_demo), _demo_recall("ultralight", tiny_demo)
    assert ultralight["all"] >= 0.6 and mtcnn["masked"] >= ultralight["masked"], (mtcnn, ultralight)
