"""Values that do not fit the old schema, on SQLite and PostgreSQL: migration 0003 widens an
existing database in place keeping every row, and the writer stores every row of a batch,
sanitising (and saying so in the reason) what no database can hold."""

from __future__ import annotations

import hashlib
import json
from datetime import datetime, timedelta

import pytest
import sqlalchemy as sa

from maskjob.storage import database, schema, writes

D = datetime
LONG_PATH = "cam1/" + "/".join(f"{i:03d}-" + "abcdefghij" * 12 for i in range(40)) + "/20261124T080000.jpg"
NON_UTF8_PATH = "cam1/caf\udce9-20261124T081000.jpg"  # 'café' in Latin-1, as os.listdir gives it


def _hashable(row: sa.Row) -> tuple:
    return tuple(json.dumps(v, sort_keys=True) if isinstance(v, (dict, list)) else v for v in row)


def _tables(url: str) -> dict[str, set[tuple]]:
    """Every row of every table, as reflected (columns of the revision the database is at)."""
    engine = database.make_engine(url)
    try:
        meta = sa.MetaData()
        meta.reflect(engine)
        with engine.connect() as conn:
            return {name: {_hashable(r) for r in conn.execute(sa.select(table))}
                    for name, table in meta.tables.items() if name != "alembic_version"}
    finally:
        engine.dispose()


def _old_columns(rows: dict[str, set[tuple]], url: str) -> dict[str, set[tuple]]:
    """``rows`` of the upgraded database without the columns 0003 added."""
    added = {"images": {"path_key"}, "scoring_runs": {"heartbeat_at", "lease_s", "pid", "hostname"}}
    engine = database.make_engine(url)
    try:
        meta = sa.MetaData()
        meta.reflect(engine)
    finally:
        engine.dispose()
    out = {}
    for name, table_rows in rows.items():
        keep = [i for i, c in enumerate(meta.tables[name].columns) if c.name not in added.get(name, ())]
        out[name] = {tuple(r[i] for i in keep) for r in table_rows}
    return out


def _fill_at_0002(url: str) -> None:
    """Rows as revision 0002 holds them: widest values it allows, non-ASCII, faces, runs."""
    engine = database.make_engine(url)
    meta = sa.MetaData()
    meta.reflect(engine)
    t = meta.tables
    try:
        with engine.begin() as conn:
            for vid, name in ((1, "old"), (2, "new")):
                conn.execute(t["model_versions"].insert(), {
                    "id": vid, "version": name, "arch": "cnn", "checkpoint_path": f"/m/{name}.pt",
                    "checkpoint_sha256": name.ljust(64, "0"), "dataset_fingerprint": None, "metrics": {},
                    "test_macro_f1": 0.9, "diverged": False, "created_at": D(2026, 11, 1), "status": "candidate"})
            conn.execute(t["scoring_runs"].insert(), [
                {"id": rid, "interval_start": D(2026, 11, 24), "interval_end": D(2026, 11, 25), "shard_index": 0,
                 "shard_count": 1, "model_version_id": rid, "started_at": D(2026, 11, 25, 2),
                 "finished_at": D(2026, 11, 25, 3), "n_frames": 12, "n_faces": 8, "n_no_face": 2, "n_unreadable": 1,
                 "n_skipped": 0, "status": status, "error": None}
                for rid, status in ((1, "succeeded"), (2, "running"))])
            images, faces = [], []
            for i in range(24):
                vid = 1 + i % 2
                path = f"cäm{i % 3}/20261124T{i:02d}0000.jpg"
                if i == 5:  # as long as 0002 allows
                    path = (f"cäm{i % 3}/" + "€" * 1000)[:1021] + f"{i:03d}"
                camera = "k" * 128 if i == 7 else f"cäm{i % 3}"
                status = ("ok", "no_face", "unreadable")[i % 3]
                images.append({"id": 100 + i, "path": path, "content_sha256": f"{i:064x}", "camera_id": camera,
                               "captured_at": D(2026, 11, 24, i % 24), "width": 640, "height": 480, "status": status,
                               "reason": "truncated JPEG" if status == "unreadable" else None,
                               "n_faces": 2 if status == "ok" else 0, "model_version_id": vid,
                               "scoring_run_id": vid, "scored_at": D(2026, 11, 25, 2) + timedelta(minutes=i)})
                if status == "ok":
                    faces += [{"id": 1000 + 2 * i + k, "image_id": 100 + i, "face_index": k, "x1": k, "y1": 2,
                               "x2": 50 + k, "y2": 60, "detector_score": 0.9, "label": ("with_mask", "partial_mask")[k],
                               "p_with_mask": 0.6, "p_without_mask": 0.1, "p_partial_mask": 0.3, "confidence": 0.6,
                               "model_version_id": vid} for k in range(2)]
            conn.execute(t["images"].insert(), images)
            conn.execute(t["faces"].insert(), faces)
    finally:
        engine.dispose()


