"""latest_scorings and hourly_counts (migrations 0005-0007) on SQLite and PostgreSQL: the triggers give
exactly what 0004's window over every image gave, through rescorings, backfills, ties, deletes
and a random mix of writes; rebuild() gives the same state; the triggers can be switched off.
assert_derived_state also holds after reviews (final labels: tests/storage/test_reviews.py)."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from typing import Any, Sequence

import pytest
import sqlalchemy as sa

from maskjob.storage import derived, schema, writes
from tests.storage.reference_views import WINDOW_LATEST, assert_views_match_reference, normalised
from tests.storage.test_views import SCORINGS

LABELS = ("with_mask", "without_mask", "partial_mask")
ZONES = {"cam1": "UTC", "cam2": "Europe/Paris", "cam3": "America/Chicago"}
HOURLY_SUMS = ("images", "ok", "no_face", "unreadable", "faces", "with_mask", "without_mask", "partial_mask",
               "compliant", "reviewed", "changed", "not_face")
HOURLY_KEY = ("hour_utc", "camera_id", "local_day", "timezone", "model_version_id")
LATEST_COPIED = ("model_version_id", "camera_id", "captured_at", "scored_at", "timezone", "local_day", "status",
                 "n_faces", "n_with_mask", "n_without_mask", "n_partial_mask", "n_reviewed", "n_changed", "n_not_face")
# A face's final label, and its confidence as the summaries count it (a reviewed face: 1.0).
FINAL = "COALESCE(f.reviewed_label, f.label)"
FINAL_CONFIDENCE = "CASE WHEN f.reviewed_label IS NULL THEN f.confidence ELSE 1.0 END"


def _versions(engine: sa.Engine, names: Sequence[str]) -> dict[str, int]:
    with engine.begin() as conn:
        return {name: conn.execute(sa.insert(schema.ModelVersion).returning(schema.ModelVersion.id), {
            "version": name, "arch": "cnn", "checkpoint_path": f"/m/{name}.pt",
            "checkpoint_sha256": name.ljust(64, "0"), "metrics": {"f1": 0.5}, "diverged": False,
            "created_at": datetime(2026, 11, 1, tzinfo=UTC), "status": "candidate"}).scalar_one() for name in names}


def _row(path: str, version_id: int, scored_at: datetime, labels: Sequence[str], status: str | None = None,
         captured_at: datetime | None = None) -> dict[str, Any]:
    camera = path.split("/")[0]
    status = status or ("ok" if labels else "no_face")
    faces = [{"face_index": i, "x1": i, "y1": 2, "x2": i + 40, "y2": 50, "detector_score": 0.9, "label": label,
              "p_with_mask": 0.6, "p_without_mask": 0.2, "p_partial_mask": 0.2, "confidence": 0.6}
             for i, label in enumerate(labels)]
    return {"path": path, "content_sha256": None, "camera_id": camera,
            "captured_at": captured_at or datetime(2026, 11, 24, 8, tzinfo=UTC), "width": 64, "height": 48,
            "status": status, "reason": "truncated" if status == "unreadable" else None,
            "model_version_id": version_id, "scoring_run_id": None, "scored_at": scored_at,
            "timezone": ZONES.get(camera, "UTC"), "faces": faces}


def _write(engine: sa.Engine, rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    with engine.begin() as conn:
        return writes.insert_scored_images(conn, rows)


def _hour(value: datetime) -> datetime:
    return value.astimezone(UTC).replace(minute=0, second=0, microsecond=0)


def _typed(conn: sa.Connection, sql: str) -> list[sa.Row]:
    """Rows of ``sql`` over images-like columns, with the times read as aware UTC."""
    utc = schema.UtcDateTime()
    types = {"captured_at": utc, "scored_at": utc, "hour_utc": utc, "local_day": sa.Date}
    query = sa.text(sql).columns(**{name: t for name, t in types.items() if name in sql})
    return conn.execute(query).all()


def _window_latest(conn: sa.Connection) -> dict[str, sa.Row]:
    return {r.path_key: r for r in _typed(conn, WINDOW_LATEST)}


def _expected_hourly(latest: dict[str, sa.Row]) -> dict[tuple[Any, ...], tuple[int, ...]]:
    sums: dict[tuple[Any, ...], list[int]] = {}
    for r in latest.values():
        key = (_hour(r.captured_at), r.camera_id, r.local_day, r.timezone, r.model_version_id)
        ok = r.status == "ok"
        terms = (1, int(ok), int(r.status == "no_face"), int(r.status == "unreadable"), r.n_faces, r.n_with_mask,
                 r.n_without_mask, r.n_partial_mask, int(ok and r.n_faces > 0 and r.n_with_mask == r.n_faces),
                 r.n_reviewed, r.n_changed, r.n_not_face)
        sums[key] = [a + b for a, b in zip(sums.get(key, [0] * len(terms)), terms)]
    return {key: tuple(values) for key, values in sums.items()}


def _hourly(conn: sa.Connection, *, with_empty: bool = False) -> dict[tuple[Any, ...], tuple[int, ...]]:
    rows = _typed(conn, f"SELECT {', '.join(HOURLY_KEY + HOURLY_SUMS)} FROM hourly_counts")
    return {tuple(r[:5]): tuple(r[5:]) for r in rows if with_empty or r.images > 0}


def _latest(conn: sa.Connection) -> dict[str, sa.Row]:
    return {r.path_key: r for r in conn.execute(sa.select(schema.LatestScoring.__table__))}


def assert_derived_state(engine: sa.Engine) -> None:
    """latest_scorings = the window's rank-1 rows, hourly_counts = their sums, images' summaries =
    their final faces', faces' reviewed labels = their latest live reviews', views = 0004's over final labels."""
    with engine.connect() as conn:
        window, latest = _window_latest(conn), _latest(conn)
        assert {k: r.image_id for k, r in latest.items()} == {k: r.id for k, r in window.items()}
        for key, r in latest.items():
            assert tuple(getattr(r, c) for c in LATEST_COPIED) == tuple(getattr(window[key], c) for c in LATEST_COPIED)
            assert r.hour_utc == _hour(r.captured_at)
        assert _hourly(conn) == _expected_hourly(window)
        assert all(values == (0,) * len(HOURLY_SUMS)
                   for values in _hourly(conn, with_empty=True).values() if values[0] == 0)
        # images' summary columns from their faces' final labels (0007; the model's without reviews).
        final = FINAL
        counted = conn.execute(sa.text(
            "SELECT i.id, i.n_faces, i.n_with_mask, i.n_without_mask, i.n_partial_mask, i.n_reviewed, i.n_changed, "
            f"i.n_not_face, COUNT(CASE WHEN {final} <> 'not_a_face' THEN 1 END), "
            + ", ".join(f"COUNT(CASE WHEN {final} = '{label}' THEN 1 END)" for label in LABELS)
            + ", COUNT(f.reviewed_label), COUNT(CASE WHEN f.reviewed_label <> f.label THEN 1 END), "
              f"COUNT(CASE WHEN {final} = 'not_a_face' THEN 1 END) "
              "FROM images AS i LEFT JOIN faces AS f ON f.image_id = i.id "
              "GROUP BY i.id, i.n_faces, i.n_with_mask, i.n_without_mask, i.n_partial_mask, i.n_reviewed, "
              "i.n_changed, i.n_not_face")).all()
        assert all(tuple(r[1:8]) == tuple(r[8:]) for r in counted)
        # An image with faces is no_face exactly when none is left (every one not_a_face).
        statuses = conn.execute(sa.text(
            f"SELECT i.status, COUNT(CASE WHEN {final} <> 'not_a_face' THEN 1 END) FROM images AS i "
            "JOIN faces AS f ON f.image_id = i.id GROUP BY i.id, i.status")).all()
        assert all(status == ("ok" if left else "no_face") for status, left in statuses)
        # Confidence extremes (0006): the images' from their final faces, latest_scorings' from its image.
        extremes = conn.execute(sa.text(
            "SELECT i.top_violation_confidence, i.min_confidence, i.max_confidence, "
            f"MAX(CASE WHEN {final} IN ('without_mask', 'partial_mask') THEN {FINAL_CONFIDENCE} END), "
            f"MIN(CASE WHEN {final} <> 'not_a_face' THEN {FINAL_CONFIDENCE} END), "
            f"MAX(CASE WHEN {final} <> 'not_a_face' THEN {FINAL_CONFIDENCE} END) "
            "FROM images AS i LEFT JOIN faces AS f ON f.image_id = i.id "
            "GROUP BY i.id, i.top_violation_confidence, i.min_confidence, i.max_confidence")).all()
        assert all(tuple(r[:3]) == tuple(r[3:]) for r in extremes)
        copied = conn.execute(sa.text(
            "SELECT ls.top_violation_confidence, ls.min_confidence, ls.max_confidence, "
            "i.top_violation_confidence, i.min_confidence, i.max_confidence "
            "FROM latest_scorings AS ls JOIN images AS i ON i.id = ls.image_id")).all()
        assert all(tuple(r[:3]) == tuple(r[3:]) for r in copied)
        # faces.reviewed_label/review_id: the face's latest review not undone.
        settled = conn.execute(sa.text(
            "SELECT f.id, f.reviewed_label, f.review_id, (SELECT r.id FROM face_reviews AS r WHERE r.face_id = f.id "
            "AND r.undone_at IS NULL ORDER BY r.reviewed_at DESC, r.id DESC LIMIT 1) AS live, "
            "(SELECT r.label FROM face_reviews AS r WHERE r.face_id = f.id AND r.undone_at IS NULL "
            "ORDER BY r.reviewed_at DESC, r.id DESC LIMIT 1) AS live_label FROM faces AS f")).all()
        assert all((r.review_id, r.reviewed_label) == (r.live, r.live_label) for r in settled)
        assert_views_match_reference(conn)


def _load_view_fixture(engine: sa.Engine) -> dict[str, int]:
    versions = _versions(engine, ("old", "new"))
    for path, model, scored_at, status, labels in SCORINGS:  # one transaction each, as in test_views
        stamp = datetime.strptime(path.split("/")[1].removesuffix(".jpg"), "%Y%m%dT%H%M%S").replace(tzinfo=UTC)
        assert len(_write(engine, [_row(path, versions[model], scored_at.replace(tzinfo=UTC), labels, status,
                                        stamp)])) == 1
    return versions


def test_views_match_0004_on_the_view_fixtures(engine):
    _load_view_fixture(engine)
    assert_derived_state(engine)
    with engine.connect() as conn:
        latest = {r.path: r.model_version for r in conn.execute(sa.text(
            "SELECT image_path AS path, model_version FROM image_predictions"))}
        daily = conn.execute(sa.text("SELECT day, camera_id, compliant_frames FROM daily_compliance")).all()
    # rescored by the newer model; a backfill by the older one scored last; equal scored_at: higher id
    assert (latest["cam1/20261124T080000.jpg"], latest["cam1/20261124T090000.jpg"],
            latest["cam1/20261124T100000.jpg"]) == ("new", "old", "new")
    # cam2 is in Paris: both its frames fall on the local 2026-11-25
    assert sorted((str(d), c, n) for d, c, n in daily) == [("2026-11-24", "cam1", 1), ("2026-11-25", "cam2", 0)]


def test_one_batch_with_several_scorings_of_a_path(engine):
    v = _versions(engine, ("a", "b", "c"))
    t = datetime(2026, 11, 25, 1, tzinfo=UTC)
    _write(engine, [_row("cam1/x.jpg", v["a"], t, ["with_mask"]), _row("cam1/x.jpg", v["b"], t + timedelta(hours=1),
                    ["without_mask"]), _row("cam1/x.jpg", v["c"], t - timedelta(hours=1), [])])
    assert_derived_state(engine)
    with engine.connect() as conn:
        assert conn.scalar(sa.text("SELECT model_version FROM image_predictions")) == "b"


def test_retry_unreadable_delete_then_replacement(engine):
    v = _versions(engine, ("old", "new"))
    t = datetime(2026, 11, 25, 1, tzinfo=UTC)
    _write(engine, [_row("cam2/a.jpg", v["old"], t, ["with_mask"]),
                    _row("cam2/a.jpg", v["new"], t + timedelta(hours=1), [], "unreadable"),
                    _row("cam2/b.jpg", v["new"], t, [], "unreadable")])
    assert_derived_state(engine)
    retried = [_row("cam2/a.jpg", v["new"], t + timedelta(hours=2), ["without_mask", "with_mask"]),
               _row("cam2/b.jpg", v["new"], t + timedelta(hours=2), ["partial_mask"])]
    with engine.begin() as conn:  # what score._write_batch does with retry_unreadable
        conn.execute(sa.delete(schema.Image).where(
            schema.Image.model_version_id == v["new"], schema.Image.status == "unreadable",
            schema.Image.path_key.in_([schema.path_key(r["path"]) for r in retried])))
        assert len(writes.insert_scored_images(conn, retried)) == 2
    assert_derived_state(engine)
    with engine.connect() as conn:
        shown = dict(conn.execute(sa.text("SELECT image_path, status FROM image_predictions")).all())
        unreadable = conn.scalar(sa.text("SELECT SUM(unreadable) FROM daily_compliance"))
    assert shown == {"cam2/a.jpg": "ok", "cam2/b.jpg": "ok"} and unreadable == 0


def test_deleting_the_latest_scoring_promotes_the_older_one(engine):
    v = _versions(engine, ("old", "new"))
    t = datetime(2026, 11, 25, 1, tzinfo=UTC)
    _write(engine, [_row("cam3/a.jpg", v["old"], t, ["without_mask"]),
                    _row("cam3/a.jpg", v["new"], t + timedelta(hours=1), ["with_mask"])])
    with engine.begin() as conn:
        conn.execute(sa.delete(schema.Image).where(schema.Image.model_version_id == v["new"]))
    assert_derived_state(engine)
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT model_version, n_without_mask FROM image_predictions")).one() == ("old", 1)
        conn.execute(sa.delete(schema.Image))  # every scoring of the path: the path leaves the views
        assert conn.scalar(sa.text("SELECT COUNT(*) FROM latest_scorings")) == 0
        assert conn.scalar(sa.text("SELECT COUNT(*) FROM daily_compliance")) == 0
        conn.rollback()


def test_updates_of_images_follow(engine):
    v = _versions(engine, ("old", "new"))
    t = datetime(2026, 11, 25, 1, tzinfo=UTC)
    _write(engine, [_row("cam1/a.jpg", v["old"], t, ["without_mask"]),
                    _row("cam1/a.jpg", v["new"], t + timedelta(hours=1), ["with_mask"])])
    with engine.begin() as conn:  # the older scoring becomes the latest
        conn.execute(sa.update(schema.Image).where(schema.Image.model_version_id == v["old"])
                     .values(scored_at=t + timedelta(hours=2)))
    assert_derived_state(engine)
    with engine.begin() as conn:  # the latest one's capture time moves to another hour and day
        conn.execute(sa.update(schema.Image).where(schema.Image.model_version_id == v["old"])
                     .values(captured_at=datetime(2026, 11, 26, 23, 30, tzinfo=UTC),
                             local_day=datetime(2026, 11, 26).date()))
    assert_derived_state(engine)


def _fuzz_step(rng: random.Random, engine: sa.Engine, versions: list[int], paths: list[str]) -> None:
    base = datetime(2026, 11, 24, tzinfo=UTC)
    action = rng.random()
    if action < 0.6:
        rows = []
        for path in rng.sample(paths, rng.randint(1, 6)):
            labels = [rng.choice(LABELS) for _ in range(rng.choice((0, 0, 1, 2, 3)))]
            status = rng.choice(("unreadable", None, None, None))
            rows.append(_row(path, rng.choice(versions), base + timedelta(hours=rng.randint(0, 3)),
                             [] if status else labels, status,
                             base + timedelta(minutes=17 * paths.index(path))))
        _write(engine, rows)
    elif action < 0.85:
        with engine.begin() as conn:
            ids = conn.scalars(sa.select(schema.Image.id)).all()
            doomed = rng.sample(ids, min(len(ids), rng.randint(1, 3)))
            if rng.random() < 0.5:  # one statement for several images, maybe of one path
                conn.execute(sa.delete(schema.Image).where(schema.Image.id.in_(doomed)))
            else:
                for image_id in doomed:
                    conn.execute(sa.delete(schema.Image).where(schema.Image.id == image_id))
    else:
        with engine.begin() as conn:
            ids = conn.scalars(sa.select(schema.Image.id)).all()
            if ids:
                conn.execute(sa.update(schema.Image).where(schema.Image.id == rng.choice(ids))
                             .values(scored_at=base + timedelta(hours=rng.randint(0, 3))))


@pytest.mark.timeout(300)
def test_random_writes_match_the_window(engine):
    rng = random.Random(14)
    versions = list(_versions(engine, ("m1", "m2", "m3")).values())
    paths = [f"{cam}/{i:03d}.jpg" for cam in ZONES for i in range(8)]
    for step in range(120):
        _fuzz_step(rng, engine, versions, paths)
        if step % 10 == 9:
            assert_derived_state(engine)
    assert_derived_state(engine)
    with engine.connect() as conn:
        assert conn.scalar(sa.text("SELECT COUNT(*) FROM latest_scorings")) > 10


def _snapshot(engine: sa.Engine) -> tuple[dict[str, tuple[Any, ...]], dict[tuple[Any, ...], tuple[int, ...]]]:
    with engine.connect() as conn:
        latest = {k: tuple(normalised(v) for v in r) for k, r in _latest(conn).items()}
        return latest, _hourly(conn)


def test_rebuild_equals_the_triggers(engine):
    rng = random.Random(7)
    versions = list(_versions(engine, ("m1", "m2")).values())
    paths = [f"{cam}/{i:03d}.jpg" for cam in ZONES for i in range(5)]
    for _ in range(40):
        _fuzz_step(rng, engine, versions, paths)
    by_triggers = _snapshot(engine)
    with engine.begin() as conn:
        n_latest, n_hourly = derived.rebuild(conn)
    assert n_latest == len(by_triggers[0]) and n_hourly >= len(by_triggers[1])
    assert _snapshot(engine) == by_triggers
    with engine.connect() as conn:
        assert all(values[0] > 0 for values in _hourly(conn, with_empty=True).values())  # none left at 0
    assert_derived_state(engine)


def test_triggers_disabled_then_rebuild(engine):
    v = _versions(engine, ("m1",))
    t = datetime(2026, 11, 25, 1, tzinfo=UTC)
    with engine.begin() as conn:
        with derived.triggers_disabled(conn):
            with derived.triggers_disabled(conn):  # nested: nothing more to switch off
                writes.insert_scored_images(conn, [_row("cam1/a.jpg", v["m1"], t, ["with_mask"])])
            assert conn.scalar(sa.text("SELECT COUNT(*) FROM latest_scorings")) == 0
            writes.insert_scored_images(conn, [_row("cam1/b.jpg", v["m1"], t, [])])
            derived.rebuild(conn)
    assert_derived_state(engine)
    _write(engine, [_row("cam2/c.jpg", v["m1"], t, ["partial_mask"])])  # the triggers are back
    assert_derived_state(engine)


def test_triggers_disabled_undoes_its_block_on_error(engine):
    v = _versions(engine, ("m1",))
    t = datetime(2026, 11, 25, 1, tzinfo=UTC)
    with engine.begin() as conn:
        with pytest.raises(RuntimeError), derived.triggers_disabled(conn):
            writes.insert_scored_images(conn, [_row("cam1/a.jpg", v["m1"], t, ["with_mask"])])
            raise RuntimeError("a bulk load failed")
        assert conn.scalar(sa.text("SELECT COUNT(*) FROM images")) == 0
        writes.insert_scored_images(conn, [_row("cam1/b.jpg", v["m1"], t, [])])
    assert_derived_state(engine)
    with engine.connect() as conn:
        assert conn.scalar(sa.text("SELECT COUNT(*) FROM latest_scorings")) == 1


def test_writer_fills_face_counts_unless_given(engine):
    v = _versions(engine, ("m1",))
    t = datetime(2026, 11, 25, 1, tzinfo=UTC)
    counted, given = _write(engine, [
        _row("cam1/a.jpg", v["m1"], t, ["with_mask", "partial_mask", "with_mask"]),
        {**_row("cam1/b.jpg", v["m1"], t, []), "n_faces": 0, "n_with_mask": 0, "n_without_mask": 0,
         "n_partial_mask": 0},
    ])
    assert [counted[c] for c in ("n_faces", "n_with_mask", "n_without_mask", "n_partial_mask")] == [3, 2, 0, 1]
    with engine.connect() as conn:
        stored = conn.execute(sa.select(schema.Image.n_with_mask, schema.Image.n_partial_mask)
                              .where(schema.Image.id == counted["id"])).one()
    assert tuple(stored) == (2, 1) and given["n_faces"] == 0
    assert_derived_state(engine)


def test_hourly_counts_follow_local_days_and_zones(engine):
    v = _versions(engine, ("m1",))
    t = datetime(2026, 11, 25, 1, tzinfo=UTC)
    # 23:30 UTC is the next local day in Paris, the same day in Chicago.
    late = datetime(2026, 11, 24, 23, 30, tzinfo=UTC)
    _write(engine, [_row("cam2/a.jpg", v["m1"], t, ["with_mask"], captured_at=late),
                    _row("cam3/a.jpg", v["m1"], t, ["without_mask"], captured_at=late)])
    with engine.connect() as conn:
        got = {(r.camera_id, str(r.local_day), r.timezone, r.hour_utc) for r in conn.execute(
            sa.select(schema.HourlyCount))}
    assert got == {("cam2", "2026-11-25", "Europe/Paris", datetime(2026, 11, 24, 23, tzinfo=UTC)),
                   ("cam3", "2026-11-24", "America/Chicago", datetime(2026, 11, 24, 23, tzinfo=UTC))}
    assert_derived_state(engine)


def test_metrics_are_jsonb_on_postgresql(engine):
    _versions(engine, ("m1",))
    with engine.connect() as conn:
        if conn.dialect.name == "postgresql":
            assert conn.scalar(sa.text("SELECT pg_typeof(metrics)::text FROM model_versions")) == "jsonb"
            assert conn.scalar(sa.text("SELECT metrics @> '{\"f1\": 0.5}' FROM model_versions")) is True
        assert conn.scalar(sa.select(schema.ModelVersion.metrics)) == {"f1": 0.5}
