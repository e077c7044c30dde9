"""Migration 0006 on SQLite and PostgreSQL: each frame's confidence extremes
(``top_violation_confidence``, ``min_confidence``, ``max_confidence``) are written with its faces, copied into
``latest_scorings`` by the triggers through rescorings and deletes, filled in place for rows
an older revision wrote, and dropped again by the downgrade."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any, Sequence

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session

from maskjob.storage import database, derived, schema
from tests.storage.test_derived import _row, _versions, _write, assert_derived_state

EXTREMES = ("top_violation_confidence", "min_confidence", "max_confidence")
T = datetime(2026, 11, 25, 1, tzinfo=UTC)


def _scored(path: str, version: int, scored_at: datetime, faces: Sequence[tuple[str, float]]) -> dict[str, Any]:
    row = _row(path, version, scored_at, [label for label, _ in faces])
    for face, (_, confidence) in zip(row["faces"], faces):
        face["confidence"] = confidence
    return row


def _extremes(conn: sa.Connection, table: str) -> dict[str, tuple[float | None, ...]]:
    """Per path, the extremes of its latest scoring as ``table`` (images or latest_scorings) holds them."""
    alias = "i" if table == "images" else "ls"
    return {path: tuple(values) for path, *values in conn.exec_driver_sql(
        f"SELECT i.path, {alias}.top_violation_confidence, {alias}.min_confidence, {alias}.max_confidence "
        "FROM latest_scorings AS ls JOIN images AS i ON i.id = ls.image_id")}


def _approx(values: dict[str, tuple[float | None, ...]]) -> dict[str, tuple[Any, ...]]:
    return {k: tuple(None if v is None else pytest.approx(v) for v in pair) for k, pair in values.items()}


def test_writer_fills_the_extremes_and_latest_scorings_copies_them(engine):
    v = _versions(engine, ("m1", "m2"))
    _write(engine, [
        _scored("cam1/a.jpg", v["m1"], T, [("with_mask", 0.9), ("without_mask", 0.7), ("partial_mask", 0.8)]),
        _scored("cam1/b.jpg", v["m1"], T, [("with_mask", 0.55), ("with_mask", 0.95)]),  # no violation
        _scored("cam1/c.jpg", v["m1"], T, []),  # no face
    ])
    expected = {"cam1/a.jpg": (0.8, 0.7, 0.9), "cam1/b.jpg": (None, 0.55, 0.95), "cam1/c.jpg": (None, None, None)}
    with engine.connect() as conn:
        assert _extremes(conn, "images") == _approx(expected)
        assert _extremes(conn, "latest_scorings") == _approx(expected)
    # A newer scoring of a.jpg replaces its row; deleting it brings the older values back.
    _write(engine, [_scored("cam1/a.jpg", v["m2"], T + timedelta(hours=1), [("with_mask", 0.99)])])
    with engine.connect() as conn:
        assert _extremes(conn, "latest_scorings")["cam1/a.jpg"] == (None, pytest.approx(0.99), pytest.approx(0.99))
    with engine.begin() as conn:
        newer = conn.execute(sa.select(schema.Image.id).where(schema.Image.model_version_id == v["m2"])).scalar_one()
        conn.execute(sa.delete(schema.Face).where(schema.Face.image_id == newer))
        conn.execute(sa.delete(schema.Image).where(schema.Image.id == newer))
    with engine.connect() as conn:
        assert _extremes(conn, "latest_scorings") == _approx(expected)
    assert_derived_state(engine)


def test_an_update_of_the_extremes_reaches_latest_scorings(engine):
    v = _versions(engine, ("m1",))
    (row,) = _write(engine, [_scored("cam1/a.jpg", v["m1"], T, [("without_mask", 0.6)])])
    with engine.begin() as conn:
        conn.execute(sa.update(schema.Image).where(schema.Image.id == row["id"]).values(min_confidence=0.1))
    with engine.connect() as conn:
        assert _extremes(conn, "latest_scorings")["cam1/a.jpg"] == _approx({"x": (0.6, 0.1, 0.6)})["x"]


def test_orm_images_with_faces_get_the_extremes(engine):
    v = _versions(engine, ("m1",))
    row = _scored("cam1/orm.jpg", v["m1"], T, [("partial_mask", 0.65), ("with_mask", 0.6)])
    faces = [schema.Face(model_version_id=v["m1"], **face) for face in row.pop("faces")]
    with Session(engine) as session, session.begin():
        image = schema.Image(path_key=schema.path_key(row["path"]), local_day=T.date(), utc_offset_s=0,
                             **{k: val for k, val in row.items() if k != "timezone"}, timezone="UTC", faces=faces)
        session.add(image)
    with engine.connect() as conn:
        assert _extremes(conn, "images")["cam1/orm.jpg"] == _approx({"x": (0.65, 0.6, 0.65)})["x"]


def test_rebuild_after_a_bulk_load_fills_the_extremes(engine):
    v = _versions(engine, ("m1",))
    _write(engine, [_scored("cam1/a.jpg", v["m1"], T, [("without_mask", 0.9), ("with_mask", 0.5)])])
    with engine.begin() as conn, derived.triggers_disabled(conn):
        conn.execute(sa.update(schema.Image).values(dict.fromkeys(EXTREMES)))
        assert derived.fill_confidence_extremes(conn) == 1
        derived.rebuild(conn)
    with engine.connect() as conn:
        assert _extremes(conn, "latest_scorings") == _approx({"cam1/a.jpg": (0.9, 0.5, 0.9)})


# 0005's images and faces, written as that revision's writer wrote them (no extremes).
_IMAGE_COLUMNS = ("id", "path", "path_key", "camera_id", "status", "n_faces", "n_with_mask", "n_without_mask",
                  "n_partial_mask", "model_version_id", "timezone", "utc_offset_s")
_images_0005 = sa.table("images", *(sa.column(c) for c in _IMAGE_COLUMNS), sa.column("local_day", sa.Date),
                        sa.column("captured_at", schema.UtcDateTime), sa.column("scored_at", schema.UtcDateTime))
_FACE_COLUMNS = ("image_id", "face_index", "x1", "y1", "x2", "y2", "detector_score", "label", "p_with_mask",
                 "p_without_mask", "p_partial_mask", "confidence", "model_version_id")
_faces_0005 = sa.table("faces", *(sa.column(c) for c in _FACE_COLUMNS))

# path -> [(model, scored hour, faces)]: b.jpg rescored later by the second model.
FRAMES = {
    "cam1/a.jpg": [(0, 1, [("without_mask", 0.81), ("with_mask", 0.4)])],
    "cam1/b.jpg": [(0, 1, [("partial_mask", 0.7)]), (1, 2, [("with_mask", 0.97), ("with_mask", 0.93)])],
    "cam2/c.jpg": [(0, 1, [])],
}


def test_upgrade_from_0005_fills_the_extremes_in_place_and_downgrade_drops_them(db_url):
    database.upgrade(db_url, "0005")
    engine = database.make_engine(db_url)  # open_database refuses a schema behind head
    try:
        v = _versions(engine, ("m1", "m2"))
        models = [v["m1"], v["m2"]]
        with engine.begin() as conn:
            image_id = 0
            for path, scorings in FRAMES.items():
                for model, hour, faces in scorings:
                    image_id += 1
                    labels = [label for label, _ in faces]
                    conn.execute(sa.insert(_images_0005).values(
                        id=image_id, path=path, path_key=schema.path_key(path), camera_id=path.split("/")[0],
                        status="ok" if faces else "no_face", n_faces=len(faces),
                        **{f"n_{c}": labels.count(c) for c in ("with_mask", "without_mask", "partial_mask")},
                        model_version_id=models[model], timezone="UTC", utc_offset_s=0, local_day=T.date(),
                        captured_at=datetime(2026, 11, 24, 8, tzinfo=UTC), scored_at=T + timedelta(hours=hour)))
                    for k, (label, confidence) in enumerate(faces):
                        conn.execute(sa.insert(_faces_0005).values(
                            image_id=image_id, face_index=k, x1=0, y1=0, x2=10, y2=10, detector_score=0.9,
                            label=label, p_with_mask=0.3, p_without_mask=0.3, p_partial_mask=0.4,
                            confidence=confidence, model_version_id=models[model]))
            before = conn.exec_driver_sql("SELECT path_key, image_id, n_faces FROM latest_scorings "
                                          "ORDER BY path_key").all()
        engine.dispose()
        assert database.upgrade(db_url) == database.head_revision()
        engine = database.open_database(db_url)
        with engine.connect() as conn:
            after = conn.exec_driver_sql("SELECT path_key, image_id, n_faces FROM latest_scorings "
                                         "ORDER BY path_key").all()
            assert after == before
            assert conn.exec_driver_sql("SELECT COUNT(*) FROM images").scalar() == 4
            assert conn.exec_driver_sql("SELECT COUNT(*) FROM faces").scalar() == 5
            by_id = {i: tuple(values) for i, *values in conn.exec_driver_sql(
                "SELECT id, top_violation_confidence, min_confidence, max_confidence FROM images")}
            assert _extremes(conn, "latest_scorings") == _approx(
                {"cam1/a.jpg": (0.81, 0.4, 0.81), "cam1/b.jpg": (None, 0.93, 0.97), "cam2/c.jpg": (None, None, None)})
        # The superseded scoring of b.jpg got its own extremes too.
        assert by_id[2] == _approx({"x": (0.7, 0.7, 0.7)})["x"]
        assert_derived_state(engine)
        engine.dispose()
        assert database.downgrade(db_url, "0005") == "0005"
        engine = database.make_engine(db_url)
        with engine.connect() as conn:
            columns = {c["name"] for c in sa.inspect(conn).get_columns("latest_scorings")}
            assert not columns & set(EXTREMES)
            assert conn.exec_driver_sql("SELECT COUNT(*) FROM faces").scalar() == 5
            assert conn.exec_driver_sql("SELECT path_key, image_id, n_faces FROM latest_scorings "
                                        "ORDER BY path_key").all() == before
        engine.dispose()
        assert database.upgrade(db_url) == database.head_revision()
        engine = database.open_database(db_url)
        with engine.connect() as conn:
            assert _extremes(conn, "latest_scorings")["cam1/a.jpg"] == _approx({"x": (0.81, 0.4, 0.81)})["x"]
    finally:
        engine.dispose()
