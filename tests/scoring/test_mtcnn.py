"""maskjob's MTCNN (nets, pinned weights, cascade, landmarks) against facenet-pytorch's own.

facenet-pytorch is installed in the test environment only (``--no-deps``), as the reference;
maskjob itself never imports it.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
from skimage import data as skdata

from maskjob.assets import asset_path
from maskjob.errors import MaskjobError
from maskjob.imageio import read_rgb
from maskjob.scoring.matching import iou, match_boxes
from maskjob.scoring.mtcnn import (
    _crops,
    _Cv2Pyramid,
    _nms_min,
    _nms_min_batched,
    _pyramid_scales,
    _torch_crops,
    _torch_level,
    detect_faces,
)
from maskjob.scoring.mtcnn_nets import NET_ASSETS, PNet, load_nets, load_state_dict


@pytest.fixture(scope="module")
def facenet():
    from facenet_pytorch import MTCNN

    return MTCNN(keep_all=True, device="cpu", post_process=False)


@pytest.fixture(scope="module")
def scoring_nets(tmp_path_factory):
    """The nets as the ``mtcnn`` detector holds them (channels-last)."""
    from tests.fixtures.demo import tiny_settings

    return load_nets(tiny_settings(tmp_path_factory.mktemp("nets")), channels_last=True)


@pytest.fixture(scope="module")
def plain_nets(tmp_path_factory):
    from tests.fixtures.demo import tiny_settings

    return load_nets(tiny_settings(tmp_path_factory.mktemp("nets")))


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """insightface's t1.jpg (six faces), the astronaut and its mirror image, t1 at half size."""
    from tests.fixtures.demo import tiny_settings

    t1 = read_rgb(asset_path(tiny_settings(tmp_path_factory.mktemp("p")), "insightface_t1"))
    astronaut = skdata.astronaut()
    return [np.stack([t1]), np.stack([astronaut, astronaut[:, ::-1].copy()]), np.stack([t1[::2, ::2]])]


def _largest_first(faces):
    """A frame's faces in the order facenet-pytorch's ``detect`` gives them (select_largest)."""
    b = faces.boxes
    order = np.argsort((b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1]))[::-1]
    return b[order], faces.probs[order], faces.landmarks[order]


def test_pinned_weights_are_facenet_pytorchs_and_load_as_state_dicts(plain_nets, facenet):
    for ours, theirs in zip(plain_nets, (facenet.pnet, facenet.rnet, facenet.onet)):
        assert type(ours).__name__ == type(theirs).__name__
        want = theirs.state_dict()
        got = ours.state_dict()
        assert list(got) == list(want)
        assert all(torch.equal(got[k], want[k]) for k in want)
        assert not ours.training


def test_faithful_cascade_is_facenet_pytorchs_detect_bit_for_bit(plain_nets, facenet, photos):
    """Boxes, probabilities and landmarks (the demo builder depends on these being exact)."""
    n_faces = 0
    for frames in photos:
        want_boxes, want_probs, want_points = facenet.detect(frames, landmarks=True)
        got = detect_faces(frames, plain_nets, facenet.min_face_size, faithful=True)
        assert len(got) == len(frames)
        for faces, wb, wp, wl in zip(got, want_boxes, want_probs, want_points):
            boxes, probs, points = _largest_first(faces)
            assert boxes.shape == (len(wb), 4) and points.shape == (len(wb), 5, 2)
            np.testing.assert_array_equal(boxes, np.asarray(wb, np.float32))
            np.testing.assert_array_equal(probs, np.asarray(wp, np.float32))
            np.testing.assert_array_equal(points, np.asarray(wl, np.float32))
            n_faces += len(wb)
    assert n_faces >= 10


def test_same_faces_as_facenet_pytorch_on_real_photos(scoring_nets, facenet, photos):
    """The scoring arrangement (OpenCV crops): the confident faces agree, and so do their
    landmarks to a few pixels; below ~0.9 both find a few different false positives, as the
    crops R-Net and O-Net see are resampled differently (README "Face detector")."""
    for frames in photos:
        want_boxes, want_probs, want_points = facenet.detect(frames, landmarks=True)
        got = detect_faces(frames, scoring_nets, facenet.min_face_size)
        assert len(got) == len(frames)
        for faces, wb, wp, wl in zip(got, want_boxes, want_probs, want_points):
            sure = np.asarray(wp, np.float32) >= 0.95
            wb, wl = wb[sure].astype(np.float32), wl[sure].astype(np.float32)
            mine = faces.probs >= 0.95
            boxes, points = faces.boxes[mine], faces.landmarks[mine]
            assert len(boxes) == len(wb) >= 1
            pairs = match_boxes(wb.tolist(), boxes.tolist(), min_iou=0.8)
            assert len(pairs) == len(wb)
            for i, j in pairs:
                assert iou(wb[i], boxes[j]) > 0.85  # 0.89-0.98 measured
                side = wb[i, 2] - wb[i, 0]
                assert np.abs(points[j] - wl[i]).max() < 0.08 * side
    faces = detect_faces(photos[0], scoring_nets, 20)[0]
    assert (faces.probs >= 0.95).sum() == 6


