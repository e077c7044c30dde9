"""The analysts' views on a hand-built database, identical on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, date, datetime

import pytest
import sqlalchemy as sa

from maskjob.storage import database, schema, writes
from maskjob.storage.analyst_queries import QUERIES

D = datetime  # short for the fixture table below

# (path, model, scored_at, status, face labels); insertion order fixes images.id.
SCORINGS = [
    # Rescored by the new model later: the view shows the new model's two masked faces.
    ("cam1/20261124T080000.jpg", "old", D(2026, 11, 25, 1), "ok", ["without_mask"]),
    ("cam1/20261124T080000.jpg", "new", D(2026, 11, 26, 1), "ok", ["with_mask", "with_mask"]),
    # The OLD model scored it last (a backfill): last scoring wins, not the newest model.
    ("cam1/20261124T090000.jpg", "new", D(2026, 11, 25, 1), "ok", ["with_mask"]),
    ("cam1/20261124T090000.jpg", "old", D(2026, 11, 26, 2), "ok", ["with_mask", "partial_mask"]),
    # Same scored_at: the higher id (inserted second) wins.
    ("cam1/20261124T100000.jpg", "old", D(2026, 11, 25, 1), "ok", ["with_mask"]),
    ("cam1/20261124T100000.jpg", "new", D(2026, 11, 25, 1), "ok", ["without_mask"]),
    ("cam1/20261124T110000.jpg", "new", D(2026, 11, 25, 1), "no_face", []),
    ("cam2/20261124T235959.jpg", "new", D(2026, 11, 25, 1), "unreadable", []),
    ("cam2/20261125T003000.jpg", "new", D(2026, 11, 26, 1), "ok", ["without_mask", "with_mask"]),
]

# image_path -> (model_version, status, n_faces, n_with, n_without, n_partial, compliant)
EXPECTED_IMAGES = {
    "cam1/20261124T080000.jpg": ("new", "ok", 2, 2, 0, 0, 1),
    "cam1/20261124T090000.jpg": ("old", "ok", 2, 1, 0, 1, 0),
    "cam1/20261124T100000.jpg": ("new", "ok", 1, 0, 1, 0, 0),
    "cam1/20261124T110000.jpg": ("new", "no_face", 0, 0, 0, 0, None),
    "cam2/20261124T235959.jpg": ("new", "unreadable", 0, 0, 0, 0, None),
    "cam2/20261125T003000.jpg": ("new", "ok", 2, 1, 1, 0, 0),
}

# (day, camera) -> (images, no_face, unreadable, faces, with, without, partial, compliance_rate)
EXPECTED_DAILY = {
    ("2026-11-24", "cam1"): (4, 1, 0, 5, 3, 1, 1, 3 / 5),
    ("2026-11-24", "cam2"): (1, 0, 1, 0, 0, 0, 0, None),
    ("2026-11-25", "cam2"): (1, 0, 0, 2, 1, 1, 0, 1 / 2),
}

# The README's example queries: each must run unchanged on both databases.
WORST_CAMERAS = """
SELECT camera_id, SUM(faces) AS faces, SUM(with_mask) AS with_mask,
       CAST(SUM(with_mask) AS DOUBLE PRECISION) / NULLIF(SUM(faces), 0) AS compliance_rate
FROM daily_compliance
WHERE day >= '2026-11-18' AND day < '2026-11-26'
GROUP BY camera_id
HAVING SUM(faces) > 0
ORDER BY compliance_rate, camera_id
LIMIT 10
"""
VIOLATIONS_ON_A_DAY = """
SELECT camera_id, label, COUNT(*) AS faces
FROM face_predictions
WHERE captured_at >= '2026-11-24' AND captured_at < '2026-11-25' AND label <> 'with_mask'
GROUP BY camera_id, label
ORDER BY faces DESC, camera_id, label
"""
COMPLIANT_FRAME_SHARE = """
SELECT camera_id, COUNT(*) AS frames, COUNT(compliant) AS frames_with_faces,
       SUM(compliant) AS compliant_frames, AVG(compliant) AS compliant_share
