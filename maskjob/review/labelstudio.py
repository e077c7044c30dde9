"""Label Studio JSON: faces out as labelling tasks, annotations back in as reviews.

For teams that already label in Label Studio. The files follow its documented JSON task
format (a list of tasks, each with ``data`` and ``predictions``/``annotations`` whose
``result`` holds regions): one task per face, whose ``data.image`` is the frame's URL and
whose one region is a ``rectanglelabels`` box in percent of the image size (``x``, ``y``,
``width``, ``height`` with ``original_width``/``original_height``) plus a per-region
``choices`` result (same region id) with the label. A face from the review queue carries the
model's label as a prediction (``score`` its confidence); a reviewed face also carries its
review as an annotation (who and when in ``data.maskjob_reviewer``/``maskjob_reviewed_at``). The project's labelling config is :data:`LABEL_CONFIG`.

Import reads each task's latest annotation that was not cancelled and records its label with
:func:`maskjob.storage.reviews.record_review` (the latest review wins; history is kept). A
face whose live review already has that label is left alone, so importing a file twice
records nothing new. Tasks that cannot be used are listed with the reason; the rest go on.

Example:
    >>> tasks = export_tasks(engine, settings, queue_limit=200)             # doctest: +SKIP
    >>> write_tasks(Path("faces.json"), tasks)                              # doctest: +SKIP
    >>> import_tasks(engine, read_tasks(Path("export.json")), "ana").recorded  # doctest: +SKIP
    37
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Iterable, Sequence
from urllib.parse import quote

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from maskjob.config import Settings
from maskjob.errors import MaskjobError
from maskjob.imageio import display_path, write_text
from maskjob.storage.reviews import record_review, review_queue, reviews_for_export
from maskjob.storage.schema import REVIEW_STRATA, Face, Image, ModelVersion
from maskjob.vocab import REVIEW_LABELS

__all__ = [
    "BOX_FROM", "DEFAULT_IMAGE_URL_PREFIX", "IMAGE_TO", "LABEL_CONFIG", "LABEL_FROM", "ImportResult", "export_tasks",
    "import_tasks", "read_tasks", "write_tasks",
]

logger = logging.getLogger(__name__)

BOX_FROM = "face"  # the RectangleLabels control
LABEL_FROM = "label"  # the per-region Choices control
IMAGE_TO = "image"
BOX_LABEL = "face"
# Label Studio serves files of a local storage at this path (the inbox, mounted there).
DEFAULT_IMAGE_URL_PREFIX = "/data/local-files/?d="
LABEL_CONFIG = (
    f'<View>\n  <Image name="{IMAGE_TO}" value="$image"/>\n'
    f'  <RectangleLabels name="{BOX_FROM}" toName="{IMAGE_TO}"><Label value="{BOX_LABEL}"/></RectangleLabels>\n'
    f'  <Choices name="{LABEL_FROM}" toName="{IMAGE_TO}" perRegion="true" required="true">\n'
    + "".join(f'    <Choice value="{label}"/>\n' for label in REVIEW_LABELS)
    + "  </Choices>\n</View>\n"
)
_CHUNK = 500


@dataclass(frozen=True)
class _Face:
    face_id: int
    image_path: str
    camera_id: str
    captured_at: datetime
    box: tuple[int, int, int, int]
    width: int
    height: int
    stratum: str


def _region(face: _Face, label: str) -> list[dict[str, Any]]:
    x1, y1, x2, y2 = face.box
    w, h = face.width, face.height
    geometry = {"x": 100.0 * x1 / w, "y": 100.0 * y1 / h, "width": 100.0 * (x2 - x1) / w,
                "height": 100.0 * (y2 - y1) / h, "rotation": 0}
    common = {"id": f"face-{face.face_id}", "to_name": IMAGE_TO, "original_width": w, "original_height": h,
              "image_rotation": 0}
    return [
        {**common, "from_name": BOX_FROM, "type": "rectanglelabels", "value": {**geometry, "rectanglelabels": [BOX_LABEL]}},
        {**common, "from_name": LABEL_FROM, "type": "choices", "value": {**geometry, "choices": [label]}},
    ]


def _task(face: _Face, prefix: str, model_version: str, model_label: str, confidence: float,
          review: tuple[str, str, datetime] | None = None) -> dict[str, Any]:
    task: dict[str, Any] = {
        "data": {"image": prefix + quote(face.image_path), "image_path": face.image_path,
                 "camera_id": face.camera_id, "captured_at": face.captured_at.isoformat(),
                 "maskjob_face_id": face.face_id, "maskjob_stratum": face.stratum},
        "predictions": [{"model_version": model_version, "score": float(confidence),
                         "result": _region(face, model_label)}],
    }
    if review is not None:
        label, reviewer, reviewed_at = review
        task["data"].update(maskjob_reviewer=reviewer, maskjob_reviewed_at=reviewed_at.isoformat())
        task["annotations"] = [{"result": _region(face, label), "was_cancelled": False, "ground_truth": False}]
    return task


def _lookup(engine: Engine, ids: Iterable[int], *columns: Any) -> dict[int, Any]:
    """``{id: row}`` for the rows of ``columns``' table whose id is in ``ids`` (chunked bind parameters)."""
    wanted = sorted(set(ids))
    table_id = columns[0]
    found: dict[int, Any] = {}
    with engine.connect() as conn:
        for start in range(0, len(wanted), _CHUNK):
            rows = conn.execute(sa.select(*columns).where(table_id.in_(wanted[start:start + _CHUNK])))
            found.update({row[0]: row for row in rows})
    return found