def test_landmarks_sit_in_their_face_in_order(scoring_nets, photos):
    """Eyes above the nose above the mouth corners; image-left eye and corner first."""
    astronaut = photos[1][:1]
    (faces,) = detect_faces(astronaut, scoring_nets, 20)
    assert faces.landmarks.dtype == np.float32 and faces.landmarks.shape == (1, 5, 2)
    (x1, y1, x2, y2), (eye_l, eye_r, nose, mouth_l, mouth_r) = faces.boxes[0], faces.landmarks[0]
    assert all(x1 <= x <= x2 and y1 <= y <= y2 for x, y in faces.landmarks[0])
    assert eye_l[0] < eye_r[0] and mouth_l[0] < mouth_r[0]
    assert max(eye_l[1], eye_r[1]) < nose[1] < min(mouth_l[1], mouth_r[1])


def test_no_face_gives_empty_arrays_per_frame(scoring_nets, plain_nets):
    frames = np.full((3, 120, 160, 3), 127, np.uint8)
    for nets, faithful in ((scoring_nets, False), (plain_nets, True)):
        out = detect_faces(frames, nets, 20, faithful=faithful)
        assert [(f.boxes.shape, f.probs.shape, f.landmarks.shape) for f in out] == [((0, 4), (0,), (0, 5, 2))] * 3


def test_pyramid_starts_at_min_face_and_stops_at_the_12px_window():
    scales = _pyramid_scales(480, 640, 20)
    assert scales[0] == pytest.approx(0.6)
    assert 480 * scales[-1] >= 12 > 480 * scales[-1] * 0.709
    assert len(_pyramid_scales(480, 640, 40)) == len(scales) - 2  # twice the face, two levels fewer


def test_a_larger_pyramid_step_covers_the_same_sizes_in_fewer_levels():
    fine = _pyramid_scales(480, 640, 20)
    coarse = _pyramid_scales(480, 640, 20, scale_factor=0.5)
    assert coarse[0] == fine[0] == pytest.approx(0.6)
    assert [b / a for a, b in zip(coarse, coarse[1:])] == pytest.approx([0.5] * (len(coarse) - 1))
    assert 480 * coarse[-1] >= 12 > 480 * coarse[-1] * 0.5
    assert len(coarse) == 5 < len(fine) == 10  # 288 px down to 18 px, against 0.709 steps


def test_scoring_pyramid_levels_are_torchs_area_resampling_to_a_few_grey_levels():
    """The scoring cascade resizes its levels with OpenCV from 2x halvings of the frame; each
    level stays close to facenet-pytorch's (torch's area mode on the whole frame)."""
    frames = np.stack([skdata.astronaut(), skdata.astronaut()[::-1].copy()])
    full = torch.from_numpy(frames).permute(0, 3, 1, 2).float()
    pyramid = _Cv2Pyramid(frames)
    sources = []
    for scale in _pyramid_scales(512, 512, 20):
        side = int(512 * scale + 1)
        want, got = _torch_level(full, side, side), pyramid(side, side)
        assert got.shape == want.shape == (2, 3, side, side) and got.is_contiguous()
        assert (got - want).abs().mean().item() < 3.5  # 0.9-2.9 measured
        sources.append(pyramid.source.shape[1])
        assert sources[-1] >= 2 * side or sources[-1] == 512
    assert sources[0] == 512 and sources[-1] == 32  # halved as the levels shrink


def test_the_pyramid_step_setting_reaches_the_detector(settings_factory):
    from maskjob.scoring.detectors import create_detector

    assert create_detector("mtcnn", settings_factory()).scale_factor == 0.709
    assert create_detector("mtcnn", settings_factory(mtcnn_scale_factor=0.6)).scale_factor == 0.6
    with pytest.raises(MaskjobError, match="mtcnn_scale_factor must be >= 0.3 and <= 0.9"):
        settings_factory(mtcnn_scale_factor=0.95)