def _views(url: str) -> dict[str, set[tuple]]:
    engine = database.make_engine(url)
    try:
        with engine.connect() as conn:
            return {name: {tuple(r) for r in conn.execute(sa.text(f"SELECT * FROM {name}"))} for name in schema.VIEW_NAMES}
    finally:
        engine.dispose()


def test_upgrade_from_0002_keeps_every_row(db_url):
    assert database.upgrade(db_url, "0002") == "0002"
    _fill_at_0002(db_url)
    before, views_before = _tables(db_url), _views(db_url)
    assert (len(before["images"]), len(before["faces"]), len(before["scoring_runs"])) == (24, 16, 2)

    assert database.upgrade(db_url, "0003") == "0003"
    after = _tables(db_url)
    assert _old_columns(after, db_url) == before  # every row, every value, every id
    assert _views(db_url) == views_before
    assert database.upgrade(db_url) == database.SCHEMA_REVISION
    engine = database.open_database(db_url)
    try:
        with engine.connect() as conn:
            keys = conn.execute(sa.select(schema.Image.path, schema.Image.path_key)).all()
            runs = conn.execute(sa.select(schema.ScoringRun.heartbeat_at, schema.ScoringRun.pid)).all()
        assert len(keys) == 24 and all(key == schema.path_key(path) for path, key in keys)  # SQL = Python
        assert runs == [(None, None), (None, None)]
        # The rebuilt images table still cascades to faces, and takes what 0002 could not.
        with engine.begin() as conn:
            conn.execute(sa.delete(schema.Image).where(schema.Image.id == 100))
            assert writes.insert_images_and_faces(conn, [_row(LONG_PATH, 1, camera="c" * 300)]) == 1
        with engine.connect() as conn:
            assert conn.scalar(sa.select(sa.func.count()).select_from(schema.Face)) == 16 - 2 + 1
            assert conn.scalar(sa.select(schema.Image.camera_id).where(schema.Image.path == LONG_PATH)) == "c" * 300
    finally:
        engine.dispose()

    # Down again: refused while a row is too long for 0002, then back to 0002 with the rest intact.
    with pytest.raises(Exception, match="cannot downgrade below 0003: 1 image rows"):
        database.downgrade(db_url, "0002")
    engine = database.open_database(db_url)
    with engine.begin() as conn:
        conn.execute(sa.delete(schema.Image).where(schema.Image.path == LONG_PATH))
        conn.execute(sa.insert(schema.Image), {k: v for k, v in _row("cäm0/20261124T000000.jpg", 1).items()
                                               if k != "faces"} | {"id": 100})
    engine.dispose()
    assert database.downgrade(db_url, "0002") == "0002"
    down = _tables(db_url)
    assert {r for r in down["images"] if r[0] != 100} == {r for r in before["images"] if r[0] != 100}
    assert len(down["faces"]) == 14 and down["scoring_runs"] == before["scoring_runs"]


