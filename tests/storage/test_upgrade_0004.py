"""Migration 0004 on a populated 0003 database, on SQLite and PostgreSQL: every row kept,
times aware UTC, local facts in the site zone, existing cameras registered; down and up again."""

from __future__ import annotations

from datetime import UTC, date, datetime

import pytest
import sqlalchemy as sa

from maskjob.cli import main
from maskjob.config import load_settings
from maskjob.storage import database, schema, writes

SITE = "America/Chicago"
D = datetime

# 0003's tables as they stood, typed as they were written then (naive DateTime).
_images = sa.table("images", *(sa.column(c) for c in ("id", "path", "path_key", "camera_id", "width", "height",
                                                      "status", "reason", "n_faces", "model_version_id",
                                                      "scoring_run_id", "content_sha256")),
                   sa.column("captured_at", sa.DateTime), sa.column("scored_at", sa.DateTime))
_versions = sa.table("model_versions", *(sa.column(c) for c in ("id", "version", "arch", "checkpoint_path",
                                                                "checkpoint_sha256", "diverged", "status")),
                     sa.column("metrics", sa.JSON),
                     sa.column("created_at", sa.DateTime), sa.column("promoted_at", sa.DateTime))
_runs = sa.table("scoring_runs", *(sa.column(c) for c in ("id", "shard_index", "shard_count", "model_version_id",
                                                          "n_frames", "n_faces", "n_no_face", "n_unreadable",
                                                          "n_skipped", "status")),
                 *(sa.column(c, sa.DateTime) for c in ("interval_start", "interval_end", "started_at", "heartbeat_at")))
_faces = sa.table("faces", *(sa.column(c) for c in ("id", "image_id", "face_index", "x1", "y1", "x2", "y2",
                                                    "detector_score", "label", "p_with_mask", "p_without_mask",
                                                    "p_partial_mask", "confidence", "model_version_id")))

# (id, path, captured_at naive UTC): Chicago is UTC-6 in November, UTC-5 in July.
IMAGES = [
    (1, "cam1/20261124T030000.jpg", D(2026, 11, 24, 3)),  # local 2026-11-23 21:00
    (2, "cam1/20261124T070000.jpg", D(2026, 11, 24, 7)),  # local 2026-11-24 01:00
    (3, "cam2/20260701T120000.jpg", D(2026, 7, 1, 12, 0, 0, 250000)),  # local 07:00 CDT
]


def _fill_0003(url: str) -> None:
    engine = database.make_engine(url)
    try:
        with engine.begin() as conn:
            conn.execute(sa.insert(_versions).values(
                id=1, version="v1", arch="cnn", checkpoint_path="/m/v1.pt", checkpoint_sha256="a" * 64,
                metrics={}, diverged=False, status="champion", created_at=D(2026, 11, 1, 8),
                promoted_at=D(2026, 11, 2, 9, 30)))
            conn.execute(sa.insert(_runs).values(
                id=1, shard_index=0, shard_count=1, model_version_id=1, n_frames=3, n_faces=1, n_no_face=2,
                n_unreadable=0, n_skipped=0, status="succeeded", interval_start=D(2026, 11, 24),
                interval_end=D(2026, 11, 25), started_at=D(2026, 11, 25, 1), heartbeat_at=D(2026, 11, 25, 1, 5)))
            for image_id, path, captured in IMAGES:
                conn.execute(sa.insert(_images).values(
                    id=image_id, path=path, path_key=schema.path_key(path), camera_id=path.split("/")[0],
                    width=64, height=48, status="ok" if image_id == 2 else "no_face", reason=None,
                    n_faces=1 if image_id == 2 else 0, model_version_id=1, scoring_run_id=1, content_sha256=None,
                    captured_at=captured, scored_at=D(2026, 11, 25, 1, 2)))
            conn.execute(sa.insert(_faces).values(
                id=1, image_id=2, face_index=0, x1=1, y1=2, x2=30, y2=40, detector_score=0.9, label="with_mask",
                p_with_mask=0.8, p_without_mask=0.1, p_partial_mask=0.1, confidence=0.8, model_version_id=1))
            if conn.dialect.name == "postgresql":  # ids were given: move the sequence past them
                conn.execute(sa.text("SELECT setval(pg_get_serial_sequence('images', 'id'), 3)"))
            if conn.dialect.name == "sqlite":  # a time SQLite's CURRENT_TIMESTAMP wrote: no fraction
                conn.execute(sa.text("UPDATE scoring_runs SET heartbeat_at = '2026-11-25 01:05:00'"))
    finally:
        engine.dispose()


