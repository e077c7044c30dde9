"""Ad-hoc prediction on image files: the scoring detector and classifier, no database writes.

Example:
    >>> (result,) = predict_files(["photo.jpg"], settings, annotate_dir="out")   # doctest: +SKIP
    >>> result["mode"], [f["label"] for f in result["faces"]]                   # doctest: +SKIP
    ('detected', ['with_mask', 'without_mask'])
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from maskjob import CLASSES
from maskjob.config import Settings
from maskjob.errors import MaskjobError
from maskjob.imageio import display_path, output_dir, read_rgb
from maskjob.scoring.annotate import draw_faces
from maskjob.scoring.detectors import Detection, FaceDetector, create_detector
from maskjob.scoring.faces import FaceClassifier, classify_isolating, face_row, failure_reason
from maskjob.storage.registry import load_registered
from maskjob.vocab import IMAGE_EXTENSIONS

__all__ = ["predict_files"]

# An image with no detected face is classified whole when it is small and roughly square,
# i.e. most likely a face crop rather than a scene.
WHOLE_IMAGE_MAX_SIDE = 400
WHOLE_IMAGE_MAX_ASPECT = 2.0


def _champion_classifier(settings: Settings) -> tuple[Any, str]:
    from maskjob.storage.database import database, parse_url
    from maskjob.storage.registry import champion

    url = parse_url(settings.database_url)
    if url.get_backend_name() == "sqlite" and url.database and not Path(url.database).is_file():
        raise MaskjobError(
            f"no database at {url.database} to find the champion model in; "
            "pass --model CHECKPOINT.pt or set database_url"
        )
    with database(settings.database_url) as engine:
        model = champion(engine)
        if model is None:
            raise MaskjobError("no champion model in the registry; run `maskjob promote` or pass --model CHECKPOINT.pt")
        return load_registered(model), model.version


def _looks_like_face_crop(rgb: np.ndarray) -> bool:
    height, width = rgb.shape[:2]
    return max(height, width) <= WHOLE_IMAGE_MAX_SIDE and max(height, width) <= WHOLE_IMAGE_MAX_ASPECT * min(height, width)


def _annotated_path(annotate_dir: Path, source: Path, used: set[str]) -> Path:
    # The copy's name is valid text even when the source's is not (its bad bytes as \xNN).
    source = Path(display_path(source.name) or "image")
    name, n = source.name, 1
    while name in used:
        n += 1
        name = f"{source.stem}-{n}{source.suffix}"
    used.add(name)
    if source.suffix.lower() not in IMAGE_EXTENSIONS:
        name += ".png"
    return annotate_dir / name


def predict_files(
    paths: Sequence[str | Path],
    settings: Settings,
    annotate_dir: str | Path | None = None,
    checkpoint: str | Path | None = None,
) -> list[dict[str, Any]]:
    """Detect and classify faces in image files without writing to the database.

    Args:
        paths: image files.
        settings: detector and pixel limit; ``database_url`` locates the champion.
        annotate_dir: write a copy of each image with boxes, labels and confidences here.
        checkpoint: classify with this checkpoint instead of the registry's champion.

    Returns:
        Per file: ``path``, ``model``, ``mode`` (``detected``; ``whole_image`` when no face
        was found in a small near-square image, classified as one face; ``no_face``;
        ``unreadable``), ``width``, ``height``, ``faces`` (``box``, ``detector_score``,
        ``label``, ``confidence``, ``probs``), ``annotated`` and ``error``.
    """
    from maskjob.ml.checkpoint import load_classifier

    if checkpoint is not None:
        classifier, model_name = load_classifier(Path(checkpoint)), str(checkpoint)
    else:
        classifier, model_name = _champion_classifier(settings)
    detector = create_detector(settings.detector, settings)
    out_dir = output_dir(annotate_dir, "--annotate folder") if annotate_dir is not None else None
    used: set[str] = set()
    results = []
    for raw in paths:
        path = Path(raw)
        result: dict[str, Any] = {"path": display_path(path), "model": model_name, "mode": "unreadable",
                                  "width": None, "height": None, "faces": [], "annotated": None, "error": None}
        results.append(result)
        try:
            # Only regular files are opened; whatever the decoder raises is this file's error.
            rgb = read_rgb(path, settings.max_image_pixels)
        except MaskjobError as exc:
            result["error"] = str(exc)
            continue
        try:
            result.update(_classify_file(rgb, detector, classifier))
        except Exception as exc:  # noqa: BLE001 - one file's failure is that file's result
            result.update(mode="unreadable", faces=[], error=failure_reason(exc))
        if out_dir is not None and result["error"] is None:
            target = _annotated_path(out_dir, path, used)
            result["annotated"] = display_path(_write_annotated(rgb, result["faces"], target))
    return results


def _classify_file(rgb: np.ndarray, detector: FaceDetector, classifier: FaceClassifier) -> dict[str, Any]:
    """``mode``, ``width``, ``height``, ``faces`` and ``error`` of one decoded image."""
    height, width = rgb.shape[:2]
    (found,) = classify_isolating([rgb], detector, classifier)
    if isinstance(found, Exception):
        return {"width": width, "height": height, "error": failure_reason(found)}
    mode = "detected" if found else "no_face"
    if not found and _looks_like_face_crop(rgb):
        found = [(Detection((0, 0, width, height), float("nan")), classifier.predict_proba([rgb])[0])]
        mode = "whole_image"
    faces = []
    for det, probs in found:
        row = face_row(len(faces), det, probs)
        faces.append({
            "box": list(det.box), "detector_score": None if mode == "whole_image" else det.score,
            "label": row["label"], "confidence": row["confidence"],
            "probs": {c: row[f"p_{c}"] for c in CLASSES},
        })
    return {"mode": mode, "width": width, "height": height, "faces": faces, "error": None}


def _write_annotated(rgb: np.ndarray, faces: Sequence[dict[str, Any]], target: Path) -> Path:
    import cv2

    drawn = draw_faces(rgb, [(tuple(f["box"]), f["label"], f["confidence"]) for f in faces])
    if not cv2.imwrite(str(target), cv2.cvtColor(drawn, cv2.COLOR_RGB2BGR)):
        raise MaskjobError(f"cannot write {target}; check that {target.parent} is writable")
    return target
