"""MTCNN's three-stage cascade (P-Net, R-Net, O-Net): face boxes, scores and five landmarks.

A port of ``detect_face`` from facenet-pytorch 2.6.0 (MIT licence, Copyright (c) 2019 Timothy
Esler; the cascade is Zhang et al., 2016) with the same thresholds, image pyramid scales, box
regression, non-maximum suppression and landmark mapping. The networks and their weights are
:mod:`maskjob.scoring.mtcnn_nets` (facenet-pytorch's, from the sha256-pinned wheel); the package
itself is not needed at run time.

By default the cascade is arranged for scoring on a CPU. Two changes, measured on the demo
inbox (same recall and precision; boxes differ from facenet-pytorch's by a pixel or two where
resampling rounds differently):

- the crops that R-Net (24 px) and O-Net (48 px) classify are cut from the uint8 frame and
  resized with OpenCV's area interpolation, one call per box, instead of torch's on float
  tensors (about half the time per box);
- the pyramid levels are resized from the uint8 frame by OpenCV's area interpolation too
  (:class:`_Cv2Pyramid`): torch's area mode is an adaptive average pool, 15-19 ms per 640x480
  demo frame at ``min_face_px`` 20 on one thread, a third of the cascade; OpenCV's, 6-7 ms;
- a box whose crop would be empty is dropped with its score; the original dropped only the
  crop, which shifted every later score onto the wrong box.

``faithful=True`` instead reproduces facenet-pytorch's ``MTCNN.detect`` bit for bit (torch
crops from the permuted float frame, R-Net/O-Net in chunks of 512, one last-stage NMS over the
whole batch with per-frame offsets), keeping only the empty-crop fix; the demo builder uses it
so the landmarks, and so its dataset, stay exactly what facenet-pytorch gave.

Example:
    >>> from maskjob.scoring.mtcnn_nets import load_nets
    >>> nets = load_nets(settings)                                    # doctest: +SKIP
    >>> detect_faces(np.stack([rgb]), nets, 20)[0].boxes              # doctest: +SKIP
    array([[212.4,  80.9, 301.2, 198.3]], dtype=float32)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial
from typing import NamedTuple

import cv2
import numpy as np
import torch
from torch.nn.functional import interpolate
from torchvision.ops import batched_nms

__all__ = ["SCALE_FACTOR", "THRESHOLDS", "Faces", "detect_faces"]

THRESHOLDS = (0.6, 0.7, 0.7)  # P-Net, R-Net, O-Net face probability (facenet-pytorch's defaults)
SCALE_FACTOR = 0.709  # between pyramid levels: about 1/sqrt(2)
PNET_CELL, PNET_STRIDE = 12, 2
FACENET_CHUNK = 512  # facenet-pytorch runs R-Net and O-Net on batches of at most this many crops

Crop = Callable[[torch.Tensor, torch.Tensor, int], tuple[torch.Tensor, torch.Tensor]]


class Faces(NamedTuple):
    """One frame's faces, in no particular order (facenet-pytorch's own order when faithful)."""

    boxes: np.ndarray  # (k, 4) float32 x1, y1, x2, y2 in pixels, unclipped
    probs: np.ndarray  # (k,) float32 O-Net face probability
    landmarks: np.ndarray  # (k, 5, 2) float32 x, y: eyes, nose tip, mouth corners (image left first)


def _no_faces() -> Faces:
    return Faces(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros((0, 5, 2), np.float32))


def _normalise(pixels: torch.Tensor) -> torch.Tensor:
    return (pixels - 127.5) * 0.0078125


def _pyramid_scales(height: int, width: int, min_face_px: float, max_face_px: float | None = None,
                    scale_factor: float = SCALE_FACTOR) -> list[float]:
    """P-Net's image scales: level ``k`` looks for faces of about ``12 / scale`` px, from
    ``min_face_px`` up, each level ``scale_factor`` times the previous one; levels for faces
    above ``max_face_px`` are left out."""
    scale = 12.0 / min_face_px
    side = min(height, width) * scale
    scales = []
    while side >= 12:
        if max_face_px is None or PNET_CELL / scale <= max_face_px:
            scales.append(scale)
        scale *= scale_factor
        side *= scale_factor
    return scales


def _pnet_boxes(reg: torch.Tensor, probs: torch.Tensor, scale: float,
                threshold: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Candidate windows of one pyramid level: ``(k, 9)`` rows of box, score, regression."""
    mask = probs >= threshold
    where = mask.nonzero()
    image_inds = where[:, 0]
    score = probs[mask]
    offsets = reg.permute(1, 0, 2, 3)[:, mask].permute(1, 0)
    cells = where[:, 1:].to(reg.dtype).flip(1)
    top_left = ((PNET_STRIDE * cells + 1) / scale).floor()
    bottom_right = ((PNET_STRIDE * cells + PNET_CELL) / scale).floor()
    return torch.cat([top_left, bottom_right, score.unsqueeze(1), offsets], dim=1), image_inds


