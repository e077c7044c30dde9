"""Label Studio JSON: export the queue as tasks, annotate them as Label Studio would, import
them back as reviews (idempotently), re-export with annotations; bad tasks are listed."""

from __future__ import annotations

import copy
import json

import pytest
import sqlalchemy as sa

from maskjob.cli import main
from maskjob.review.labelstudio import BOX_FROM, LABEL_CONFIG, LABEL_FROM, export_tasks, import_tasks, read_tasks
from maskjob.storage import schema
from maskjob.vocab import REVIEW_LABELS
from tests.review.test_export import BOX, FRAME_H, FRAME_W, build_site


@pytest.fixture
def site(db_url, settings_factory, tmp_path):
    built = build_site(db_url, settings_factory, tmp_path, cameras=("gate", "hall"), days=2, faces_per_day=2)
    yield built
    built.engine.dispose()


def _annotate(task: dict, label: str, **extra) -> dict:
    """What Label Studio exports once a person labelled the task: the regions as an annotation."""
    done = copy.deepcopy(task)
    result = copy.deepcopy(task["predictions"][0]["result"])
    for region in result:
        if region["type"] == "choices":
            region["value"]["choices"] = [label]
    done["annotations"] = [{"id": 1, "result": result, "was_cancelled": False,
                            "updated_at": "2026-12-01T10:00:00Z", **extra}]
    return done


def _reviewed(site) -> dict[int, str | None]:
    with site.engine.connect() as conn:
        return dict(conn.execute(sa.select(schema.Face.id, schema.Face.reviewed_label)).all())


def test_round_trip(site, tmp_path):
    tasks = export_tasks(site.engine, site.settings, queue_limit=100, image_url_prefix="https://ls.example/f/")
    assert len(tasks) == len(site.faces) and all("annotations" not in t for t in tasks)
    first = tasks[0]
    assert first["data"]["image"] == "https://ls.example/f/" + first["data"]["image_path"]
    assert first["data"]["maskjob_stratum"] == "uncertain"
    prediction = first["predictions"][0]
    assert prediction["score"] == pytest.approx(0.6)
    box, choice = prediction["result"]
    assert (box["type"], box["from_name"], choice["type"], choice["from_name"]) == (
        "rectanglelabels", BOX_FROM, "choices", LABEL_FROM)
    assert box["id"] == choice["id"] and choice["value"]["choices"] == ["with_mask"]
    assert (box["original_width"], box["original_height"]) == (FRAME_W, FRAME_H)
    assert box["value"]["x"] == pytest.approx(100 * BOX[0] / FRAME_W)
    assert box["value"]["width"] == pytest.approx(100 * (BOX[2] - BOX[0]) / FRAME_W)
    assert box["value"]["height"] == pytest.approx(100 * (BOX[3] - BOX[1]) / FRAME_H)
    assert all(f'<Choice value="{label}"/>' in LABEL_CONFIG for label in REVIEW_LABELS)

    labels = ["without_mask", "partial_mask", "not_a_face", "with_mask"] * len(tasks)
    annotated = [_annotate(t, labels[i]) for i, t in enumerate(tasks)]
    annotated[-1]["annotations"][0]["was_cancelled"] = True  # skipped in Label Studio: no decision
    path = tmp_path / "ls-export.json"
    path.write_text(json.dumps(annotated))
    result = import_tasks(site.engine, read_tasks(path), "ls-team")
    assert (result.recorded, result.unchanged, result.unlabelled, result.bad) == (len(tasks) - 1, 0, 1, [])
    reviewed = _reviewed(site)
    for i, task in enumerate(annotated[:-1]):
        assert reviewed[task["data"]["maskjob_face_id"]] == labels[i]
    assert reviewed[annotated[-1]["data"]["maskjob_face_id"]] is None

    again = import_tasks(site.engine, read_tasks(path), "ls-team")
    assert (again.recorded, again.unchanged) == (0, len(tasks) - 1)

    # Reviewed faces come back with their review as the annotation (not_a_face faces are not exported).
    back = export_tasks(site.engine, site.settings, queue_limit=0)
    by_face = {t["data"]["maskjob_face_id"]: t for t in back}
    expected = {t["data"]["maskjob_face_id"]: labels[i] for i, t in enumerate(annotated[:-1])
                if labels[i] != "not_a_face"}
    assert set(by_face) == set(expected)
    for face_id, label in expected.items():
        annotation = by_face[face_id]["annotations"][0]
        assert [r["value"]["choices"] for r in annotation["result"] if r["type"] == "choices"] == [[label]]
        assert by_face[face_id]["data"]["maskjob_reviewer"] == "ls-team"
        assert by_face[face_id]["predictions"][0]["model_version"] == "cnn-0001"


def test_bad_tasks_are_listed_and_the_rest_imported(site):
    tasks = export_tasks(site.engine, site.settings, queue_limit=3)
    good = _annotate(tasks[0], "without_mask")
    two = _annotate(tasks[1], "with_mask")
    two["annotations"][0]["result"].append({"type": "choices", "value": {"choices": ["partial_mask"]}})
    unknown = _annotate(tasks[2], "sunglasses")
    gone = _annotate(tasks[0], "with_mask")
    gone["data"]["maskjob_face_id"] = 999_999
    foreign = {"id": 77, "data": {"image": "x.jpg"}, "annotations": [{"result": []}]}
    result = import_tasks(site.engine, [foreign, two, "junk", good, unknown, gone], "ana")
    assert result.recorded == 1
    reasons = {str(b["task"]): b["reason"] for b in result.bad}
    assert "no maskjob_face_id" in reasons["77"]
    assert any("exactly one label, has partial_mask, with_mask" in r for r in reasons.values())
    assert "not a Label Studio task" in reasons["#3"]
    assert any("sunglasses" in r for r in reasons.values())
    assert any("no face with id 999999" in r for r in reasons.values())
    assert _reviewed(site)[good["data"]["maskjob_face_id"]] == "without_mask"
    with pytest.raises(Exception, match="needs --reviewer"):
        import_tasks(site.engine, [good], " ")


def test_cli_round_trip(site, db_url, tmp_path, capsys):
    out = tmp_path / "tasks.json"
    flags = ["--database-url", db_url]
    assert main(["corrections", "export-labelstudio", str(out), "--queue", "2", *flags]) == 0
    assert "2 Label Studio tasks" in capsys.readouterr().out
    tasks = json.loads(out.read_text())
    out.write_text(json.dumps([_annotate(t, "partial_mask") for t in tasks]))
    assert main(["corrections", "import-labelstudio", str(out), "--reviewer", "ana", *flags]) == 0
    assert "reviews recorded 2" in capsys.readouterr().out
    (tmp_path / "broken.json").write_text("{not json")
    assert main(["corrections", "import-labelstudio", str(tmp_path / "broken.json"), "--reviewer", "ana", *flags]) == 2
    assert "is not JSON" in capsys.readouterr().err