def export_tasks(engine: Engine, settings: Settings, *, queue_limit: int = 500, reviewed: bool = True,
                 image_url_prefix: str = DEFAULT_IMAGE_URL_PREFIX) -> list[dict[str, Any]]:
    """Label Studio tasks: up to ``queue_limit`` faces of the review queue (in its order), then,
    with ``reviewed``, every reviewed face (its latest live review as the annotation).

    Args:
        image_url_prefix: put before the frame's inbox path (URL-quoted) to make ``data.image``.

    Returns:
        The tasks, JSON-serialisable. A face whose frame size is unknown is left out (logged).
    """
    tasks: list[dict[str, Any]] = []
    skipped = 0
    for item in review_queue(engine, settings, limit=queue_limit) if queue_limit > 0 else []:
        if not item.image_width or not item.image_height:
            skipped += 1
            continue
        face = _Face(item.face_id, item.image_path, item.camera_id, item.captured_at,
                     (item.x1, item.y1, item.x2, item.y2), item.image_width, item.image_height, item.stratum)
        tasks.append(_task(face, image_url_prefix, item.model_version, item.label, item.confidence))
    if reviewed:
        records = [r for r in reviews_for_export(engine) if r.face_id is not None and r.image_id is not None]
        sizes = _lookup(engine, (r.image_id for r in records), Image.id, Image.width, Image.height)
        versions = _lookup(engine, (r.model_version_id for r in records), ModelVersion.id, ModelVersion.version)
        for r in records:
            size = sizes.get(r.image_id)
            if size is None or not size.width or not size.height:
                skipped += 1
                continue
            face = _Face(r.face_id, r.image_path, r.camera_id, r.captured_at, (r.x1, r.y1, r.x2, r.y2),
                         size.width, size.height, r.stratum)
            version = versions[r.model_version_id].version if r.model_version_id in versions else str(r.model_version_id)
            tasks.append(_task(face, image_url_prefix, version, r.model_label, r.model_confidence,
                               (r.label, r.reviewer, r.reviewed_at)))
    if skipped:
        logger.warning("%d face(s) left out of the Label Studio tasks: their frame size is not recorded", skipped)
    return tasks


def write_tasks(path: str | Path, tasks: Sequence[dict[str, Any]]) -> Path:
    """Write tasks as a Label Studio JSON file; returns its path.

    Raises:
        MaskjobError: the file cannot be written.
    """
    out = Path(path).expanduser()
    return write_text(out, json.dumps(list(tasks), indent=1, ensure_ascii=False) + "\n", "Label Studio tasks file")


def read_tasks(path: str | Path) -> list[Any]:
    """The tasks of a Label Studio JSON export (a list of tasks; one task object is taken as one).

    Raises:
        MaskjobError: the file is missing, unreadable or not JSON.
    """
    source = Path(path).expanduser()
    try:
        loaded = json.loads(source.read_text(encoding="utf-8"))
    except OSError as exc:
        raise MaskjobError(f"cannot read {display_path(source)} ({exc.strerror or exc}); "
                           "pass the JSON file Label Studio exported") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise MaskjobError(f"{display_path(source)} is not JSON ({exc}); export the project from "
                           "Label Studio as JSON") from None
    return loaded if isinstance(loaded, list) else [loaded]


