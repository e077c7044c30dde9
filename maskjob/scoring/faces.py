"""The classifier contract on detected faces, shared by the scorer and ``predict`` (no database):
crop each face as the classifier saw faces in training, classify a batch's faces in one
forward pass, isolate a frame the models fail on, and run several batches at once.
"""

from __future__ import annotations

import logging
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Callable, Iterable, Iterator, Protocol, Sequence

import cv2
import numpy as np

from maskjob import CLASSES
from maskjob.scoring.detectors import CROP_SCALE, Detection, FaceDetector, FaceSizeRange

__all__ = [
    "FaceClassifier", "FrameFaces", "batched", "classify_batches", "classify_faces", "classify_isolating", "crop_face",
    "face_row", "failure_reason", "prefetch",
]

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


FacePx = Sequence[FaceSizeRange | None] | None


def classify_faces(
    images: Sequence[np.ndarray], detector: FaceDetector, classifier: FaceClassifier, face_px: FacePx = None
) -> list[list[tuple[Detection, np.ndarray]]]:
    """Detect faces in ``images`` and classify every face of the batch in one forward pass.

    Args:
        face_px: per image, the face sizes to search (``None``: all), for a detector whose
            ``searches_face_sizes`` is true (:class:`maskjob.scoring.detectors.Mtcnn`).

    Returns:
        Per image, ``(detection, class probabilities in CLASSES order)`` per face.
    """
    if face_px is None:
        detections = detector.detect_batch(list(images))
    else:
        detections = detector.detect_batch(list(images), face_px=face_px)  # type: ignore[call-arg]
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
                       classifier: FaceClassifier, face_px: FacePx = None) -> list[FrameFaces | Exception]:
    """:func:`~maskjob.scoring.faces.classify_faces` on a batch; if it raises, on each frame alone, so
    a frame the models fail on gets its exception instead of failing the batch's other frames."""
    try:
        return list(classify_faces(images, detector, classifier, face_px))
    except Exception as exc:
        if len(images) == 1:
            return [exc]
        logger.warning("a batch of %d frames failed in the models; retrying its frames one by one",
                       len(images), exc_info=True)
    out: list[FrameFaces | Exception] = []
    for i, rgb in enumerate(images):
        try:
            out.extend(classify_faces([rgb], detector, classifier, None if face_px is None else [face_px[i]]))
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


def prefetch(pool: ThreadPoolExecutor, items: Iterable[Any], fn: Callable[[Any], Any], window: int) -> Iterator[Any]:
    """``map(fn, items)`` in order, with at most ``window`` calls in flight on ``pool``."""
    pending: deque[Future[Any]] = deque()
    for item in items:
        pending.append(pool.submit(fn, item))
        if len(pending) >= window:
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()


def batched(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    """``items`` in lists of ``size`` (the last one shorter)."""
    batch: list[Any] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def classify_batches(
    batches: Iterable[Sequence[np.ndarray]],
    detector: FaceDetector,
    classifier: FaceClassifier,
    workers: int | None = None,
    face_px: Iterable[FacePx] | None = None,
) -> Iterator[list[FrameFaces | Exception]]:
    """:func:`~maskjob.scoring.faces.classify_faces` on each batch, ``workers`` batches at once.

    Each worker thread runs torch on one thread. MTCNN is thousands of small operations per
    frame; with several intra-op threads each one ends at a barrier, and when other processes
    want the cores (other jobs, the other shard) those barriers cost 2-6x the work itself
    (measured on 2 cores). Batches in parallel use the same cores without them.

    Args:
        batches: lists of RGB frames.
        detector, classifier: shared by the workers (both are safe to call concurrently).
        workers: batches in flight; default ``torch.get_num_threads()`` (the CPU cores).
        face_px: per batch, each frame's face sizes to search (see :func:`classify_faces`),
            taken in step with ``batches``; ``None``: every frame searches fully.

    Returns:
        Per batch, in input order, per frame, ``(detection, class probabilities)`` per face,
        or the exception the models raised on that frame alone.
    """
    import torch

    threads = torch.get_num_threads()
    workers = workers or threads
    # With torch's OpenMP backend a thread count is per thread, but set_num_threads also sets
    # the default for threads that start later: restore that afterwards.
    pool = ThreadPoolExecutor(workers, initializer=torch.set_num_threads, initargs=(1,))
    try:
        jobs = zip(batches, face_px) if face_px is not None else ((images, None) for images in batches)
        yield from prefetch(pool, jobs, lambda job: classify_isolating(job[0], detector, classifier, job[1]),
                             window=workers + 1)
    finally:
        pool.shutdown(cancel_futures=True)
        torch.set_num_threads(threads)
