"""The ported MTCNN cascade finds what facenet-pytorch's own finds, and its pieces."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from skimage import data as skdata

from maskjob.assets import asset_path
from maskjob.imageio import read_rgb
from maskjob.scoring.matching import iou, match_boxes
from maskjob.scoring.mtcnn import _crops, _nms_min, _pyramid_scales, detect_faces


@pytest.fixture(scope="module")
def facenet():
    from facenet_pytorch import MTCNN

    return MTCNN(keep_all=True, device="cpu", post_process=False)


def _nets(model):
    return model.pnet, model.rnet, model.onet


def test_same_faces_as_facenet_pytorch_on_real_photos(facenet, settings_factory):
    """Six faces in insightface's t1.jpg, one in the astronaut and in its mirror image, and t1 at half size.

    The confident faces agree; below ~0.9 both find a few different false positives, as the
    crops R-Net and O-Net see are resampled differently (README "Face detector").
    """
    t1 = read_rgb(asset_path(settings_factory(), "insightface_t1"))
    astronaut = skdata.astronaut()
    for frames in (np.stack([t1]), np.stack([astronaut, astronaut[:, ::-1].copy()]),
                   np.stack([t1[::2, ::2]])):
        want_boxes, want_probs = facenet.detect(frames)
        got = detect_faces(frames, _nets(facenet), facenet.min_face_size)
        assert len(got) == len(frames)
        for (boxes, probs), wb, wp in zip(got, want_boxes, want_probs):
            wb = wb[np.asarray(wp, np.float32) >= 0.95].astype(np.float32)
            boxes = boxes[probs >= 0.95]
            assert len(boxes) == len(wb) >= 1
            pairs = match_boxes(wb.tolist(), boxes.tolist(), min_iou=0.8)
            assert len(pairs) == len(wb)
            assert all(iou(wb[i], boxes[j]) > 0.85 for i, j in pairs)  # 0.89-0.98 measured
    boxes, probs = detect_faces(np.stack([t1]), _nets(facenet), 20)[0]
    assert (probs >= 0.95).sum() == 6


def test_no_face_gives_empty_arrays_per_frame(facenet):
    frames = np.full((3, 120, 160, 3), 127, np.uint8)
    out = detect_faces(frames, _nets(facenet), 20)
    assert [(b.shape, p.shape) for b, p in out] == [((0, 4), (0,))] * 3


def test_pyramid_starts_at_min_face_and_stops_at_the_12px_window():
    scales = _pyramid_scales(480, 640, 20)
    assert scales[0] == pytest.approx(0.6)
    assert 480 * scales[-1] >= 12 > 480 * scales[-1] * 0.709
    assert len(_pyramid_scales(480, 640, 40)) == len(scales) - 2  # twice the face, two levels fewer


def test_crops_drop_boxes_outside_the_frame_with_their_rows():
    frames = np.zeros((2, 50, 60, 3), np.uint8)
    frames[1, 10:20, 10:20] = 255
    boxes = torch.tensor([[11.0, 11.0, 20.0, 20.0, 0.9], [70.0, 70.0, 90.0, 90.0, 0.8], [-5.0, -5.0, 4.0, 4.0, 0.7]])
    inds = torch.tensor([1, 0, 0])
    batch, had_crop = _crops(frames, boxes, inds, 24)
    assert had_crop.tolist() == [True, False, True]
    assert batch.shape == (2, 3, 24, 24)
    assert batch[0].min().item() == pytest.approx((255 - 127.5) * 0.0078125)  # the white square, normalised
    assert batch[1].max().item() == pytest.approx(-127.5 * 0.0078125)  # the black corner


def test_last_stage_nms_measures_overlap_against_the_smaller_box():
    boxes = np.array([[0, 0, 99, 99], [10, 10, 49, 49], [200, 200, 239, 239]], np.float32)
    scores = np.array([0.9, 0.95, 0.8], np.float32)
    # The small box lies wholly inside the big one: overlap 1.0 of the smaller box.
    assert sorted(_nms_min(boxes, scores, 0.7)) == [1, 2]


@pytest.mark.parametrize("shape", [(1, 1, 3), (15, 15, 3), (8, 300, 3)])
def test_frames_smaller_than_the_smallest_face_have_no_faces(facenet, shape):
    """Below 12 px at the first pyramid scale there is no level to search (facenet-pytorch
    itself raises on such frames)."""
    frames = np.zeros((2, *shape), np.uint8)
    assert [len(b) for b, _ in detect_faces(frames, _nets(facenet), 20)] == [0, 0]