def _square(boxes: torch.Tensor) -> torch.Tensor:
    """Boxes grown to squares around their centres (columns 0-3, in place)."""
    h = boxes[:, 3] - boxes[:, 1]
    w = boxes[:, 2] - boxes[:, 0]
    side = torch.max(w, h)
    boxes[:, 0] = boxes[:, 0] + w * 0.5 - side * 0.5
    boxes[:, 1] = boxes[:, 1] + h * 0.5 - side * 0.5
    boxes[:, 2:4] = boxes[:, :2] + side.repeat(2, 1).permute(1, 0)
    return boxes


def _regress(boxes: torch.Tensor, reg: torch.Tensor) -> torch.Tensor:
    """Apply a network's box regression (fractions of the box size) in place."""
    w = boxes[:, 2] - boxes[:, 0] + 1
    h = boxes[:, 3] - boxes[:, 1] + 1
    boxes[:, :4] = torch.stack([boxes[:, 0] + reg[:, 0] * w, boxes[:, 1] + reg[:, 1] * h,
                                boxes[:, 2] + reg[:, 2] * w, boxes[:, 3] + reg[:, 3] * h], dim=1)
    return boxes


def _crops(frames: np.ndarray, boxes: torch.Tensor, image_inds: torch.Tensor,
           size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``size`` px crops of ``boxes`` (normalised NCHW) and the mask of boxes that had one.

    Coordinates follow the original: truncated, 1-based starts clamped to 1, ends to the
    frame; the crop is ``[y - 1, ey)`` x ``[x - 1, ex)``.
    """
    height, width = frames.shape[1:3]
    corners = boxes[:, :4].trunc().int().numpy()
    x, y = np.maximum(corners[:, 0], 1), np.maximum(corners[:, 1], 1)
    ex, ey = np.minimum(corners[:, 2], width), np.minimum(corners[:, 3], height)
    keep = (ey > y - 1) & (ex > x - 1)
    out = np.empty((int(keep.sum()), size, size, 3), np.uint8)
    for j, k in enumerate(np.flatnonzero(keep)):
        patch = frames[image_inds[k], y[k] - 1:ey[k], x[k] - 1:ex[k]]
        out[j] = cv2.resize(patch, (size, size), interpolation=cv2.INTER_AREA)
    batch = _normalise(torch.from_numpy(out).permute(0, 3, 1, 2).float().contiguous())
    return batch, torch.from_numpy(keep)


def _nms_min(boxes: np.ndarray, scores: np.ndarray, threshold: float) -> list[int]:
    """NMS that measures overlap against the smaller box (MTCNN's last stage)."""
    x1, y1, x2, y2 = boxes.T
    area = (x2 - x1 + 1) * (y2 - y1 + 1)
    order = np.argsort(scores)
    picked = []
    while order.size:
        i, rest = order[-1], order[:-1]
        picked.append(int(i))
        w = np.maximum(0.0, np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]) + 1)
        h = np.maximum(0.0, np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]) + 1)
        order = rest[w * h / np.minimum(area[i], area[rest]) <= threshold]
    return picked


