"""The classifier contract on detected faces, shared by the scorer and ``predict`` (no database):
crop each face as the classifier saw faces in training, classify a batch's faces in one
forward pass, and isolate a frame the models fail on.
"""

from __future__ import annotations

import logging
from typing import Any, Protocol, Sequence

import cv2
import numpy as np

from maskjob import CLASSES
from maskjob.scoring.detectors import CROP_SCALE, Detection, FaceDetector

__all__ = ["FaceClassifier", "FrameFaces", "classify_faces", "classify_isolating", "crop_face", "face_row",
           "failure_reason"]

logger = logging.getLogger(__name__)


class FaceClassifier(Protocol):
    """What scoring needs from a classifier (:func:`maskjob.ml.checkpoint.load_classifier`)."""

    def predict_proba(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """``(N, 3)`` class probabilities in ``CLASSES`` order, one forward pass."""
        ...


def crop_face(rgb: np.ndarray, box: tuple[int, int, int, int], scale: float = CROP_SCALE) -> np.ndarray:
    """A square crop centred on ``box``, ``scale`` times its longer side, as the classifier saw
    faces in training; parts outside the image are filled by reflection (as in training)."""
    x1, y1, x2, y2 = box
    side = max(1, int(round(max(x2 - x1, y2 - y1) * scale)))
    left = int(round((x1 + x2 - side) / 2))
    top = int(round((y1 + y2 - side) / 2))
    height, width = rgb.shape[:2]
    crop = rgb[max(top, 0):min(top + side, height), max(left, 0):min(left + side, width)]
    pad = (max(0, -top), max(0, top + side - height), max(0, -left), max(0, left + side - width))
    if any(pad):
        crop = cv2.copyMakeBorder(np.ascontiguousarray(crop), *pad, cv2.BORDER_REFLECT_101)
    return crop


def classify_faces(
    images: Sequence[np.ndarray], detector: FaceDetector, classifier: FaceClassifier
) -> list[list[tuple[Detection, np.ndarray]]]:
    """Detect faces in ``images`` and classify every face of the batch in one forward pass.

    Returns:
        Per image, ``(detection, class probabilities in CLASSES order)`` per face.
    """
    detections = detector.detect_batch(list(images))
    crops = [crop_face(rgb, det.box, detector.crop_scale) for rgb, dets in zip(images, detections) for det in dets]
    probs = classifier.predict_proba(crops) if crops else np.empty((0, len(CLASSES)))
    out: list[list[tuple[Detection, np.ndarray]]] = []
    k = 0
    for dets in detections:
        out.append([(det, probs[k + j]) for j, det in enumerate(dets)])
        k += len(dets)
    return out


FrameFaces = list[tuple[Detection, np.ndarray]]


def classify_isolating(images: Sequence[np.ndarray], detector: FaceDetector,
                       classifier: FaceClassifier) -> list[FrameFaces | Exception]:
    """:func:`~maskjob.scoring.faces.classify_faces` on a batch; if it raises, on each frame alone, so
    a frame the models fail on gets its exception instead of failing the batch's other frames."""
    try:
        return list(classify_faces(images, detector, classifier))
    except Exception as exc:
        if len(images) == 1:
            return [exc]
        logger.warning("a batch of %d frames failed in the models; retrying its frames one by one",
                       len(images), exc_info=True)
    out: list[FrameFaces | Exception] = []
    for rgb in images:
        try:
            out.extend(classify_faces([rgb], detector, classifier))
        except Exception as exc:
            out.append(exc)
    return out


def failure_reason(exc: Exception) -> str:
    """The recorded reason for a frame the detector or classifier raised on."""
    return f"face detection or classification failed: {type(exc).__name__}: {exc}"[:500]


def face_row(index: int, det: Detection, probs: np.ndarray) -> dict[str, Any]:
    best = int(np.argmax(probs))
    x1, y1, x2, y2 = det.box
    return {
        "face_index": index, "x1": x1, "y1": y1, "x2": x2, "y2": y2,
        "detector_score": det.score, "label": CLASSES[best],
        **{f"p_{name}": float(p) for name, p in zip(CLASSES, probs)},
        "confidence": float(probs[best]),
    }
