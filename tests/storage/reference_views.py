"""The analysts' views as migration 0004 defined them (a window over every image): the
reference that the derived tables of 0005 must reproduce, row for row."""

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

WINDOW_LATEST = """
SELECT id, path_key, model_version_id, camera_id, captured_at, scored_at, timezone, local_day, status,
       n_faces, n_with_mask, n_without_mask, n_partial_mask
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


def _body(sql: str) -> str:
    head, _, body = sql.partition(" AS\n")
    assert head.strip().startswith("CREATE VIEW"), head
    return body


def reference_sql(view: str, dialect: str) -> str:
    """A SELECT giving what ``view`` showed under migration 0004, for the same tables."""
    m = _m0004()
    local = m.LOCAL_COLUMNS.format(captured_local=m.CAPTURED_LOCAL[dialect])
    images = _body(m.IMAGE_PREDICTIONS.replace(m.LOCAL_COLUMNS, local))
    if view == "image_predictions":
        return images
    if view == "face_predictions":
        return _body(m.FACE_PREDICTIONS.replace(m.LOCAL_COLUMNS, local))
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


def assert_views_match_0004(conn: sa.Connection) -> None:
    """Every view shows exactly the rows that 0004's window-function SQL gives."""
    for view, columns in VIEW_COLUMNS.items():
        got = rows_of(conn, view, columns)
        expected = rows_of(conn, reference_sql(view, conn.dialect.name), columns)
        assert got == expected, (view, got - expected, expected - got)
    compliant = rows_of(conn, f"SELECT local_day, camera_id, COALESCE(SUM(compliant), 0) AS c FROM "
                              f"({reference_sql('image_predictions', conn.dialect.name)}) AS ip "
                              "GROUP BY local_day, camera_id", ("local_day", "camera_id", "c"))
    got = rows_of(conn, "daily_compliance", ("day", "camera_id", "compliant_frames"))
    assert got == compliant