def _row(path: str, version_id: int, *, camera: str = "cam1", reason: str | None = None, n_faces: int = 1,
         **extra) -> dict:
    return {
        "path": path, "content_sha256": "ab" * 32, "camera_id": camera, "captured_at": D(2026, 11, 24, 8),
        "width": 640, "height": 480, "status": "ok" if n_faces else "no_face", "reason": reason,
        "n_faces": n_faces, "model_version_id": version_id, "scoring_run_id": None, "scored_at": D(2026, 11, 25),
        "faces": [{"face_index": i, "x1": 10, "y1": 20, "x2": 110, "y2": 140, "detector_score": 0.9,
                   "label": "with_mask", "p_with_mask": 0.8, "p_without_mask": 0.1, "p_partial_mask": 0.1,
                   "confidence": 0.8} for i in range(n_faces)],
        **extra,
    }


@pytest.fixture
def engine(migrated_db_url):
    engine = database.open_database(migrated_db_url)
    with engine.begin() as conn:
        conn.execute(sa.insert(schema.ModelVersion), {
            "version": "cnn-1", "arch": "cnn", "checkpoint_path": "/m/cnn-1.pt", "checkpoint_sha256": "c" * 64,
            "metrics": {}, "diverged": False, "created_at": D(2026, 11, 1), "status": "candidate"})
    yield engine
    engine.dispose()


def _stored(engine) -> dict[str, sa.Row]:
    with engine.connect() as conn:
        rows = conn.execute(sa.select(schema.Image.path_key, schema.Image)).all()
    return {r.path_key: r for r in rows}


def _n_faces(engine) -> int:
    with engine.connect() as conn:
        return conn.scalar(sa.select(sa.func.count()).select_from(schema.Face))


def test_hostile_values_never_fail_a_batch(engine):
    hostile = {
        "long path": _row(LONG_PATH, 1),                                             # 5,024 characters
        "5000-char path": _row("cam2/" + "é" * 4995, 1),                             # 10,000 UTF-8 bytes
        "300-char camera": _row("c300/a.jpg", 1, camera="c" * 300),
        "emoji": _row("📷 gate 🚪/20261124T080000 😷.jpg", 1, camera="📷 gate 🚪"),
        "NUL in path": _row("cam1/a\x00b.jpg", 1),
        "NUL in camera and reason": _row("cam1/nul-reason.jpg", 1, camera="ca\x00m", reason="bad\x00 header", n_faces=0),
        "non-UTF-8 name": _row(NON_UTF8_PATH, 1),
        "its look-alike": _row("cam1/caf\\xe9-20261124T081000.jpg", 1),           # a real file named so
        "huge camera": _row("huge/a.jpg", 1, camera="€" * 1000),                     # 3,000 bytes: shortened
        "bad digest": _row("cam1/digest.jpg", 1, content_sha256="not a digest" * 10),
        "huge reason": _row("cam1/reason.jpg", 1, reason="x" * 100_000, n_faces=0),
    }
    good = [_row(f"cam1/good-{i}.jpg", 1, n_faces=i % 3) for i in range(5)]
    batch = good[:2] + list(hostile.values()) + good[2:]
    with engine.begin() as conn:
        assert writes.insert_images_and_faces(conn, batch) == len(batch) == 16
    with engine.begin() as conn:  # a rerun finds every row by its key: nothing twice
        assert writes.insert_images_and_faces(conn, batch) == 0
    stored = _stored(engine)
    assert len(stored) == 16 and _n_faces(engine) == sum(len(r["faces"]) for r in batch)

    def get(name: str) -> sa.Row:
        return stored[schema.path_key(hostile[name]["path"])]

    for name in ("long path", "5000-char path", "300-char camera", "emoji"):  # stored as they are
        row = get(name)
        assert (row.path, row.camera_id, row.reason) == (hostile[name]["path"], hostile[name]["camera_id"], None)
    for row in good:
        assert stored[schema.path_key(row["path"])].n_faces == row["n_faces"]

    nul = get("NUL in path")
    assert nul.path == "cam1/a\\x00b.jpg" and nul.reason == "stored with changes: path: 1 NUL byte written as \\x00"
    both = get("NUL in camera and reason")
    assert (both.camera_id, both.reason) == ("ca\\x00m", "bad\\x00 header; stored with changes: camera_id: 1 NUL "
                                                         "byte written as \\x00")
    latin = get("non-UTF-8 name")
    assert latin.path == "cam1/caf\\xe9-20261124T081000.jpg" and "bytes that are not UTF-8" in latin.reason
    look_alike = get("its look-alike")  # same stored text, its own key: two files, two rows
    assert look_alike.path == latin.path and look_alike.path_key != latin.path_key and look_alike.reason is None
    huge = get("huge camera")
    assert len(huge.camera_id.encode()) <= writes.MAX_INDEXED_TEXT_BYTES and huge.camera_id.startswith("€" * 600)
    assert "camera_id shortened from 1000 characters" in huge.reason
    assert get("bad digest").content_sha256 is None and "not a sha256 hex digest" in get("bad digest").reason
    assert len(get("huge reason").reason) < writes.MAX_REASON_CHARS + 50

    # The analysts' views show them all.
    with engine.connect() as conn:
        assert conn.scalar(sa.select(sa.func.count()).select_from(schema.image_predictions)) == 16
        assert conn.scalar(sa.select(sa.func.count()).select_from(schema.image_predictions).where(
            schema.image_predictions.c.image_path == LONG_PATH)) == 1