def _torch_crops(full: torch.Tensor, boxes: torch.Tensor, image_inds: torch.Tensor,
                 size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """facenet-pytorch's crops: cut from the float frames (NCHW) and area-resampled by torch."""
    height, width = full.shape[2:4]
    corners = boxes[:, :4].trunc().int().numpy()
    x, y = np.maximum(corners[:, 0], 1), np.maximum(corners[:, 1], 1)
    ex, ey = np.minimum(corners[:, 2], width), np.minimum(corners[:, 3], height)
    keep = (ey > y - 1) & (ex > x - 1)
    # Indexed exactly as the original (tensor image index, 1-based starts) so each crop has
    # the same memory layout, hence the same resampled values.
    crops = [interpolate(full[image_inds[k], :, (y[k] - 1):ey[k], (x[k] - 1):ex[k]].unsqueeze(0),
                         size=(size, size), mode="area")
             for k in np.flatnonzero(keep)]
    batch = torch.cat(crops, dim=0) if crops else full.new_zeros((0, 3, size, size))
    return _normalise(batch), torch.from_numpy(keep)


def _forward(net: torch.nn.Module, batch: torch.Tensor, chunk: int | None) -> tuple[torch.Tensor, ...]:
    if chunk is None or len(batch) <= chunk:
        return tuple(net(batch))
    outs = [net(batch[i:i + chunk]) for i in range(0, len(batch), chunk)]
    return tuple(torch.cat(parts, dim=0) for parts in zip(*outs))


Level = Callable[[int, int], torch.Tensor]


def _torch_level(full: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """facenet-pytorch's pyramid level: torch's area resampling of the float frames (NCHW)."""
    return interpolate(full, size=(height, width), mode="area")


class _Cv2Pyramid:
    """Pyramid levels by OpenCV's area interpolation of the uint8 frames (NCHW float).

    A level is resized from the smallest of the frames and their exact 2x halvings that is at
    least twice its size: about half the time of resizing every level from the full frame
    (6.9 against 12.7 ms per demo frame at ``min_face_px`` 20), within 3 grey levels on
    average of torch's area resampling. Measured on the demo inbox and rejected: resizing
    each level from the one before (the small levels drift 10 grey levels off) and linear
    interpolation from the nearest halving (4-6 ms faster per frame, but with_mask recall
    0.824 instead of 0.847 at ``min_face_px`` 20).
    """

    def __init__(self, frames: np.ndarray) -> None:
        self.source = frames

    def __call__(self, height: int, width: int) -> torch.Tensor:
        # Levels come largest first, so a halving made for one level serves every later one.
        while self.source.shape[1] // 2 >= 2 * height and self.source.shape[2] // 2 >= 2 * width:
            half = (self.source.shape[2] // 2, self.source.shape[1] // 2)
            self.source = np.stack([cv2.resize(f, half, interpolation=cv2.INTER_AREA) for f in self.source])
        level = np.stack([cv2.resize(f, (width, height), interpolation=cv2.INTER_AREA) for f in self.source])
        return torch.from_numpy(level).permute(0, 3, 1, 2).float().contiguous()


def _propose(level_of: Level, height: int, width: int, scales: list[float], pnet: torch.nn.Module,
             threshold: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Stage 1: P-Net over the pyramid -> squared candidate boxes ``(k, 5)`` and frame indices."""
    found, found_inds = [], []
    for scale in scales:
        level = level_of(int(height * scale + 1), int(width * scale + 1))
        reg, probs = pnet(_normalise(level))
        boxes, inds = _pnet_boxes(reg, probs[:, 1], scale, threshold)
        keep = batched_nms(boxes[:, :4], boxes[:, 4], inds, 0.5)
        found.append(boxes[keep])
        found_inds.append(inds[keep])
    boxes, inds = torch.cat(found), torch.cat(found_inds)
    keep = batched_nms(boxes[:, :4], boxes[:, 4], inds, 0.7)
    boxes, inds = boxes[keep], inds[keep]
    # P-Net's regression is relative to width and height without the +1 of the later stages.
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    boxes = _square(torch.stack([boxes[:, 0] + boxes[:, 5] * w, boxes[:, 1] + boxes[:, 6] * h,
                                 boxes[:, 2] + boxes[:, 7] * w, boxes[:, 3] + boxes[:, 8] * h,
                                 boxes[:, 4]], dim=1))
    return boxes, inds


def _classify(crop: Crop, net: torch.nn.Module, boxes: torch.Tensor, inds: torch.Tensor, size: int,
              threshold: float, chunk: int | None) -> tuple[torch.Tensor, torch.Tensor, tuple[torch.Tensor, ...]]:
    """Run ``net`` on the crops of ``boxes``; keep those above ``threshold``.

    Returns the kept boxes (their input coordinates, column 4 the new score), their frame
    indices and the net's other outputs (regression first), rows matching the boxes.
    """
    batch, had_crop = crop(boxes, inds, size)
    boxes, inds = boxes[had_crop], inds[had_crop]
    out = _forward(net, batch, chunk)
    score = out[-1][:, 1]
    passed = score > threshold
    boxes = torch.cat([boxes[passed, :4], score[passed].unsqueeze(1)], dim=1)
    return boxes, inds[passed], tuple(o[passed] for o in out[:-1])


def _landmarks(boxes: torch.Tensor, marks: torch.Tensor) -> torch.Tensor:
    """O-Net's landmarks (fractions of its input box) in pixels, ``(k, 5, 2)``, as the original."""
    w = boxes[:, 2] - boxes[:, 0] + 1
    h = boxes[:, 3] - boxes[:, 1] + 1
    xs = w.unsqueeze(1) * marks[:, :5] + boxes[:, 0].unsqueeze(1) - 1
    ys = h.unsqueeze(1) * marks[:, 5:10] + boxes[:, 1].unsqueeze(1) - 1
    return torch.stack([xs, ys], dim=2)


def _nms_min_batched(boxes: torch.Tensor, inds: torch.Tensor, threshold: float) -> list[int]:
    """:func:`_nms_min` over every frame at once, frames apart by offsets (the original's way)."""
    if not len(boxes):
        return []
    coords = boxes[:, :4]
    offsets = inds.to(coords) * (coords.max() + 1)
    return _nms_min((coords + offsets[:, None]).numpy(), boxes[:, 4].numpy(), threshold)


def _per_frame(boxes: torch.Tensor, inds: torch.Tensor, points: torch.Tensor, n: int,
               faithful: bool) -> list[Faces]:
    """The last stage's NMS (overlap against the smaller box), split by frame."""
    boxes_np, inds_np, points_np = boxes.numpy(), inds.numpy(), points.numpy()
    if faithful:
        pick = _nms_min_batched(boxes, inds, 0.7)
        boxes_np, inds_np, points_np = boxes_np[pick], inds_np[pick], points_np[pick]
    result = []
    for i in range(n):
        mine, marks = boxes_np[inds_np == i], points_np[inds_np == i]
        if faithful:
            keep = list(range(len(mine)))
        else:
            keep = _nms_min(mine[:, :4], mine[:, 4], 0.7) if len(mine) else []
        result.append(Faces(mine[keep, :4].astype(np.float32), mine[keep, 4].astype(np.float32),
                            marks[keep].astype(np.float32)))
    return result


def detect_faces(frames: np.ndarray, nets: Sequence[torch.nn.Module], min_face_px: float,
                 thresholds: Sequence[float] = THRESHOLDS, *, faithful: bool = False,
                 max_face_px: float | None = None, scale_factor: float = SCALE_FACTOR) -> list[Faces]:
    """Faces and their five landmarks in a stack of same-sized frames.

    Args:
        frames: ``(N, H, W, 3)`` uint8 RGB.
        nets: ``(pnet, rnet, onet)`` in eval mode (:func:`maskjob.scoring.mtcnn_nets.load_nets`).
        min_face_px: the smallest face side looked for; sets the pyramid's first scale.
        thresholds: face probability each stage keeps.
        faithful: reproduce facenet-pytorch's ``detect`` exactly (slower; see the module doc);
            exact only with the nets in the default memory layout (not ``channels_last``).
        max_face_px: leave out the pyramid levels for faces larger than this (``None``: all
            levels down to P-Net's 12 px window); the cascade's later stages are unchanged.
        scale_factor: each pyramid level's scale over the previous one's (facenet-pytorch's
            0.709); smaller means fewer levels, with faces between levels found less surely.

    Returns:
        Per frame, a :class:`Faces` of ``boxes``, ``probs`` and ``landmarks``.
    """
    pnet, rnet, onet = nets
    n, height, width = frames.shape[:3]
    scales = _pyramid_scales(height, width, min_face_px, max_face_px, scale_factor)
    if not scales:  # smaller than P-Net's 12 px window at min_face_px, or no level in range: no face
        return [_no_faces() for _ in range(n)]
    with torch.inference_mode():
        # The original copies the frames first; the copy's canonical strides decide the memory
        # layout of the float tensor below, and with it the last bits of every convolution.
        if faithful:
            full = torch.from_numpy(frames.copy()).permute(0, 3, 1, 2).float()
            crop: Crop = partial(_torch_crops, full)
            level_of: Level = partial(_torch_level, full)
        else:
            crop, level_of = partial(_crops, frames), _Cv2Pyramid(frames)
        chunk = FACENET_CHUNK if faithful else None
        boxes, inds = _propose(level_of, height, width, scales, pnet, thresholds[0])
        if not len(boxes):
            return [_no_faces() for _ in range(n)]
        boxes, inds, (reg,) = _classify(crop, rnet, boxes, inds, 24, thresholds[1], chunk)
        keep = batched_nms(boxes[:, :4], boxes[:, 4], inds, 0.7)
        boxes, inds = _square(_regress(boxes[keep], reg[keep])), inds[keep]
        if not len(boxes):
            return [_no_faces() for _ in range(n)]
        boxes, inds, (reg, marks) = _classify(crop, onet, boxes, inds, 48, thresholds[2], chunk)
        points = _landmarks(boxes, marks)  # from O-Net's input boxes, before its regression
        return _per_frame(_regress(boxes, reg), inds, points, n, faithful)
