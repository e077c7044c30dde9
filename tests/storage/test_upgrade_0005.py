"""Migration 0005 on a populated 0004 database, on SQLite and PostgreSQL: every row kept with
its values, per-label counts from the faces, latest_scorings and hourly_counts as 0004's window
gives them, the views' rows unchanged; down to 0004 and up again keeps it all."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import sqlalchemy as sa

from maskjob.config import load_settings
from maskjob.storage import database, schema, writes
from tests.storage.reference_views import VIEW_COLUMNS, rows_of
from tests.storage.test_derived import assert_derived_state
from tests.storage.test_views import EXPECTED_IMAGES, SCORINGS

REVISION = "0004"
ZONES = {"cam1": "UTC", "cam2": "Europe/Paris", "cam3": "America/Chicago"}
UTC_TIME = schema.UtcDateTime()

# 0004's tables as they stood (no per-label counts on images).
_versions = sa.table("model_versions", *(sa.column(c) for c in ("id", "version", "arch", "checkpoint_path",
                                                                "checkpoint_sha256", "diverged", "status",
                                                                "test_macro_f1", "decision_reason")),
                     sa.column("metrics", sa.JSON), sa.column("created_at", UTC_TIME),
                     sa.column("promoted_at", UTC_TIME))
_decisions = sa.table("promotion_decisions", *(sa.column(c) for c in ("id", "candidate_id", "champion_before_id",
                                                                      "promoted", "candidate_macro_f1",
                                                                      "champion_macro_f1", "reason")),
                      sa.column("decided_at", UTC_TIME))
_runs = sa.table("scoring_runs", *(sa.column(c) for c in ("id", "shard_index", "shard_count", "model_version_id",
                                                          "n_frames", "n_faces", "n_no_face", "n_unreadable",
                                                          "n_skipped", "status", "error", "lease_s", "pid",
                                                          "hostname")),
                 *(sa.column(c, UTC_TIME) for c in ("interval_start", "interval_end", "started_at", "finished_at",
                                                    "heartbeat_at")))
_cameras = sa.table("cameras", *(sa.column(c) for c in ("camera_id", "display_name", "site", "timezone",
                                                        "expected_frames_per_hour", "compliance_target",
                                                        "auto_registered")),
                    sa.column("created_at", UTC_TIME), sa.column("updated_at", UTC_TIME))
_images = sa.table("images", *(sa.column(c) for c in ("id", "path", "path_key", "content_sha256", "camera_id",
                                                      "width", "height", "status", "reason", "n_faces",
                                                      "model_version_id", "scoring_run_id", "timezone",
                                                      "utc_offset_s", "local_day")),
                   sa.column("captured_at", UTC_TIME), sa.column("scored_at", UTC_TIME))
_faces = sa.table("faces", *(sa.column(c) for c in ("id", "image_id", "face_index", "x1", "y1", "x2", "y2",
                                                    "detector_score", "label", "p_with_mask", "p_without_mask",
                                                    "p_partial_mask", "confidence", "model_version_id")))

D = datetime
# Beyond test_views' SCORINGS (all cam1/cam2): camera-local days that differ from the UTC day
# (Chicago is UTC-6, Paris UTC+1 in November), a third camera, and (path, model, scored_at,
# status, labels, captured_at UTC).
EXTRA = [
    ("cam3/20261124T033000.jpg", "old", D(2026, 11, 25, 3), "ok", ["with_mask", "with_mask", "with_mask"],
     D(2026, 11, 24, 3, 30)),  # local 2026-11-23 21:30
    ("cam3/20261124T033000.jpg", "new", D(2026, 11, 25, 3), "ok", ["partial_mask"],
     D(2026, 11, 24, 3, 30)),  # the same scored_at: the higher id counts
    ("cam3/20261124T150000.jpg", "new", D(2026, 11, 25, 4), "unreadable", [], D(2026, 11, 24, 15)),
    ("cam2/20261124T233000.jpg", "old", D(2026, 11, 25, 5), "ok", ["partial_mask", "without_mask"],
     D(2026, 11, 24, 23, 30)),  # local 2026-11-25 00:30
    ("cam2/20261124T233000.jpg", "new", D(2026, 11, 25, 4), "no_face", [], D(2026, 11, 24, 23, 30)),
    ("cam1/20261123T120000.jpg", "new", D(2026, 11, 24, 1), "ok", ["with_mask"], D(2026, 11, 23, 12)),
]
# A row whose n_faces disagrees with its faces (0004's views counted faces, never n_faces).
STALE_PATH = "cam1/20261123T120000.jpg"
STALE_N_FACES = 4

# path -> (model, status, n_faces, n_with, n_without, n_partial, compliant) of the scoring that counts.
EXPECTED_EXTRA = {
    "cam3/20261124T033000.jpg": ("new", "ok", 1, 0, 0, 1, 0),
    "cam3/20261124T150000.jpg": ("new", "unreadable", 0, 0, 0, 0, None),
    "cam2/20261124T233000.jpg": ("old", "ok", 2, 0, 1, 1, 0),
    STALE_PATH: ("new", "ok", 1, 1, 0, 0, 1),
}
EXPECTED_LOCAL_DAYS = {"cam3/20261124T033000.jpg": date(2026, 11, 23), "cam2/20261124T233000.jpg": date(2026, 11, 25),
                       "cam2/20261125T003000.jpg": date(2026, 11, 25)}

TABLES = ("model_versions", "promotion_decisions", "scoring_runs", "cameras", "images", "faces")
IDS = ("model_versions", "promotion_decisions", "scoring_runs", "images", "faces")


def _captured(path: str) -> datetime:
    return datetime.strptime(path.split("/")[1].removesuffix(".jpg"), "%Y%m%dT%H%M%S").replace(tzinfo=UTC)


def _scorings() -> list[tuple[str, str, datetime, str, list[str], datetime]]:
    base = [(path, model, scored.replace(tzinfo=UTC), status, labels, _captured(path))
            for path, model, scored, status, labels in SCORINGS]
    return base + [(p, m, s.replace(tzinfo=UTC), st, labels, c.replace(tzinfo=UTC)) for p, m, s, st, labels, c in EXTRA]


def _fill_0004(url: str) -> None:
    """0004's rows, written as 0004's schema holds them (ids given, so insertion order fixes ties)."""
    created = D(2026, 11, 1, 8, tzinfo=UTC)
    engine = database.make_engine(url)
    try:
        with engine.begin() as conn:
            conn.execute(sa.insert(_versions), [
                {"id": 1, "version": "old", "arch": "cnn", "checkpoint_path": "/m/old.pt",
                 "checkpoint_sha256": "a" * 64, "metrics": {"macro_f1": 0.81, "per_class": {"with_mask": 0.9}},
                 "diverged": False, "status": "retired", "test_macro_f1": 0.81, "decision_reason": "replaced",
                 "created_at": created, "promoted_at": created + timedelta(hours=1)},
                {"id": 2, "version": "new", "arch": "mobilenet_v2", "checkpoint_path": "/m/new.pt",
                 "checkpoint_sha256": "b" * 64, "metrics": {"macro_f1": 0.875, "per_class": {"with_mask": 0.95}},
                 "diverged": False, "status": "champion", "test_macro_f1": 0.875, "decision_reason": None,
                 "created_at": created + timedelta(days=1), "promoted_at": created + timedelta(days=1, hours=2)}])
            conn.execute(sa.insert(_decisions).values(
                id=1, candidate_id=2, champion_before_id=1, promoted=True, candidate_macro_f1=0.875,
                champion_macro_f1=0.81, reason="macro-F1 +0.065", decided_at=created + timedelta(days=1, hours=2)))
            conn.execute(sa.insert(_runs), [
                {"id": run_id, "shard_index": 0, "shard_count": 1, "model_version_id": run_id, "n_frames": 9,
                 "n_faces": 11, "n_no_face": 2, "n_unreadable": 2, "n_skipped": 0,
                 "status": "succeeded" if run_id == 1 else "failed", "error": None if run_id == 1 else "disk full",
                 "lease_s": 600.0, "pid": 4242, "hostname": "scorer-1",
                 "interval_start": D(2026, 11, 24, tzinfo=UTC), "interval_end": D(2026, 11, 25, tzinfo=UTC),
                 "started_at": D(2026, 11, 25, run_id, tzinfo=UTC),
                 "finished_at": D(2026, 11, 25, run_id, 30, tzinfo=UTC),
                 "heartbeat_at": D(2026, 11, 25, run_id, 29, tzinfo=UTC)} for run_id in (1, 2)])
            conn.execute(sa.insert(_cameras), [
                {"camera_id": camera, "display_name": f"Camera {camera[-1]}", "site": "depot", "timezone": tz,
                 "expected_frames_per_hour": 60.0 if camera != "cam3" else None, "compliance_target": 0.9,
                 "auto_registered": camera == "cam3", "created_at": created, "updated_at": created}
                for camera, tz in ZONES.items()])
            face_id = 0
            for image_id, (path, model, scored_at, status, labels, captured) in enumerate(_scorings(), start=1):
                camera = path.split("/")[0]
                local = captured.astimezone(ZoneInfo(ZONES[camera]))
                version_id = 1 if model == "old" else 2
                conn.execute(sa.insert(_images).values(
                    id=image_id, path=path, path_key=schema.path_key(path),
                    content_sha256=None if status == "unreadable" else f"{image_id:064x}", camera_id=camera,
                    width=None if status == "unreadable" else 640, height=None if status == "unreadable" else 480,
                    status=status, reason="truncated JPEG" if status == "unreadable" else None,
                    n_faces=STALE_N_FACES if path == STALE_PATH else len(labels), model_version_id=version_id,
                    scoring_run_id=version_id, timezone=ZONES[camera],
                    utc_offset_s=int(local.utcoffset().total_seconds()), local_day=local.date(),
                    captured_at=captured, scored_at=scored_at))
                for index, label in enumerate(labels):
                    face_id += 1
                    conn.execute(sa.insert(_faces).values(
                        id=face_id, image_id=image_id, face_index=index, x1=10 * index + 1, y1=5, x2=10 * index + 51,
                        y2=65, detector_score=0.9 + index / 100, label=label,
                        p_with_mask=0.7 if label == "with_mask" else 0.1,
                        p_without_mask=0.7 if label == "without_mask" else 0.1,
                        p_partial_mask=0.7 if label == "partial_mask" else 0.2, confidence=0.7,
                        model_version_id=version_id))
            if conn.dialect.name == "postgresql":  # ids were given: move the sequences past them
                for table in IDS:
                    conn.execute(sa.text(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "
                                         f"(SELECT MAX(id) FROM {table}))"))
    finally:
        engine.dispose()


def _tables(url: str, columns: dict[str, list[str]] | None = None) -> dict[str, dict[Any, tuple[Any, ...]]]:
    """Every row of TABLES as the driver returns it (no type conversion), by primary key;
    ``columns`` (default: each table's columns now) picks what is read."""
    with database.engine_for(url) as engine, engine.connect() as conn:
        names = columns or {t: [c["name"] for c in sa.inspect(conn).get_columns(t)] for t in TABLES}
        found = {}
        for table, cols in names.items():
            key = "camera_id" if table == "cameras" else "id"
            rows = conn.exec_driver_sql(f"SELECT {key}, {', '.join(cols)} FROM {table}").all()
            found[table] = {row[0]: tuple(row[1:]) for row in rows}
        return found


def _views(url: str) -> dict[str, Counter[tuple[Any, ...]]]:
    with database.engine_for(url) as engine, engine.connect() as conn:
        return {view: rows_of(conn, view, columns) for view, columns in VIEW_COLUMNS.items()}


def _columns(url: str) -> dict[str, list[str]]:
    with database.engine_for(url) as engine, engine.connect() as conn:
        return {t: [c["name"] for c in sa.inspect(conn).get_columns(t)] for t in TABLES}


def _derived(url: str) -> tuple[set[tuple[Any, ...]], set[tuple[Any, ...]]]:
    with database.engine_for(url) as engine, engine.connect() as conn:
        latest = set(conn.exec_driver_sql("SELECT * FROM latest_scorings").all())
        hourly = set(conn.exec_driver_sql("SELECT * FROM hourly_counts WHERE images > 0").all())
    return latest, hourly


def _check_counted(url: str) -> None:
    """images' n_faces and per-label counts equal its faces'; the view shows the expected scoring per path."""
    with database.database(url) as engine, engine.connect() as conn:
        counts = {r.path_key: r for r in conn.execute(sa.text(
            "SELECT i.path_key, i.model_version_id, i.n_faces, i.n_with_mask, i.n_without_mask, i.n_partial_mask, "
            "(SELECT COUNT(*) FROM faces AS f WHERE f.image_id = i.id) AS faces, "
            "(SELECT COUNT(*) FROM faces AS f WHERE f.image_id = i.id AND f.label = 'with_mask') AS w, "
            "(SELECT COUNT(*) FROM faces AS f WHERE f.image_id = i.id AND f.label = 'without_mask') AS wo, "
            "(SELECT COUNT(*) FROM faces AS f WHERE f.image_id = i.id AND f.label = 'partial_mask') AS p "
            "FROM images AS i"))}
        shown = {r.image_path: r for r in conn.execute(sa.text(
            "SELECT image_path, model_version, status, n_faces, n_with_mask, n_without_mask, n_partial_mask, "
            "compliant, local_day FROM image_predictions"))}
    assert all((r.n_faces, r.n_with_mask, r.n_without_mask, r.n_partial_mask) == (r.faces, r.w, r.wo, r.p)
               for r in counts.values())
    assert counts[schema.path_key(STALE_PATH)].n_faces == 1
    assert {path: tuple(r)[1:8] for path, r in shown.items()} == {**EXPECTED_IMAGES, **EXPECTED_EXTRA}
    for path, day in EXPECTED_LOCAL_DAYS.items():
        assert date.fromisoformat(str(shown[path].local_day)) == day, path


@pytest.mark.timeout(180)
def test_upgrade_from_0004_keeps_rows_and_derives_the_latest_scorings(db_url, tmp_path):
    settings = load_settings(overrides={"data_dir": tmp_path, "site_timezone": "UTC"}, environ={})
    assert database.upgrade(db_url, REVISION, settings=settings) == REVISION
    _fill_0004(db_url)
    old_columns = _columns(db_url)
    before, views_before = _tables(db_url), _views(db_url)
    assert sum(views_before["face_predictions"].values()) == 11  # the fixture is what this test thinks it is

    assert database.upgrade(db_url, settings=settings) == database.head_revision()
    upgraded = _tables(db_url, old_columns)
    n_faces = old_columns["images"].index("n_faces")
    stale_id = next(i for i, row in before["images"].items() if row[old_columns["images"].index("path")] == STALE_PATH)
    recounted = {**before["images"], stale_id: tuple(1 if k == n_faces else v
                                                      for k, v in enumerate(before["images"][stale_id]))}
    assert upgraded == {**before, "images": recounted}
    assert _views(db_url) == views_before
    _check_counted(db_url)
    with database.database(db_url) as engine:
        assert_derived_state(engine)
    derived_after = _derived(db_url)

    # Down to 0004 and up again: the same rows, views and derived state.
    assert database.downgrade(db_url, REVISION) == REVISION
    assert _columns(db_url) == old_columns
    assert _tables(db_url) == {**before, "images": recounted}
    assert _views(db_url) == views_before
    assert database.upgrade(db_url, settings=settings) == database.head_revision()
    assert _tables(db_url, old_columns) == {**before, "images": recounted}
    assert _views(db_url) == views_before
    assert _derived(db_url) == derived_after

    # The triggers keep the migrated paths: the old model's later scoring of a frame that was
    # unreadable to the new one counts.
    path = "cam3/20261124T150000.jpg"
    face = {"face_index": 0, "x1": 1, "y1": 2, "x2": 41, "y2": 50, "detector_score": 0.9, "label": "with_mask",
            "p_with_mask": 0.8, "p_without_mask": 0.1, "p_partial_mask": 0.1, "confidence": 0.8}
    with database.database(db_url) as engine:
        with engine.begin() as conn:
            (stored,) = writes.insert_scored_images(conn, [{
                "path": path, "content_sha256": None, "camera_id": "cam3", "captured_at": _captured(path),
                "timezone": ZONES["cam3"], "width": 640, "height": 480, "status": "ok", "reason": None,
                "model_version_id": 1, "scoring_run_id": None, "scored_at": D(2026, 11, 27, tzinfo=UTC),
                "faces": [face]}])
        with engine.connect() as conn:
            shown = conn.execute(sa.text("SELECT image_id, status, n_with_mask, compliant, local_day "
                                         "FROM image_predictions WHERE image_path = :path"), {"path": path}).one()
        assert tuple(shown[:4]) == (stored["id"], "ok", 1, 1) and str(shown.local_day) == "2026-11-24"
        assert_derived_state(engine)
