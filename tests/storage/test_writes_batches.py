"""The batched write path on SQLite and PostgreSQL: two INSERTs per batch (SQLite: per page of
rows), ids in the batch's order, rows that leave columns out, a key twice in one batch."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from typing import Any, Iterator

import pytest
import sqlalchemy as sa

from maskjob.storage import database, schema, writes
from tests.storage.test_derived import assert_derived_state

SCORED = datetime(2026, 11, 25, 1, tzinfo=UTC)


@pytest.fixture
def engine(migrated_db_url: str) -> Iterator[sa.Engine]:
    engine = database.open_database(migrated_db_url)
    with engine.begin() as conn:
        conn.execute(sa.insert(schema.ModelVersion), {
            "id": 1, "version": "v1", "arch": "cnn", "checkpoint_path": "/m/v1.pt", "checkpoint_sha256": "a" * 64,
            "metrics": {}, "diverged": False, "created_at": SCORED, "status": "champion"})
    try:
        yield engine
    finally:
        engine.dispose()


def _frame(i: int, n_faces: int, **extra: Any) -> dict[str, Any]:
    labels = ("with_mask", "without_mask", "partial_mask")
    faces = [{"face_index": k, "x1": k, "y1": 1, "x2": k + 30, "y2": 40, "detector_score": 0.9,
              "label": labels[(i + k) % 3], "p_with_mask": 0.5, "p_without_mask": 0.3, "p_partial_mask": 0.2,
              "confidence": 0.5} for k in range(n_faces)]
    return {"path": f"cam{i % 3}/{i:06d}.jpg", "content_sha256": f"{i:064x}", "camera_id": f"cam{i % 3}",
            "captured_at": datetime(2026, 11, 24, tzinfo=UTC) + timedelta(seconds=i), "timezone": "Europe/Paris",
            "width": 640, "height": 480, "status": "ok" if n_faces else "no_face", "reason": None,
            "model_version_id": 1, "scoring_run_id": None, "scored_at": SCORED, "faces": faces, **extra}


def _inserts(engine: sa.Engine) -> list[str]:
    """A list that collects the INSERT statements ``engine`` sends from now on."""
    sent: list[str] = []

    @sa.event.listens_for(engine, "before_cursor_execute")
    def _seen(conn: Any, cursor: Any, statement: str, *_: Any) -> None:
        if statement.lstrip().upper().startswith("INSERT"):
            sent.append(statement)

    return sent


@pytest.mark.parametrize("n_frames", [1, 16, 3000])
def test_a_batch_is_two_inserts_and_keeps_its_order(engine, n_frames):
    rows = [_frame(i, i % 4) for i in range(n_frames)]
    sent = _inserts(engine)
    with engine.begin() as conn:
        stored = writes.insert_scored_images(conn, rows)
    # On SQLite, SQLAlchemy sends a long batch's images in pages (each under SQLite's bound-parameter
    # limit, 32766 in stock builds); PostgreSQL binds one array per column, whatever the length.
    page = n_frames if engine.dialect.name == "postgresql" else engine.dialect.insertmanyvalues_page_size
    pages = math.ceil(n_frames / page)
    assert [s.split("(")[0].split()[-1] for s in sent] == ["images"] * pages + ["faces"] * (1 if n_frames > 1 else 0)
    assert [r["path"] for r in stored] == [r["path"] for r in rows]
    ids = [r["id"] for r in stored]
    assert ids == sorted(ids) and len(set(ids)) == n_frames
    with engine.connect() as conn:
        in_db = dict(conn.execute(sa.select(schema.Image.id, schema.Image.path)).all())
        faces = conn.execute(sa.select(schema.Face.image_id, sa.func.count()).group_by(schema.Face.image_id)).all()
    assert in_db == {r["id"]: r["path"] for r in stored}
    assert dict(faces) == {r["id"]: len(r["faces"]) for r in stored if r["faces"]}
    if n_frames <= 16:
        assert_derived_state(engine)


def test_rows_that_leave_columns_out_get_defaults_and_keep_their_order(engine):
    full = _frame(0, 2)
    sparse = {k: v for k, v in _frame(1, 1).items() if k not in ("content_sha256", "width", "height", "timezone")}
    rows = [full, sparse, _frame(2, 0), dict(sparse, path="cam1/x.jpg")]
    with engine.begin() as conn:
        stored = writes.insert_scored_images(conn, rows)
    assert [r["path"] for r in stored] == [r["path"] for r in rows]
    assert [r["id"] for r in stored] == sorted(r["id"] for r in stored)
    with engine.connect() as conn:
        got = {r.path: r for r in conn.execute(sa.select(schema.Image))}
    assert (got[sparse["path"]].timezone, got[sparse["path"]].width, got[sparse["path"]].content_sha256) == (
        "UTC", None, None)
    assert got[full["path"]].timezone == "Europe/Paris"
    assert (got["cam1/x.jpg"].n_faces, got["cam1/x.jpg"].local_day.isoformat()) == (1, "2026-11-24")
    assert_derived_state(engine)


def test_a_key_twice_in_one_batch_stores_and_returns_its_first_row(engine):
    first, second = _frame(5, 1), _frame(5, 3, reason="second")
    with engine.begin() as conn:
        stored = writes.insert_scored_images(conn, [first, second, _frame(6, 2)])
    assert [(r["path"], len(r["faces"]), r["reason"]) for r in stored] == [
        (first["path"], 1, None), (_frame(6, 2)["path"], 2, None)]
    with engine.connect() as conn:
        n_faces = dict(conn.execute(sa.select(schema.Image.path, schema.Image.n_faces)).all())
        faces = conn.scalar(sa.select(sa.func.count()).select_from(schema.Face))
    assert (n_faces, faces) == ({first["path"]: 1, _frame(6, 2)["path"]: 2}, 3)
    with engine.begin() as conn:  # a rerun of the batch writes nothing
        assert writes.insert_images_and_faces(conn, [first, second, _frame(6, 2)]) == 0