def _utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def _check_upgraded(url: str, site: str, offsets: dict[int, tuple[date, int]]) -> None:
    engine = database.open_database(url)
    try:
        with engine.connect() as conn:
            images = {r.id: r for r in conn.execute(sa.select(schema.Image))}
            run = conn.execute(sa.select(schema.ScoringRun)).one()
            version = conn.execute(sa.select(schema.ModelVersion)).one()
            cameras = conn.execute(sa.select(schema.Camera).order_by(schema.Camera.camera_id)).all()
            n_faces = conn.scalar(sa.select(sa.func.count()).select_from(schema.Face))
            daily = {(str(r.day), r.camera_id): r.images for r in conn.execute(sa.text(
                "SELECT day, camera_id, images FROM daily_compliance"))}
            # The migrated interval still matches the same key bound as an aware time (the lease's lookup).
            same = conn.scalar(sa.select(sa.func.count()).select_from(schema.ScoringRun).where(
                schema.ScoringRun.interval_start == _utc(2026, 11, 24),
                schema.ScoringRun.interval_end == datetime(2026, 11, 25)))
    finally:
        engine.dispose()
    assert sorted(images) == [1, 2, 3] and n_faces == 1 and same == 1
    for image_id, path, captured in IMAGES:
        row = images[image_id]
        assert (row.path, row.captured_at) == (path, captured.replace(tzinfo=UTC))
        assert row.scored_at == _utc(2026, 11, 25, 1, 2)
        assert (row.timezone, (row.local_day, row.utc_offset_s)) == (site, offsets[image_id]), path
    assert (run.interval_start, run.interval_end, run.started_at, run.heartbeat_at) == (
        _utc(2026, 11, 24), _utc(2026, 11, 25), _utc(2026, 11, 25, 1), _utc(2026, 11, 25, 1, 5))
    assert (version.created_at, version.promoted_at) == (_utc(2026, 11, 1, 8), _utc(2026, 11, 2, 9, 30))
    assert [(c.camera_id, c.timezone, c.auto_registered, c.compliance_target, c.expected_frames_per_hour)
            for c in cameras] == [("cam1", site, True, 0.9, None), ("cam2", site, True, 0.9, None)]
    assert all(c.created_at.tzinfo is not None for c in cameras)
    expected_daily: dict[tuple[str, str], int] = {}
    for image_id, path, _ in IMAGES:
        key = (offsets[image_id][0].isoformat(), path.split("/")[0])
        expected_daily[key] = expected_daily.get(key, 0) + 1
    assert daily == expected_daily


CHICAGO = {1: (date(2026, 11, 23), -21600), 2: (date(2026, 11, 24), -21600), 3: (date(2026, 7, 1), -18000)}


@pytest.mark.timeout(120)
def test_upgrade_to_0004_keeps_rows_and_fills_local_facts(db_url, tmp_path):
    assert database.upgrade(db_url, "0003") == "0003"
    _fill_0003(db_url)
    settings = load_settings(overrides={"data_dir": tmp_path, "site_timezone": SITE}, environ={})
    assert database.upgrade(db_url, settings=settings) == database.SCHEMA_REVISION
    _check_upgraded(db_url, SITE, CHICAGO)

    # New rows after the upgrade sit beside the migrated ones; down to 0003 keeps every row.
    engine = database.open_database(db_url)
    try:
        with engine.begin() as conn:
            row = {"path": "cam2/x.jpg", "camera_id": "cam2", "captured_at": _utc(2026, 11, 24, 9),
                   "timezone": "Asia/Kolkata", "width": 1, "height": 1, "status": "no_face", "n_faces": 0,
                   "model_version_id": 1, "scoring_run_id": None, "scored_at": _utc(2026, 11, 25), "faces": []}
            (stored,) = writes.insert_scored_images(conn, [row])
        assert (stored["local_day"], stored["utc_offset_s"]) == (date(2026, 11, 24), 19800)
    finally:
        engine.dispose()
    assert database.downgrade(db_url, "0003") == "0003"
    engine = database.make_engine(db_url)
    try:
        with engine.connect() as conn:
            old = conn.execute(sa.select(_images.c.id, _images.c.captured_at).order_by(_images.c.id)).all()
            assert "cameras" not in sa.inspect(conn).get_table_names()
    finally:
        engine.dispose()
    assert [(i, t) for i, t in old] == [(i, t) for i, _, t in IMAGES] + [(4, D(2026, 11, 24, 9))]
    assert database.upgrade(db_url, settings=settings) == database.SCHEMA_REVISION
    engine = database.open_database(db_url)
    try:
        with engine.connect() as conn:
            again = conn.execute(sa.select(schema.Image.id, schema.Image.captured_at, schema.Image.local_day)
                                 .order_by(schema.Image.id)).all()
    finally:
        engine.dispose()
    assert [tuple(r) for r in again][:3] == [(i, t.replace(tzinfo=UTC), CHICAGO[i][0]) for i, _, t in IMAGES]


@pytest.mark.timeout(60)
def test_cli_db_upgrade_uses_the_site_zone_setting(tmp_path, monkeypatch, capsys):
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    assert main(["db", "upgrade", "0003", "--database-url", url]) == 0
    _fill_0003(url)
    monkeypatch.setenv("MASKJOB_SITE_TIMEZONE", "Asia/Kolkata")
    assert main(["db", "upgrade", "--database-url", url]) == 0
    assert f"0003 -> {database.SCHEMA_REVISION}" in capsys.readouterr().out
    _check_upgraded(url, "Asia/Kolkata", {1: (date(2026, 11, 24), 19800), 2: (date(2026, 11, 24), 19800),
                                          3: (date(2026, 7, 1), 19800)})


def test_cli_db_upgrade_refuses_a_bad_site_zone(tmp_path, monkeypatch, capsys):
    url = f"sqlite:///{tmp_path / 'bad.db'}"
    monkeypatch.setenv("MASKJOB_SITE_TIMEZONE", "Mars/Olympus")
    assert main(["db", "upgrade", "--database-url", url]) == 2
    err = capsys.readouterr().err
    assert "site_timezone" in err and "Traceback" not in err