def test_a_row_the_database_refuses_is_kept_as_unreadable(engine):
    bad_width = _row("cam1/bad-width.jpg", 1, width=2**70)        # neither database takes a 71-bit integer
    bad_face = _row("cam1/bad-face.jpg", 1, n_faces=2)
    bad_face["faces"][1]["label"] = "sunglasses"                  # the faces check constraint refuses it
    good = [_row(f"cam1/good-{i}.jpg", 1, n_faces=1) for i in range(3)]
    with engine.begin() as conn:
        stored = writes.insert_scored_images(conn, [good[0], bad_width, good[1], bad_face, good[2]])
    assert [r["path"] for r in stored] == [r["path"] for r in (good[0], bad_width, good[1], bad_face, good[2])]
    rows = _stored(engine)
    assert len(rows) == 5 and _n_faces(engine) == 3  # the good rows' faces; none of the refused rows'
    for bad in (bad_width, bad_face):
        row = rows[schema.path_key(bad["path"])]
        assert (row.status, row.n_faces, row.width) == ("unreadable", 0, None)
        assert row.reason.startswith("could not be stored as scored (")
    assert all(rows[schema.path_key(g["path"])].status == "ok" for g in good)


def test_a_batch_fails_as_a_whole_when_the_fault_is_not_a_row(engine):
    with pytest.raises(sa.exc.IntegrityError):  # no such model version: no row can be stored
        with engine.begin() as conn:
            writes.insert_images_and_faces(conn, [_row("cam1/a.jpg", 1), _row("cam1/b.jpg", 999)])
    assert _stored(engine) == {}


def test_storable_text_and_path_key():
    assert writes.storable_text("plain/é😷.jpg") == ("plain/é😷.jpg", None)
    assert writes.storable_text("a\x00\x00b") == ("a\\x00\\x00b", "2 NUL bytes written as \\x00")
    assert writes.storable_text("caf\udce9")[0] == "caf\\xe9"
    assert writes.storable_text("lone \ud800 surrogate")[0] == "lone \\xed\\xa0\\x80 surrogate"
    assert schema.path_key("cam1/é.jpg") == hashlib.sha256("cam1/é.jpg".encode()).hexdigest()
    assert schema.path_key("caf\udce9") == hashlib.sha256(b"caf\xe9").hexdigest()