@dataclass
class ImportResult:
    """What :func:`import_tasks` did; ``bad`` lists ``{"task", "reason"}`` (task: its id or position)."""

    recorded: int = 0
    unchanged: int = 0
    unlabelled: int = 0
    bad: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"recorded": self.recorded, "unchanged": self.unchanged, "unlabelled": self.unlabelled,
                "bad": self.bad}

    def format_text(self) -> str:
        lines = [f"reviews recorded {self.recorded}, already so {self.unchanged}, without annotation "
                 f"{self.unlabelled}, not usable {len(self.bad)}"]
        lines += [f"  task {b['task']}: {b['reason']}" for b in self.bad]
        return "\n".join(lines)


def _latest_annotation(task: dict[str, Any]) -> dict[str, Any] | None:
    annotations = [a for a in task.get("annotations") or [] if isinstance(a, dict) and not a.get("was_cancelled")]
    if not annotations:
        return None
    ranked = sorted(enumerate(annotations), key=lambda p: (str(p[1].get("updated_at") or p[1].get("created_at") or ""),
                                                          p[0]))
    return ranked[-1][1]


def _labels(annotation: dict[str, Any]) -> set[str]:
    """The labels an annotation gives: its choices, and box labels that are review labels."""
    found: set[str] = set()
    for result in annotation.get("result") or []:
        value = result.get("value") if isinstance(result, dict) else None
        if not isinstance(value, dict):
            continue
        if result.get("type") == "choices":
            found |= {str(c) for c in value.get("choices") or []}
        elif result.get("type") == "rectanglelabels":
            found |= {str(c) for c in value.get("rectanglelabels") or [] if c in REVIEW_LABELS}
    return found


def _decision(task: Any) -> tuple[int, str, str] | str | None:
    """``(face id, label, stratum)``, ``None`` without annotation, or why the task is unusable."""
    data = task.get("data") if isinstance(task, dict) else None
    if not isinstance(data, dict):
        return "not a Label Studio task (no data object)"
    face_id = data.get("maskjob_face_id")
    if isinstance(face_id, bool) or not isinstance(face_id, int):
        return "no maskjob_face_id in its data: only tasks exported by `maskjob corrections export-labelstudio` import"
    annotation = _latest_annotation(task)
    if annotation is None:
        return None
    labels = _labels(annotation)
    if len(labels) != 1:
        shown = ", ".join(sorted(labels)) or "none"
        return f"its latest annotation needs exactly one label, has {shown}; use one of {', '.join(REVIEW_LABELS)}"
    (label,) = labels
    if label not in REVIEW_LABELS:
        return f"unknown label {label!r}; use one of {', '.join(REVIEW_LABELS)}"
    stratum = data.get("maskjob_stratum")
    return face_id, label, stratum if stratum in REVIEW_STRATA else "other"


def import_tasks(engine: Engine, tasks: Sequence[Any], reviewer: str, *, now: datetime | None = None) -> ImportResult:
    """Record the label of each task's latest annotation as ``reviewer``'s review of its face.

    Args:
        tasks: Label Studio tasks (:func:`read_tasks`) exported by :func:`export_tasks`.
        reviewer: the name the reviews are recorded under.
        now: the review time (default: now).

    Returns:
        Counts of recorded, unchanged (already reviewed so) and unannotated tasks, and the
        unusable ones with their reason.

    Raises:
        MaskjobError: no reviewer.
    """
    if not reviewer or not reviewer.strip():
        raise MaskjobError("importing Label Studio annotations needs --reviewer NAME (who the reviews are recorded as)")
    result = ImportResult()
    decided: list[tuple[Any, int, str, str]] = []
    for position, task in enumerate(tasks):
        name = task.get("id", f"#{position + 1}") if isinstance(task, dict) else f"#{position + 1}"
        outcome = _decision(task)
        if outcome is None:
            result.unlabelled += 1
        elif isinstance(outcome, str):
            result.bad.append({"task": name, "reason": outcome})
        else:
            decided.append((name, *outcome))
    current = _lookup(engine, (face_id for _, face_id, _, _ in decided), Face.id, Face.reviewed_label)
    for name, face_id, label, stratum in decided:
        if face_id in current and current[face_id].reviewed_label == label:
            result.unchanged += 1
            continue
        try:
            record_review(engine, face_id, reviewer, label, note=f"Label Studio task {name}", stratum=stratum, now=now)
        except MaskjobError as exc:
            result.bad.append({"task": name, "reason": str(exc)})
            continue
        result.recorded += 1
    logger.info("Label Studio import: %s", result.format_text())
    return result
