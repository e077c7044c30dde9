"""Reviews (migration 0007) on SQLite and PostgreSQL: decisions and undo change the final counts
in images, latest_scorings, hourly_counts and every view exactly; re-reviews keep history; a
not_a_face face drops out of every count; rescoring leaves reviews in history and export; the
queue's strata, order and sample; errors a user can cause."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, date, datetime, timedelta
from typing import Any, Sequence

import random

import pytest
import sqlalchemy as sa

from maskjob.config import Settings, load_settings
from maskjob.errors import MaskjobError
from maskjob.storage import derived, reviews, schema
from tests.storage.reference_views import normalised
from tests.storage.test_confidence_extremes import _scored
from tests.storage.test_derived import ZONES, _fuzz_step, _snapshot, _versions, _write, assert_derived_state

T = datetime(2026, 11, 25, 1, tzinfo=UTC)
CAPTURED = datetime(2026, 11, 24, 8, tzinfo=UTC)


def _settings(**overrides: Any) -> Settings:
    return load_settings(overrides={"review_threshold": 0.75, "review_sample_rate": 0.02, **overrides}, environ={})


def _face_ids(engine: sa.Engine, path: str) -> list[int]:
    with engine.connect() as conn:
        return list(conn.scalars(sa.select(schema.Face.id).join(schema.Image).where(schema.Image.path == path)
                                 .order_by(schema.Face.id)))


def _view(engine: sa.Engine, sql: str) -> list[tuple[Any, ...]]:
    """Rows of ``sql``, comparable across the databases (dates as ISO text)."""
    with engine.connect() as conn:
        return [tuple(v.isoformat() if isinstance(v, date) else normalised(v) for v in row)
                for row in conn.execute(sa.text(sql))]


def _views(engine: sa.Engine) -> dict[str, Counter[tuple[Any, ...]]]:
    return {name: Counter(_view(engine, f"SELECT * FROM {name}")) for name in schema.VIEW_NAMES}


# The frames of most tests: (path, faces as (label, confidence)), all cam1 at CAPTURED, model m1.
FRAMES: dict[str, Sequence[tuple[str, float]]] = {
    "cam1/a.jpg": [("with_mask", 0.9), ("without_mask", 0.5), ("with_mask", 0.8)],
    "cam1/b.jpg": [("partial_mask", 0.95)],
    "cam1/c.jpg": [],
}


@pytest.fixture
def scored(engine: sa.Engine) -> dict[str, int]:
    v = _versions(engine, ("m1", "m2"))
    _write(engine, [_scored(path, v["m1"], T, faces) for path, faces in FRAMES.items()])
    return v


def test_a_review_changes_the_final_counts_everywhere_and_undo_restores_them(engine, scored):
    a = _face_ids(engine, "cam1/a.jpg")
    before = _views(engine)
    review_id = reviews.record_review(engine, a[0], "ana", "without_mask", stratum="sample", note="nose out")
    assert_derived_state(engine)
    assert _view(engine, "SELECT image_path, n_faces, n_with_mask, n_without_mask, n_partial_mask, compliant, "
                         "n_reviewed, n_changed FROM image_predictions ORDER BY image_path") == [
        ("cam1/a.jpg", 3, 1, 2, 0, 0, 1, 1), ("cam1/b.jpg", 1, 0, 0, 1, 0, 0, 0),
        ("cam1/c.jpg", 0, 0, 0, 0, None, 0, 0)]
    assert _view(engine, "SELECT day, faces, with_mask, without_mask, partial_mask, compliant_frames, "
                         "reviewed_faces, changed_faces FROM daily_compliance") == [
        ("2026-11-24", 4, 1, 2, 1, 0, 1, 1)]
    assert _view(engine, "SELECT face_id, label, reviewed_label, final_label FROM face_predictions "
                         "WHERE image_path = 'cam1/a.jpg' ORDER BY face_index") == [
        (a[0], "with_mask", "without_mask", "without_mask"), (a[1], "without_mask", None, "without_mask"),
        (a[2], "with_mask", None, "with_mask")]
    with engine.connect() as conn:  # the reviewed face counts at confidence 1.0
        extremes = conn.execute(sa.select(schema.Image.top_violation_confidence, schema.Image.min_confidence,
                                          schema.Image.max_confidence).where(schema.Image.path == "cam1/a.jpg")).one()
        row = conn.execute(sa.select(schema.FaceReview)).one()
    assert tuple(extremes) == (1.0, 0.5, 1.0)
    assert (row.face_id, row.reviewer, row.label, row.model_label, row.model_confidence, row.model_version_id,
            row.stratum, row.note, row.image_path, row.camera_id, row.captured_at, row.local_day,
            (row.x1, row.y1, row.x2, row.y2), row.undone_at) == (
        a[0], "ana", "without_mask", "with_mask", pytest.approx(0.9), scored["m1"], "sample", "nose out",
        "cam1/a.jpg", "cam1", CAPTURED, date(2026, 11, 24), (0, 2, 40, 50), None)

    reviews.undo_review(engine, review_id, "bob")
    assert _views(engine) == before
    assert_derived_state(engine)
    with engine.connect() as conn:
        row = conn.execute(sa.select(schema.FaceReview)).one()
    assert row.undone_by == "bob" and row.undone_at is not None


def test_unknown_face_label_stratum_or_review_is_a_maskjob_error(engine, scored):
    (b,) = _face_ids(engine, "cam1/b.jpg")
    with pytest.raises(MaskjobError, match="no face with id 999999"):
        reviews.record_review(engine, 999999, "ana", "with_mask")
    with pytest.raises(MaskjobError, match="unknown review label 'masked'.*not_a_face"):
        reviews.record_review(engine, b, "ana", "masked")
    with pytest.raises(MaskjobError, match="unknown review stratum"):
        reviews.record_review(engine, b, "ana", "with_mask", stratum="random")
    with pytest.raises(MaskjobError, match="user name"):
        reviews.record_review(engine, b, " ", "with_mask")
    with pytest.raises(MaskjobError, match="no review with id 5"):
        reviews.undo_review(engine, 5, "ana")
    review_id = reviews.record_review(engine, b, "ana", "with_mask")
    reviews.undo_review(engine, review_id, "ana")
    with pytest.raises(MaskjobError, match="already undone"):
        reviews.undo_review(engine, review_id, "ana")
    with engine.connect() as conn:
        assert conn.scalar(sa.select(sa.func.count()).select_from(schema.FaceReview)) == 1
    assert_derived_state(engine)


def test_queue_serves_uncertain_then_violations_then_the_sample(engine, scored):
    settings = _settings(review_sample_rate=1.0)
    a = _face_ids(engine, "cam1/a.jpg")
    (b,) = _face_ids(engine, "cam1/b.jpg")
    items = reviews.review_queue(engine, settings)
    # sample order is by hash, then id
    sampled = sorted([a[0], a[2]], key=lambda i: ((i * 2654435761) % 2**32 % 10000, i))
    assert [(i.face_id, i.stratum) for i in items] == [(a[1], "uncertain"), (b, "violation"),
                                                        *((i, "sample") for i in sampled)]
    first = items[0]
    assert (first.image_path, first.camera_id, first.captured_at, first.timezone, first.local_day, first.label,
            first.confidence, first.model_version, first.image_width, first.image_height) == (
        "cam1/a.jpg", "cam1", CAPTURED, "UTC", date(2026, 11, 24), "without_mask", pytest.approx(0.5), "m1", 64, 48)
    assert reviews.queue_counts(engine, settings) == {"uncertain": 1, "violation": 1, "sample": 2}
    assert [i.face_id for i in reviews.review_queue(engine, settings, limit=2, exclude_face_ids=[a[1]])] == [
        b, sampled[0]]
    assert reviews.review_queue(engine, settings, camera="cam9") == []
    reviews.record_review(engine, a[1], "ana", "without_mask", stratum="uncertain")
    assert reviews.queue_counts(engine, settings) == {"uncertain": 0, "violation": 1, "sample": 2}
    assert reviews.review_queue(engine, settings)[0].face_id == b


def _live(engine: sa.Engine, face_id: int) -> tuple[str | None, int | None]:
    with engine.connect() as conn:
        return tuple(conn.execute(sa.select(schema.Face.reviewed_label, schema.Face.review_id)
                                  .where(schema.Face.id == face_id)).one())


def test_the_latest_review_wins_and_history_is_kept(engine, scored):
    (b,) = _face_ids(engine, "cam1/b.jpg")
    first = reviews.record_review(engine, b, "ana", "with_mask", now=T + timedelta(minutes=1))
    second = reviews.record_review(engine, b, "bob", "without_mask", now=T + timedelta(minutes=2))
    # a decision dated before the latest one goes into history without winning
    late_entry = reviews.record_review(engine, b, "cy", "with_mask", now=T)
    assert _live(engine, b) == ("without_mask", second)
    assert _view(engine, "SELECT n_with_mask, n_without_mask, n_partial_mask, n_reviewed, n_changed "
                         "FROM image_predictions WHERE image_path = 'cam1/b.jpg'") == [(0, 1, 0, 1, 1)]
    assert_derived_state(engine)
    reviews.undo_review(engine, first, "ana")  # not the live one: nothing changes
    assert _live(engine, b) == ("without_mask", second)
    reviews.undo_review(engine, second, "bob")  # back to the latest one left: cy's, dated T
    assert _live(engine, b) == ("with_mask", late_entry)
    reviews.undo_review(engine, late_entry, "cy")
    assert _live(engine, b) == (None, None)
    assert_derived_state(engine)
    with engine.connect() as conn:
        history = conn.execute(sa.select(schema.FaceReview.reviewer, schema.FaceReview.label,
                                         schema.FaceReview.undone_by).order_by(schema.FaceReview.id)).all()
    assert [tuple(r) for r in history] == [("ana", "with_mask", "ana"), ("bob", "without_mask", "bob"),
                                           ("cy", "with_mask", "cy")]
    assert _view(engine, "SELECT n_partial_mask, n_reviewed, n_changed FROM image_predictions "
                         "WHERE image_path = 'cam1/b.jpg'") == [(1, 0, 0)]


def test_not_a_face_drops_out_of_every_count(engine, scored):
    a = _face_ids(engine, "cam1/a.jpg")
    (b,) = _face_ids(engine, "cam1/b.jpg")
    reviews.record_review(engine, a[1], "ana", "not_a_face", stratum="uncertain")
    undo_me = reviews.record_review(engine, b, "ana", "not_a_face", stratum="violation")
    assert_derived_state(engine)
    # b.jpg had one face, now none: a no_face frame; a.jpg keeps its two masked faces: compliant
    assert _view(engine, "SELECT image_path, status, n_faces, n_with_mask, n_without_mask, n_partial_mask, compliant, "
                         "n_reviewed, n_changed FROM image_predictions ORDER BY image_path") == [
        ("cam1/a.jpg", "ok", 2, 2, 0, 0, 1, 1, 1), ("cam1/b.jpg", "no_face", 0, 0, 0, 0, None, 1, 1),
        ("cam1/c.jpg", "no_face", 0, 0, 0, 0, None, 0, 0)]
    assert _view(engine, "SELECT images, no_face, faces, with_mask, without_mask, partial_mask, compliance_rate, "
                         "compliant_frames, reviewed_faces, changed_faces FROM daily_compliance") == [
        (3, 2, 2, 2, 0, 0, 1.0, 1, 2, 2)]
    assert _view(engine, "SELECT face_id FROM face_predictions ORDER BY face_id") == [(a[0],), (a[2],)]
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT SUM(not_face), SUM(reviewed), SUM(changed) FROM hourly_counts")).one() \
            == (2, 2, 2)
        assert conn.execute(sa.select(schema.Image.n_not_face, schema.Image.min_confidence, schema.Image.max_confidence,
                                      schema.Image.top_violation_confidence)
                            .where(schema.Image.path == "cam1/b.jpg")).one() == (1, None, None, None)
    assert reviews.reviews_for_export(engine) == []  # not a face: never training data
    reviews.undo_review(engine, undo_me, "ana")
    assert _view(engine, "SELECT status, n_faces, n_partial_mask FROM image_predictions "
                         "WHERE image_path = 'cam1/b.jpg'") == [("ok", 1, 1)]
    assert_derived_state(engine)


def test_rescoring_starts_unreviewed_and_keeps_the_old_reviews(engine, scored):
    (b,) = _face_ids(engine, "cam1/b.jpg")
    review_id = reviews.record_review(engine, b, "ana", "without_mask", stratum="violation", now=T)
    (newer,) = _write(engine, [_scored("cam1/b.jpg", scored["m2"], T + timedelta(hours=1), [("partial_mask", 0.97)])])
    assert_derived_state(engine)
    # the views show the new scoring, unreviewed, with the model's label
    assert _view(engine, "SELECT model_version, n_partial_mask, n_without_mask, n_reviewed FROM image_predictions "
                         "WHERE image_path = 'cam1/b.jpg'") == [("m2", 1, 0, 0)]
    new_face = _face_ids(engine, "cam1/b.jpg")[1]
    assert [i.face_id for i in reviews.review_queue(engine, _settings()) if i.image_path == "cam1/b.jpg"] == [new_face]
    assert reviews.review_stats(engine, T - timedelta(days=2), T + timedelta(days=2)) == []
    (exported,) = reviews.reviews_for_export(engine)
    assert (exported.review_id, exported.face_id, exported.label, exported.model_label, exported.model_version_id) == (
        review_id, b, "without_mask", "partial_mask", scored["m1"])
    # the same box reviewed again in the new scoring: one face for the export, the latest review
    again = reviews.record_review(engine, new_face, "bob", "with_mask", now=T + timedelta(hours=2))
    assert [(r.review_id, r.face_id) for r in reviews.reviews_for_export(engine)] == [(again, new_face)]
    reviews.undo_review(engine, again, "bob")
    # deleting the newer scoring brings the reviewed one back into the views
    with engine.begin() as conn:
        conn.execute(sa.delete(schema.Image).where(schema.Image.id == newer["id"]))
    assert _view(engine, "SELECT model_version, n_partial_mask, n_without_mask, n_reviewed FROM image_predictions "
                         "WHERE image_path = 'cam1/b.jpg'") == [("m1", 0, 1, 1)]
    assert_derived_state(engine)


def test_a_deleted_face_keeps_its_review_in_history_and_export(engine, scored):
    (b,) = _face_ids(engine, "cam1/b.jpg")
    review_id = reviews.record_review(engine, b, "ana", "with_mask", now=T)
    with engine.begin() as conn:
        conn.execute(sa.delete(schema.Image).where(schema.Image.path == "cam1/b.jpg"))
    (exported,) = reviews.reviews_for_export(engine)
    assert (exported.review_id, exported.face_id, exported.image_id, exported.image_path,
            (exported.x1, exported.y1, exported.x2, exported.y2)) == (review_id, None, None, "cam1/b.jpg",
                                                                      (0, 2, 40, 50))
    reviews.undo_review(engine, review_id, "ana")  # an undo of a review whose face is gone
    assert reviews.reviews_for_export(engine) == []
    assert_derived_state(engine)


def test_export_gives_each_faces_latest_live_review_since(engine, scored):
    a = _face_ids(engine, "cam1/a.jpg")
    (b,) = _face_ids(engine, "cam1/b.jpg")
    reviews.record_review(engine, a[0], "ana", "with_mask", stratum="sample", now=T)
    r2 = reviews.record_review(engine, a[1], "ana", "partial_mask", stratum="uncertain", now=T + timedelta(hours=1),
                               note="chin mask")
    r3 = reviews.record_review(engine, a[0], "bob", "without_mask", stratum="sample", now=T + timedelta(hours=2))
    reviews.record_review(engine, b, "bob", "not_a_face", now=T + timedelta(hours=3))
    got = reviews.reviews_for_export(engine)
    assert [(r.review_id, r.face_id, r.reviewer, r.label, r.model_label, r.stratum, r.note) for r in got] == [
        (r2, a[1], "ana", "partial_mask", "without_mask", "uncertain", "chin mask"),
        (r3, a[0], "bob", "without_mask", "with_mask", "sample", None)]
    assert (got[0].camera_id, got[0].captured_at, got[0].local_day, got[0].reviewed_at, got[0].model_confidence) == (
        "cam1", CAPTURED, date(2026, 11, 24), T + timedelta(hours=1), pytest.approx(0.5))
    assert [r.review_id for r in reviews.reviews_for_export(engine, since=T + timedelta(hours=2))] == [r3]
    reviews.undo_review(engine, r3, "bob")  # a[0] falls back to ana's review
    assert [(r.face_id, r.label) for r in reviews.reviews_for_export(engine)] == [
        (a[0], "with_mask"), (a[1], "partial_mask")]


def test_review_stats_per_camera_and_stratum(engine):
    v = _versions(engine, ("m1",))
    _write(engine, [
        _scored("cam1/a.jpg", v["m1"], T, [("with_mask", 0.9), ("without_mask", 0.5), ("with_mask", 0.8)]),
        _scored("cam2/a.jpg", v["m1"], T, [("partial_mask", 0.95), ("with_mask", 0.6)]),
        {**_scored("cam1/late.jpg", v["m1"], T, [("with_mask", 0.99)]), "captured_at": CAPTURED + timedelta(days=2)},
    ])
    a, c2, late = _face_ids(engine, "cam1/a.jpg"), _face_ids(engine, "cam2/a.jpg"), _face_ids(engine, "cam1/late.jpg")
    reviews.record_review(engine, a[0], "ana", "with_mask", stratum="sample")  # agreed
    reviews.record_review(engine, a[1], "ana", "with_mask", stratum="uncertain")  # changed
    undone = reviews.record_review(engine, a[2], "ana", "not_a_face", stratum="sample")
    reviews.undo_review(engine, undone, "ana")
    reviews.record_review(engine, c2[0], "bob", "without_mask", stratum="violation")
    reviews.record_review(engine, c2[0], "bob", "partial_mask", stratum="violation")  # re-review: agreed
    reviews.record_review(engine, c2[1], "bob", "not_a_face", stratum="uncertain")
    reviews.record_review(engine, late[0], "bob", "with_mask", stratum="sample")  # outside the window
    window = (CAPTURED, CAPTURED + timedelta(days=1))
    got = reviews.review_stats(engine, *window)
    S = reviews.StratumStats
    assert got == [
        reviews.CameraReviewStats("cam1", reviewed=2, changed=1, not_face=0, agreed=1,
                                  strata={"sample": S(1, 1), "uncertain": S(1, 0)}),
        reviews.CameraReviewStats("cam2", reviewed=2, changed=1, not_face=1, agreed=1,
                                  strata={"uncertain": S(1, 0), "violation": S(1, 1)}),
    ]
    assert reviews.review_stats(engine, *window, camera="cam2") == got[1:]
    # the totals match daily_compliance's over the same faces
    assert _view(engine, "SELECT camera_id, reviewed_faces, changed_faces FROM daily_compliance "
                         "WHERE day = '2026-11-24' ORDER BY camera_id") == [("cam1", 2, 1), ("cam2", 2, 1)]
    assert_derived_state(engine)


def test_the_sample_is_a_deterministic_share_close_to_the_rate(engine):
    v = _versions(engine, ("m1",))
    frames = [_scored(f"cam1/{i:04d}.jpg", v["m1"], T, [("with_mask", 0.99)] * 10) for i in range(1000)]
    _write(engine, frames)
    settings = _settings(review_sample_rate=0.02)
    counts = reviews.queue_counts(engine, settings)
    assert counts["uncertain"] == counts["violation"] == 0
    assert 180 <= counts["sample"] <= 220  # 2% of 10,000 faces
    first = reviews.review_queue(engine, settings, limit=50)
    assert {i.stratum for i in first} == {"sample"} and len(first) == 50
    assert reviews.review_queue(engine, settings, limit=50) == first  # deterministic
    assert reviews.queue_counts(engine, _settings(review_sample_rate=0.0))["sample"] == 0
    assert reviews.queue_counts(engine, _settings(review_sample_rate=1.0))["sample"] == 10_000


def _review_step(rng: random.Random, engine: sa.Engine) -> None:
    """A random review of a random face, or an undo of a random live review."""
    with engine.connect() as conn:
        face_ids = conn.scalars(sa.select(schema.Face.id)).all()
        live = conn.scalars(sa.select(schema.FaceReview.id).where(schema.FaceReview.undone_at.is_(None))).all()
    if live and rng.random() < 0.3:
        reviews.undo_review(engine, rng.choice(live), "fuzz")
    elif face_ids:
        label = rng.choice(("with_mask", "without_mask", "partial_mask", "not_a_face", "not_a_face"))
        reviews.record_review(engine, rng.choice(face_ids), "fuzz", label,
                              now=T + timedelta(minutes=rng.randint(0, 30)))


@pytest.mark.timeout(300)
def test_random_reviews_undos_and_writes_keep_the_derived_state(engine):
    rng = random.Random(12)
    versions = list(_versions(engine, ("m1", "m2")).values())
    paths = [f"{cam}/{i:03d}.jpg" for cam in ZONES for i in range(6)]
    for step in range(150):
        if rng.random() < 0.5:
            _fuzz_step(rng, engine, versions, paths)
        else:
            _review_step(rng, engine)
        if step % 15 == 14:
            assert_derived_state(engine)
    assert_derived_state(engine)
    with engine.connect() as conn:
        assert conn.scalar(sa.text("SELECT SUM(n_reviewed) FROM latest_scorings")) > 0
    by_triggers = _snapshot(engine)
    with engine.begin() as conn:
        derived.rebuild(conn)
    assert _snapshot(engine) == by_triggers
    assert_derived_state(engine)


# The index each queue stratum must read (migration 0007): the queue then reads about `limit`
# index entries instead of every unreviewed face (100k faces: a few ms, see the storage report).
QUEUE_INDEXES = {"uncertain": "ix_faces_unreviewed_confidence", "violation": "ix_faces_unreviewed_violation",
                 "sample": "ix_faces_unreviewed_sample"}


def _plan(conn: sa.Connection, stmt: sa.Select[Any]) -> str:
    sql = str(stmt.compile(dialect=conn.dialect, compile_kwargs={"literal_binds": True}))
    if conn.dialect.name == "sqlite":
        return "\n".join(row[-1] for row in conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {sql}"))
    conn.exec_driver_sql("SET LOCAL enable_seqscan = off")  # a tiny table: ask whether the index can serve
    return "\n".join(conn.exec_driver_sql(f"EXPLAIN {sql}").scalars())  # compiled for psycopg: % is %%


def test_each_queue_stratum_reads_its_partial_index(engine, scored):
    settings = _settings()
    with engine.connect() as conn:
        for stratum, (conditions, order) in reviews._stratum_filters(settings).items():
            stmt = reviews._queue_base(None, [1, 2]).where(*conditions).order_by(*order).limit(20)
            plan = _plan(conn, stmt)
            assert QUEUE_INDEXES[stratum] in plan, (stratum, plan)


def test_concurrent_reviews_of_one_frame_all_count(engine):
    """Reviewers deciding on faces of the same frame at once: each write recomputes the frame's
    summary under its lock, so none is lost."""
    import threading

    v = _versions(engine, ("m1",))
    _write(engine, [_scored("cam1/crowd.jpg", v["m1"], T, [("with_mask", 0.9)] * 24)])
    face_ids = _face_ids(engine, "cam1/crowd.jpg")
    errors: list[BaseException] = []

    def reviewer(k: int) -> None:
        try:
            for face_id in face_ids[k::4]:
                reviews.record_review(engine, face_id, f"r{k}", "without_mask" if k % 2 else "not_a_face")
        except BaseException as exc:  # noqa: BLE001 - re-raised in the main thread
            errors.append(exc)

    threads = [threading.Thread(target=reviewer, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert _view(engine, "SELECT n_faces, n_with_mask, n_without_mask, n_reviewed, n_changed "
                         "FROM image_predictions") == [(12, 0, 12, 24, 24)]
    assert_derived_state(engine)
