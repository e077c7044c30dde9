"""Migration 0007 on a populated 0006 database, on SQLite and PostgreSQL: every row kept with its
values, the new counts at 0 and no face reviewed, the views' rows unchanged; reviews at 0007
change the counts, and down to 0006 puts the model's counts back on every table and view
(the reviews go); up again gives the same state."""

from __future__ import annotations

from typing import Any

import pytest
import sqlalchemy as sa

from maskjob.config import load_settings
from maskjob.storage import database, reviews, schema
from tests.storage.test_derived import assert_derived_state
from tests.storage.test_upgrade_0005 import _columns, _fill_0004, _tables, _views

REVISION = "0006"
# latest_scorings and hourly_counts as 0006 has them.
DERIVED_0006 = {
    "latest_scorings": ("path_key", "image_id", "model_version_id", "camera_id", "captured_at", "scored_at", "timezone",
                        "local_day", "hour_utc", "status", "n_faces", "n_with_mask", "n_without_mask",
                        "n_partial_mask", "top_violation_confidence", "min_confidence", "max_confidence"),
    "hourly_counts": ("hour_utc", "camera_id", "local_day", "timezone", "model_version_id", "images", "ok",
                      "no_face", "unreadable", "faces", "with_mask", "without_mask", "partial_mask", "compliant"),
}
NEW_COLUMNS = {
    "images": {"n_reviewed", "n_changed", "n_not_face"},
    "faces": {"reviewed_label", "review_id"},
}
# (path, model version id, face index, label): a correction, a confirmation, a not_a_face that
# empties its frame, and a review of a superseded scoring.
DECISIONS = [
    ("cam1/20261124T090000.jpg", 1, 1, "without_mask"),
    ("cam2/20261125T003000.jpg", 2, 0, "without_mask"),
    ("cam3/20261124T033000.jpg", 2, 0, "not_a_face"),
    ("cam1/20261124T080000.jpg", 1, 0, "with_mask"),
]


def _derived(url: str) -> dict[str, set[tuple[Any, ...]]]:
    """latest_scorings and hourly_counts (0006's columns; hourly rows with images), as the driver returns them."""
    with database.engine_for(url) as engine, engine.connect() as conn:
        where = {"latest_scorings": "", "hourly_counts": " WHERE images > 0"}
        return {table: set(conn.exec_driver_sql(f"SELECT {', '.join(columns)} FROM {table}{where[table]}").all())
                for table, columns in DERIVED_0006.items()}


def _review(url: str) -> list[int]:
    with database.database(url) as engine:
        ids = []
        for path, version_id, index, label in DECISIONS:
            with engine.connect() as conn:
                face_id = conn.execute(sa.select(schema.Face.id).join(schema.Image).where(
                    schema.Image.path == path, schema.Image.model_version_id == version_id,
                    schema.Face.face_index == index)).scalar_one()
            ids.append(reviews.record_review(engine, face_id, "ana", label))
        assert_derived_state(engine)
        return ids


@pytest.mark.timeout(180)
def test_upgrade_from_0006_keeps_rows_and_downgrade_restores_the_model_counts(db_url, tmp_path):
    settings = load_settings(overrides={"data_dir": tmp_path, "site_timezone": "UTC"}, environ={})
    assert database.upgrade(db_url, "0004", settings=settings) == "0004"
    _fill_0004(db_url)
    assert database.upgrade(db_url, REVISION, settings=settings) == REVISION
    old_columns = _columns(db_url)
    before, views_before, derived_before = _tables(db_url), _views(db_url), _derived(db_url)
    assert sum(views_before["face_predictions"].values()) == 11

    assert database.upgrade(db_url, settings=settings) == database.head_revision() == "0007"
    columns = _columns(db_url)
    assert {t: set(columns[t]) - set(old_columns[t]) for t in NEW_COLUMNS} == NEW_COLUMNS
    assert _tables(db_url, old_columns) == before
    assert _views(db_url) == views_before
    assert _derived(db_url) == derived_before
    with database.database(db_url) as engine:
        with engine.connect() as conn:
            assert conn.execute(sa.text("SELECT SUM(n_reviewed), SUM(n_changed), SUM(n_not_face) FROM images")).one() \
                == (0, 0, 0)
            assert conn.execute(sa.text("SELECT COUNT(*) FROM faces WHERE reviewed_label IS NOT NULL "
                                        "OR review_id IS NOT NULL")).scalar() == 0
            assert conn.execute(sa.text("SELECT SUM(reviewed), SUM(changed), SUM(not_face) "
                                        "FROM hourly_counts")).one() == (0, 0, 0)
        assert_derived_state(engine)

    _review(db_url)
    assert _views(db_url) != views_before
    with database.database(db_url) as engine, engine.connect() as conn:
        emptied = conn.execute(sa.text("SELECT status, n_faces FROM image_predictions "
                                       "WHERE image_path = 'cam3/20261124T033000.jpg'")).one()
    assert tuple(emptied) == ("no_face", 0)

    # Down to 0006: the reviews go, and every table, view and derived row is the model's again.
    assert database.downgrade(db_url, REVISION) == REVISION
    assert _columns(db_url) == old_columns
    assert _tables(db_url) == before
    assert _views(db_url) == views_before
    assert _derived(db_url) == derived_before
    assert database.upgrade(db_url, settings=settings) == database.head_revision()
    assert _tables(db_url, old_columns) == before
    assert _views(db_url) == views_before
    assert _derived(db_url) == derived_before
    with database.database(db_url) as engine:
        assert_derived_state(engine)
    _review(db_url)  # the schema takes reviews again