def test_crops_drop_boxes_outside_the_frame_with_their_rows():
    frames = np.zeros((2, 50, 60, 3), np.uint8)
    frames[1, 10:20, 10:20] = 255
    boxes = torch.tensor([[11.0, 11.0, 20.0, 20.0, 0.9], [70.0, 70.0, 90.0, 90.0, 0.8], [-5.0, -5.0, 4.0, 4.0, 0.7]])
    inds = torch.tensor([1, 0, 0])
    full = torch.from_numpy(frames).permute(0, 3, 1, 2).float()
    for batch, had_crop in (_crops(frames, boxes, inds, 24), _torch_crops(full, boxes, inds, 24)):
        assert had_crop.tolist() == [True, False, True]
        assert batch.shape == (2, 3, 24, 24)
        assert batch[0].min().item() == pytest.approx((255 - 127.5) * 0.0078125)  # the white square, normalised
        assert batch[1].max().item() == pytest.approx(-127.5 * 0.0078125)  # the black corner


def test_last_stage_nms_measures_overlap_against_the_smaller_box():
    boxes = np.array([[0, 0, 99, 99], [10, 10, 49, 49], [200, 200, 239, 239]], np.float32)
    scores = np.array([0.9, 0.95, 0.8], np.float32)
    # The small box lies wholly inside the big one: overlap 1.0 of the smaller box.
    assert sorted(_nms_min(boxes, scores, 0.7)) == [1, 2]
    # The batched form keeps frames apart: the same two boxes in two frames both survive.
    both = torch.tensor([[0, 0, 99, 99, 0.9], [0, 0, 99, 99, 0.8]])
    assert _nms_min_batched(both, torch.tensor([0, 1]), 0.7) == [0, 1]
    assert _nms_min_batched(both, torch.tensor([0, 0]), 0.7) == [0]


@pytest.mark.parametrize("shape", [(1, 1, 3), (15, 15, 3), (8, 300, 3)])
def test_frames_smaller_than_the_smallest_face_have_no_faces(scoring_nets, shape):
    """Below 12 px at the first pyramid scale there is no level to search (facenet-pytorch
    itself raises on such frames)."""
    frames = np.zeros((2, *shape), np.uint8)
    assert [len(f.boxes) for f in detect_faces(frames, scoring_nets, 20)] == [0, 0]


class _NotWeights:
    """A pickled object: loading it would import and build arbitrary classes."""


def test_weights_load_safely_or_fail_clearly(tmp_path):
    pickled = tmp_path / "code.pt"
    torch.save({"conv1.weight": _NotWeights()}, pickled)  # refused by weights_only=True
    wrong = tmp_path / "wrong.pt"
    torch.save({"dense.weight": torch.zeros(2)}, wrong)
    listed = tmp_path / "list.pt"
    torch.save([torch.zeros(1)], listed)
    for path in (pickled, wrong, listed, tmp_path / "absent.pt"):
        with pytest.raises(MaskjobError, match="cannot load MTCNN weights.*maskjob assets fetch"):
            load_state_dict(PNet(), path)


def test_missing_weights_name_the_fetch_command(settings_factory, tmp_path):
    with pytest.raises(MaskjobError, match="mtcnn_pnet.*missing.*maskjob assets fetch"):
        load_nets(settings_factory(assets_dir=tmp_path / "empty"))
    assert set(NET_ASSETS.values()) == {"mtcnn_pnet", "mtcnn_rnet", "mtcnn_onet"}


def test_scoring_and_landmarks_run_without_facenet_pytorch(repo_root):
    """With the package made unimportable, the detector and the demo's landmarks still work."""
    code = (
        "import sys; sys.modules['facenet_pytorch'] = None\n"
        "from skimage import data\n"
        "from tests.fixtures.demo import tiny_settings\n"
        "from maskjob.scoring.detectors import create_detector\n"
        "from maskjob.demo.facesynth import load_faces\n"
        "import tempfile, pathlib\n"
        "s = tiny_settings(pathlib.Path(tempfile.mkdtemp()))\n"
        "print(len(create_detector('mtcnn', s).detect(data.astronaut())), len(load_faces(s)))\n"
        "assert not any(m.startswith('facenet_pytorch') for m in sys.modules if sys.modules[m])\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=repo_root, capture_output=True, text=True,
                         timeout=300, check=False)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["1", "110"]