FROM image_predictions
GROUP BY camera_id
ORDER BY camera_id
"""
UNREADABLE_BY_REASON = """
SELECT reason, COUNT(*) AS frames FROM image_predictions
WHERE status = 'unreadable' GROUP BY reason ORDER BY frames DESC
"""


def _captured(path: str) -> datetime:
    return datetime.strptime(path.split("/")[1].removesuffix(".jpg"), "%Y%m%dT%H%M%S")


@pytest.fixture
def scored_url(migrated_db_url: str) -> str:
    engine = database.open_database(migrated_db_url)
    try:
        with database.session(engine) as s:
            versions = {name: schema.ModelVersion(
                version=name, arch="cnn", checkpoint_path=f"/m/{name}.pt", checkpoint_sha256=name.ljust(64, "0"),
                metrics={}, created_at=D(2026, 11, 1), status="candidate") for name in ("old", "new")}
            s.add_all(versions.values())
        for path, model, scored_at, status, labels in SCORINGS:
            faces = [{"face_index": i, "x1": 10 * i, "y1": 5, "x2": 10 * i + 50, "y2": 65, "detector_score": 0.95,
                      "label": label, "p_with_mask": 0.7 if label == "with_mask" else 0.1,
                      "p_without_mask": 0.7 if label == "without_mask" else 0.1,
                      "p_partial_mask": 0.7 if label == "partial_mask" else 0.2,
                      "confidence": 0.7} for i, label in enumerate(labels)]
            row = {"path": path, "content_sha256": None, "camera_id": path.split("/")[0],
                   "captured_at": _captured(path), "width": 640, "height": 480, "status": status,
                   "reason": "truncated JPEG" if status == "unreadable" else None, "n_faces": len(labels),
                   "model_version_id": versions[model].id, "scoring_run_id": None, "scored_at": scored_at,
                   "faces": faces}
            with engine.begin() as conn:
                assert writes.insert_images_and_faces(conn, [row]) == 1
    finally:
        engine.dispose()
    return migrated_db_url


def _query(url: str, sql: str | sa.Executable) -> list[sa.Row]:
    engine = database.open_database(url)
    try:
        with engine.connect() as conn:
            return conn.execute(sa.text(sql) if isinstance(sql, str) else sql).all()
    finally:
        engine.dispose()


def test_image_predictions_show_the_last_scoring(scored_url):
    rows = _query(scored_url, "SELECT image_path, model_version, status, n_faces, n_with_mask, n_without_mask, "
                              "n_partial_mask, compliant, camera_id, captured_at FROM image_predictions")
    got = {r.image_path: tuple(r[1:8]) for r in rows}
    assert got == EXPECTED_IMAGES
    for r in rows:  # compliant is the integer 1/0 (or NULL) on both databases
        assert r.compliant is None or type(r.compliant) is int
        assert r.camera_id == r.image_path.split("/")[0]


def test_face_predictions_show_the_last_scoring(scored_url):
    rows = _query(scored_url, "SELECT image_path, camera_id, captured_at, x1, y1, x2, y2, label, confidence, "
                              "model_version, face_index FROM face_predictions ORDER BY image_path, face_index")
    got = [(r.image_path, r.face_index, r.label, r.model_version) for r in rows]
    assert got == [
        ("cam1/20261124T080000.jpg", 0, "with_mask", "new"),
        ("cam1/20261124T080000.jpg", 1, "with_mask", "new"),
        ("cam1/20261124T090000.jpg", 0, "with_mask", "old"),
        ("cam1/20261124T090000.jpg", 1, "partial_mask", "old"),
        ("cam1/20261124T100000.jpg", 0, "without_mask", "new"),
        ("cam2/20261125T003000.jpg", 0, "without_mask", "new"),
        ("cam2/20261125T003000.jpg", 1, "with_mask", "new"),
    ]
    assert (rows[1].x1, rows[1].y1, rows[1].x2, rows[1].y2) == (10, 5, 60, 65)
    assert rows[0].confidence == pytest.approx(0.7)
    fp = schema.face_predictions
    typed = _query(scored_url, sa.select(fp.c.captured_at).order_by(fp.c.image_path, fp.c.face_index).limit(1))
    assert typed[0].captured_at == datetime(2026, 11, 24, 8, tzinfo=UTC)


def test_daily_compliance_aggregates_per_utc_day_and_camera(scored_url):
    rows = _query(scored_url, "SELECT day, camera_id, images, no_face, unreadable, faces, with_mask, without_mask, "
                              "partial_mask, compliance_rate FROM daily_compliance")
    got = {(str(r.day), r.camera_id): tuple(r[2:]) for r in rows}
    assert got.keys() == EXPECTED_DAILY.keys()
    for key, expected in EXPECTED_DAILY.items():
        assert got[key][:-1] == expected[:-1], key
        assert got[key][-1] == (None if expected[-1] is None else pytest.approx(expected[-1])), key
    # Through the typed table, day is a date on both databases, and filters compare as dates.
    typed = _query(scored_url, sa.select(schema.daily_compliance.c.day, schema.daily_compliance.c.faces)
                   .where(schema.daily_compliance.c.day >= date(2026, 11, 25)))
    assert [(r.day, r.faces) for r in typed] == [(date(2026, 11, 25), 2)]


def test_readme_example_queries_run_on_both_databases(scored_url):
    worst = _query(scored_url, WORST_CAMERAS)
    assert [(r.camera_id, r.faces, r.with_mask) for r in worst] == [("cam2", 2, 1), ("cam1", 5, 3)]
    assert worst[0].compliance_rate == pytest.approx(0.5)

    violations = _query(scored_url, VIOLATIONS_ON_A_DAY)
    assert [tuple(r) for r in violations] == [("cam1", "partial_mask", 1), ("cam1", "without_mask", 1)]

    share = _query(scored_url, COMPLIANT_FRAME_SHARE)
    assert [tuple(r[:4]) for r in share] == [("cam1", 4, 3, 1), ("cam2", 2, 1, 0)]
    assert float(share[0].compliant_share) == pytest.approx(1 / 3)

    assert [tuple(r) for r in _query(scored_url, UNREADABLE_BY_REASON)] == [("truncated JPEG", 1)]


def test_views_are_empty_on_an_empty_database(migrated_db_url):
    for name in schema.VIEW_NAMES:
        assert _query(migrated_db_url, f"SELECT COUNT(*) FROM {name}")[0][0] == 0


def test_typed_view_tables_match_the_database_views(migrated_db_url):
    engine = database.make_engine(migrated_db_url)
    try:
        inspector = sa.inspect(engine)
        for table in (schema.face_predictions, schema.image_predictions, schema.daily_compliance):
            assert [c["name"] for c in inspector.get_columns(table.name)] == list(table.c.keys()), table.name
    finally:
        engine.dispose()


def test_the_readme_queries_as_printed_answer_right(scored_url):
    """Each query of the README (analyst_queries.QUERIES) as printed, over its week (11-18 .. 11-24);
    the drill-down names the fixture's camera instead of the README's cam-07."""
    got = {title: [tuple(r) for r in _query(scored_url, sql.replace("'cam-07'", "'cam1'"))]
           for title, sql in QUERIES.items()}
    worst, violations, drill, share, unreadable, promotions = got.values()
    assert [r[:3] for r in worst] == [("cam1", 5, 3)] and worst[0][3] == pytest.approx(3 / 5)
    assert violations == [("cam1", 1, 1)]
    assert [(path, index, label) for path, _, index, label, _ in drill] == [
        ("cam1/20261124T090000.jpg", 1, "partial_mask"), ("cam1/20261124T100000.jpg", 0, "without_mask")]
    assert [r[:4] for r in share] == [("cam1", 4, 3, 1), ("cam2", 1, 0, 0)]
    assert share[0][4] == pytest.approx(1 / 3) and share[1][4] is None
    assert unreadable == [("truncated JPEG", 1)]
    assert promotions == []


def _review(url: str, decisions: list[tuple[str, str, int, str]]) -> None:
    """Record (path, model, face_index, label) decisions through maskjob.storage.reviews."""
    from maskjob.storage import reviews

    engine = database.open_database(url)
    try:
        for path, model, index, label in decisions:
            with engine.connect() as conn:
                face_id = conn.execute(
                    sa.select(schema.Face.id).join(schema.Image).join(schema.ModelVersion, schema.ModelVersion.id
                                                                      == schema.Image.model_version_id)
                    .where(schema.Image.path == path, schema.ModelVersion.version == model,
                           schema.Face.face_index == index)).scalar_one()
            reviews.record_review(engine, face_id, "ana", label)
    finally:
        engine.dispose()


# Reviews of the fixture: one face is not a face, two are corrected, and the superseded
# scoring's face is reviewed too (which the views never show).
REVIEWS = [
    ("cam1/20261124T080000.jpg", "new", 0, "not_a_face"),
    ("cam1/20261124T100000.jpg", "new", 0, "with_mask"),
    ("cam2/20261125T003000.jpg", "new", 1, "partial_mask"),
    ("cam1/20261124T080000.jpg", "old", 0, "with_mask"),
]
# image_path -> EXPECTED_IMAGES' columns, then n_reviewed, n_changed
REVIEWED_IMAGES = {
    **{path: (*values, 0, 0) for path, values in EXPECTED_IMAGES.items()},
    "cam1/20261124T080000.jpg": ("new", "ok", 1, 1, 0, 0, 1, 1, 1),
    "cam1/20261124T100000.jpg": ("new", "ok", 1, 1, 0, 0, 1, 1, 1),
    "cam2/20261125T003000.jpg": ("new", "ok", 2, 0, 1, 1, 0, 1, 1),
}
# (day, camera) -> (images, no_face, unreadable, faces, with, without, partial, compliant frames, reviewed, changed)
REVIEWED_DAILY = {
    ("2026-11-24", "cam1"): (4, 1, 0, 4, 3, 0, 1, 2, 2, 2),
    ("2026-11-24", "cam2"): (1, 0, 1, 0, 0, 0, 0, 0, 0, 0),
    ("2026-11-25", "cam2"): (1, 0, 0, 2, 0, 1, 1, 0, 1, 1),
}


def test_the_views_count_final_labels_after_reviews(scored_url):
    _review(scored_url, REVIEWS)
    rows = _query(scored_url, "SELECT image_path, model_version, status, n_faces, n_with_mask, n_without_mask, "
                              "n_partial_mask, compliant, n_reviewed, n_changed FROM image_predictions")
    assert {r.image_path: tuple(r[1:]) for r in rows} == REVIEWED_IMAGES
    daily = _query(scored_url, "SELECT day, camera_id, images, no_face, unreadable, faces, with_mask, without_mask, "
                               "partial_mask, compliant_frames, reviewed_faces, changed_faces, compliance_rate "
                               "FROM daily_compliance")
    assert {(str(r.day), r.camera_id): tuple(r[2:12]) for r in daily} == REVIEWED_DAILY
    assert {(str(r.day), r.camera_id): r.compliance_rate for r in daily} == {
        ("2026-11-24", "cam1"): pytest.approx(3 / 4), ("2026-11-24", "cam2"): None,
        ("2026-11-25", "cam2"): pytest.approx(0.0)}
    faces = _query(scored_url, "SELECT image_path, face_index, label, reviewed_label, final_label "
                               "FROM face_predictions ORDER BY image_path, face_index")
    assert [tuple(r) for r in faces] == [
        ("cam1/20261124T080000.jpg", 1, "with_mask", None, "with_mask"),
        ("cam1/20261124T090000.jpg", 0, "with_mask", None, "with_mask"),
        ("cam1/20261124T090000.jpg", 1, "partial_mask", None, "partial_mask"),
        ("cam1/20261124T100000.jpg", 0, "without_mask", "with_mask", "with_mask"),
        ("cam2/20261125T003000.jpg", 0, "without_mask", None, "without_mask"),
        ("cam2/20261125T003000.jpg", 1, "with_mask", "partial_mask", "partial_mask"),
    ]
    got = {title: [tuple(r) for r in _query(scored_url, sql.replace("'cam-07'", "'cam1'"))]
           for title, sql in QUERIES.items()}
    worst, violations, _, share, *_ = got.values()
    assert [r[:3] for r in worst] == [("cam1", 4, 3)] and worst[0][3] == pytest.approx(3 / 4)
    assert violations == [("cam1", 0, 1)]
    assert [r[:4] for r in share] == [("cam1", 4, 3, 2), ("cam2", 1, 0, 0)]
