"""The analysts' views as migration 0004 defined them (a window over every image): the
reference that the derived tables of 0005 must reproduce, row for row. Since 0007 the reference
reads each face's final label (its review's where it has one) and leaves ``not_a_face`` faces
out, as the views do; without reviews that is 0004's SQL unchanged."""

from __future__ import annotations

import importlib.util
from collections import Counter
from datetime import UTC, datetime
from decimal import Decimal
from functools import cache
from types import ModuleType
from typing import Any

import sqlalchemy as sa

from maskjob.resources import migrations_dir

VIEW_COLUMNS = {
    "face_predictions": ("image_id", "image_path", "camera_id", "captured_at", "face_index", "x1", "y1", "x2", "y2",
                         "detector_score", "label", "p_with_mask", "p_without_mask", "p_partial_mask", "confidence",
                         "model_version", "scored_at", "captured_local", "timezone", "local_day"),
    "image_predictions": ("image_id", "image_path", "camera_id", "captured_at", "status", "reason", "width",
                          "height", "n_faces", "n_with_mask", "n_without_mask", "n_partial_mask", "compliant",
                          "model_version", "scored_at", "captured_local", "timezone", "local_day"),
    "daily_compliance": ("day", "camera_id", "images", "no_face", "unreadable", "faces", "with_mask", "without_mask",
                         "partial_mask", "compliance_rate", "timezone"),
}

# The columns 0007 adds to the views, read there and checked against faces and hourly sums.
REVIEW_VIEW_COLUMNS = {
    "face_predictions": ("image_id", "face_index", "face_id", "reviewed_label", "final_label"),
    "image_predictions": ("image_id", "n_reviewed", "n_changed"),
    "daily_compliance": ("day", "camera_id", "reviewed_faces", "changed_faces"),
}

WINDOW_LATEST = """
SELECT id, path_key, model_version_id, camera_id, captured_at, scored_at, timezone, local_day, status,
       n_faces, n_with_mask, n_without_mask, n_partial_mask, n_reviewed, n_changed, n_not_face
FROM (SELECT i.*, ROW_NUMBER() OVER (PARTITION BY path_key ORDER BY scored_at DESC, id DESC) AS rank_
      FROM images AS i) AS r
WHERE rank_ = 1
"""


@cache
def _m0004() -> ModuleType:
    path = migrations_dir() / "versions" / "0004_local_time_and_cameras.py"
    spec = importlib.util.spec_from_file_location("maskjob_migration_0004_reference", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_FINAL = "COALESCE(reviewed_label, label)"
# faces as the views count them: final labels, not_a_face left out.
_FINAL_FACES = f"(SELECT image_id, {_FINAL} AS label FROM faces WHERE {_FINAL} <> 'not_a_face') AS faces"
# faces as face_predictions shows them: the model's label, not_a_face left out.
_SHOWN_FACES = f"(SELECT * FROM faces WHERE {_FINAL} <> 'not_a_face') AS f"


def _body(sql: str) -> str:
    head, _, body = sql.partition(" AS\n")
    assert head.strip().startswith("CREATE VIEW"), head
    return body


def reference_sql(view: str, dialect: str) -> str:
    """A SELECT giving what ``view`` showed under migration 0004, for the same tables, over final labels."""
    m = _m0004()
    local = m.LOCAL_COLUMNS.format(captured_local=m.CAPTURED_LOCAL[dialect])
    images = _body(m.IMAGE_PREDICTIONS.replace(m.LOCAL_COLUMNS, local))
    assert images.count("FROM faces\n") == 1
    images = images.replace("FROM faces\n", f"FROM {_FINAL_FACES}\n")
    if view == "image_predictions":
        return images
    if view == "face_predictions":
        faces = _body(m.FACE_PREDICTIONS.replace(m.LOCAL_COLUMNS, local))
        assert faces.count("JOIN faces AS f ") == 1
        return faces.replace("JOIN faces AS f ", f"JOIN {_SHOWN_FACES} ")
    assert view == "daily_compliance"
    daily = _body(m.DAILY_COMPLIANCE)
    assert daily.count("FROM image_predictions") == 1
    return daily.replace("FROM image_predictions", f"FROM ({images}) AS image_predictions")


def normalised(value: Any) -> Any:
    """A value as comparable across the two SQL forms (PostgreSQL numeric sums, SQLite text times)."""
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, datetime):
        return value.astimezone(UTC) if value.tzinfo else value
    return value


def rows_of(conn: sa.Connection, sql: str, columns: tuple[str, ...]) -> Counter[tuple[Any, ...]]:
    """The rows of ``sql`` (a view name or a SELECT), as a multiset of normalised tuples."""
    source = sql if " " not in sql.strip() else f"({sql}) AS q"
    query = f"SELECT {', '.join(columns)} FROM {source}"
    return Counter(tuple(normalised(v) for v in row) for row in conn.exec_driver_sql(query))


_REVIEWED = "COUNT(f.reviewed_label)"
_CHANGED = "COUNT(CASE WHEN f.reviewed_label <> f.label THEN 1 END)"
_LATEST_FACES = "FROM latest_scorings AS ls LEFT JOIN faces AS f ON f.image_id = ls.image_id"
_REVIEW_REFERENCE = {
    "face_predictions": f"SELECT image_id, face_index, id AS face_id, reviewed_label, {_FINAL} AS final_label "
                        f"FROM faces WHERE {_FINAL} <> 'not_a_face' "
                        "AND image_id IN (SELECT image_id FROM latest_scorings)",
    "image_predictions": f"SELECT ls.image_id, {_REVIEWED} AS n_reviewed, {_CHANGED} AS n_changed "
                         f"{_LATEST_FACES} GROUP BY ls.image_id",
    "daily_compliance": f"SELECT ls.local_day AS day, ls.camera_id, {_REVIEWED} AS reviewed_faces, "
                        f"{_CHANGED} AS changed_faces {_LATEST_FACES} GROUP BY ls.local_day, ls.camera_id",
}


def assert_views_match_reference(conn: sa.Connection) -> None:
    """Every view shows exactly the rows that 0004's window-function SQL gives over final
    labels, and 0007's columns as the faces give them."""
    for view, columns in VIEW_COLUMNS.items():
        got = rows_of(conn, view, columns)
        expected = rows_of(conn, reference_sql(view, conn.dialect.name), columns)
        assert got == expected, (view, got - expected, expected - got)
    compliant = rows_of(conn, f"SELECT local_day, camera_id, COALESCE(SUM(compliant), 0) AS c FROM "
                              f"({reference_sql('image_predictions', conn.dialect.name)}) AS ip "
                              "GROUP BY local_day, camera_id", ("local_day", "camera_id", "c"))
    got = rows_of(conn, "daily_compliance", ("day", "camera_id", "compliant_frames"))
    assert got == compliant
    for view, columns in REVIEW_VIEW_COLUMNS.items():
        got = rows_of(conn, view, columns)
        expected = rows_of(conn, _REVIEW_REFERENCE[view], columns)
        assert got == expected, (view, got - expected, expected - got)
