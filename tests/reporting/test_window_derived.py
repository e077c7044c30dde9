"""The report's window from the derived state equals the superseded-rows implementation it replaced.

One database per test, on SQLite and PostgreSQL, written through the scorer's own writer
(:func:`maskjob.storage.writes.insert_scored_images`, so the database triggers keep
``latest_scorings`` and ``hourly_counts``): two cameras in Asia/Kathmandu (UTC+05:45, so a
local day starts and ends mid-hour), a frame every 7 minutes over three days, scored by an
old model, rescored by a newer one, a few scored last by another old model (a backfill), a
frame whose newer unreadable scoring was deleted and written again (``--retry-unreadable``)
and one whose newer scoring was deleted outright (the older one counts again). Then reviews
(:mod:`maskjob.storage.reviews`): every label, not_a_face included, a face reviewed twice, undone
reviews, a frame whose faces are all not a face, and a face of a superseded scoring. Every
window is compared with :func:`tests.reporting.superseded_window.load_window_superseded`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pandas as pd
import pytest
import sqlalchemy as sa

from maskjob import CLASSES
from maskjob.vocab import REVIEW_LABELS

pytestmark = pytest.mark.timeout(180)

ZONE = "Asia/Kathmandu"
TZ = ZoneInfo(ZONE)
CAMERAS = ("gate", "hall")
FIRST = datetime(2026, 11, 22, 17, 3)  # UTC; three days of frames from here
STEP = timedelta(minutes=7)
N_FRAMES = 3 * 24 * 60 // 7
SCORED = datetime(2026, 11, 26)
REASONS = ("{path}: empty file (0 bytes)", "corrupt or truncated image (broken data)", None)


@dataclass(frozen=True)
class Db:
    engine: Any
    versions: dict[str, int]


def _local_midnight_utc(day: int) -> datetime:
    """Naive UTC of the local midnight starting 2026-11-``day`` in Kathmandu."""
    local = datetime.combine(datetime(2026, 11, day).date(), time(), tzinfo=TZ)
    return local.astimezone(UTC).replace(tzinfo=None)


def _faces(n: int, model: str) -> list[dict[str, Any]]:
    """0-3 faces; labels and confidences depend on the frame and the model (ties included)."""
    faces = []
    for k in range(n % 4):
        label = CLASSES[(n + k + (model == "new")) % 3]
        confidence = 0.5 + 0.05 * ((n * 7 + k * 3 + len(model)) % 10)
        p = {f"p_{c}": confidence if c == label else (1 - confidence) / 2 for c in CLASSES}
        faces.append({"face_index": k, "x1": 10 + 40 * k, "y1": 10, "x2": 40 + 40 * k, "y2": 50,
                      "detector_score": 0.9, "label": label, "confidence": confidence, **p})
    return faces


def _row(n: int, model: str, versions: dict[str, int], scored_at: datetime, status: str | None = None,
         ) -> dict[str, Any]:
    camera = CAMERAS[n % 2]
    when = FIRST + n * STEP
    path = f"{camera}/{when:%Y%m%dT%H%M}.jpg"
    if status is None:
        status = "unreadable" if n % 11 == 5 else "no_face" if n % 4 == 0 else "ok"
    faces = _faces(n, model) if status == "ok" else []
    reason = REASONS[n % 3] if status == "unreadable" else None
    return {"path": path, "camera_id": camera, "captured_at": when.replace(tzinfo=UTC), "width": 320, "height": 240,
            "status": status, "reason": reason.format(path=f"/srv/inbox/{path}") if reason else None,
            "n_faces": len(faces), "model_version_id": versions[model], "scored_at": scored_at.replace(tzinfo=UTC),
            "timezone": ZONE, "faces": faces}


def _build(db_url: str) -> Db:
    from maskjob.storage import database, schema
    from maskjob.storage.writes import insert_scored_images

    database.upgrade(db_url)
    engine = database.make_engine(db_url)
    versions = {}
    with database.session(engine) as s:
        for i, (name, arch) in enumerate((("old", "cnn"), ("new", "mobilenet_v2"), ("backfill", "cnn"))):
            version = schema.ModelVersion(version=f"{arch}-000{i + 1}", arch=arch, checkpoint_path=f"/m/{name}.pt",
                                          checkpoint_sha256=str(i) * 64, metrics={}, test_macro_f1=0.8, diverged=False,
                                          created_at=datetime(2026, 11, 1, tzinfo=UTC),
                                          status="champion" if name == "new" else "retired")
            s.add(version)
            s.flush()
            versions[name] = version.id
    with engine.begin() as conn:
        insert_scored_images(conn, [_row(n, "old", versions, SCORED) for n in range(N_FRAMES)])
        # The newer model rescored two frames in three, a day later.
        insert_scored_images(conn, [_row(n, "new", versions, SCORED + timedelta(days=1))
                                    for n in range(N_FRAMES) if n % 3])
        # An older model scored a few frames last (a backfill): its scoring counts for them.
        insert_scored_images(conn, [_row(n, "backfill", versions, SCORED + timedelta(days=2))
                                    for n in range(1, N_FRAMES, 29)])
    retried = next(n for n in range(N_FRAMES) if n % 3 and _row(n, "new", versions, SCORED)["status"] == "unreadable")
    dropped = next(n for n in range(N_FRAMES // 2, N_FRAMES) if n % 3 and n % 4 and n % 11 != 5)
    with engine.begin() as conn:
        # --retry-unreadable: the unreadable row goes, its new scoring comes in the same transaction.
        conn.execute(sa.delete(schema.Image).where(
            schema.Image.model_version_id == versions["new"], schema.Image.status == "unreadable",
            schema.Image.path == _row(retried, "new", versions, SCORED)["path"]))
        insert_scored_images(conn, [_row(retried, "new", versions, SCORED + timedelta(days=3), status="ok")])
    with engine.begin() as conn:
        # The newer scoring of a frame deleted: the old model's counts again.
        conn.execute(sa.delete(schema.Image).where(
            schema.Image.model_version_id == versions["new"],
            schema.Image.path == _row(dropped, "new", versions, SCORED)["path"]))
    _review(engine)
    return Db(engine, versions)


def _review(engine: Any) -> None:
    """Reviews of every sixth face that counts, through the storage API (its triggers and summaries)."""
    from maskjob.storage.reviews import record_review, undo_review
    from maskjob.storage.schema import Face, LatestScoring

    with engine.connect() as conn:
        counting = conn.execute(sa.select(Face.id, Face.image_id, LatestScoring.n_faces)
                                .join(LatestScoring, LatestScoring.image_id == Face.image_id).order_by(Face.id)).all()
        superseded = conn.execute(sa.select(sa.func.min(Face.id)).where(
            Face.image_id.not_in(sa.select(LatestScoring.image_id)))).scalar_one()
    now = SCORED + timedelta(days=4)
    strata = ("uncertain", "violation", "sample", "other")
    for i, (face_id, _, _) in enumerate(counting[::6]):
        review_id = record_review(engine, face_id, "rita", REVIEW_LABELS[i % 4], stratum=strata[i % 4],
                                  now=now + timedelta(minutes=i))
        if i % 7 == 3:
            undo_review(engine, review_id, "rita", now=now + timedelta(minutes=i, seconds=30))
        if i % 5 == 1:  # reviewed again: the latest review wins
            record_review(engine, face_id, "sam", REVIEW_LABELS[(i + 1) % 4], stratum=strata[i % 4],
                          now=now + timedelta(minutes=i, seconds=40))
    two_faced = next(image_id for _, image_id, n in counting if n == 2)
    for face_id in (f for f, image_id, _ in counting if image_id == two_faced):
        record_review(engine, face_id, "rita", "not_a_face", stratum="other", now=now + timedelta(hours=1))
    record_review(engine, superseded, "rita", "not_a_face", now=now + timedelta(hours=2))


@pytest.fixture
def db(db_url: str):
    built = _build(db_url)
    yield built
    built.engine.dispose()


def _assert_same(new: Any, old: Any) -> None:
    for name in ("current", "previous", "status_counts", "review_total", "reviewed"):
        assert getattr(new, name) == getattr(old, name), name
    for name in ("cameras", "series", "reasons", "models", "gallery", "review"):
        pd.testing.assert_frame_equal(getattr(new, name), getattr(old, name), check_dtype=False, obj=name)


WINDOWS = {
    "a Kathmandu local day (starts and ends at :15 UTC)": (_local_midnight_utc(24), _local_midnight_utc(25)),
    "two Kathmandu local days": (_local_midnight_utc(23), _local_midnight_utc(25)),
    "a UTC day": (datetime(2026, 11, 24), datetime(2026, 11, 25)),
    "within one UTC hour": (datetime(2026, 11, 24, 10, 5), datetime(2026, 11, 24, 10, 50)),
    "ends on a whole hour": (datetime(2026, 11, 24, 9, 40), datetime(2026, 11, 24, 12)),
    "everything": (datetime(2026, 11, 20), datetime(2026, 11, 27)),
}


@pytest.mark.parametrize("window", list(WINDOWS))
def test_window_equals_the_superseded_rows_implementation(db: Db, window: str) -> None:
    from maskjob.reporting.compliance_data import load_window
    from tests.reporting.superseded_window import load_window_superseded

    start, end = WINDOWS[window]
    for camera in (None, "hall"):
        kwargs = {"camera": camera, "gallery_cap": 3, "review_threshold": 0.7, "review_cap": 4, "zone": ZONE}
        new = load_window(db.engine, start, end, **kwargs)
        old = load_window_superseded(db.engine, start, end, **kwargs)
        assert old.current.frames > 0 and old.reviewed > 0
        _assert_same(new, old)


@pytest.mark.parametrize("window", list(WINDOWS))
def test_review_strata_equal_the_superseded_rows_implementation(db: Db, window: str) -> None:
    """The faces per review stratum that weight the agreement, and the reviews they weight."""
    from maskjob.reporting.compliance_data import load_window
    from maskjob.reporting.figures import review_strata
    from maskjob.storage.reviews import review_stats
    from tests.reporting.superseded_window import review_strata_superseded

    start, end = WINDOWS[window]
    stats = review_stats(db.engine, start, end)
    assert sum(s.reviewed for s in stats) == load_window(db.engine, start, end).reviewed > 0
    cameras = [s.camera_id for s in stats]
    with db.engine.connect() as conn:
        new = review_strata(conn, start, end, cameras, 0.7)
    old = review_strata_superseded(db.engine, start, end, cameras, 0.7)
    assert len(new) == len(cameras)
    pd.testing.assert_frame_equal(new, old, check_dtype=False)


def test_figures_window_equals_the_superseded_rows_implementation(db: Db) -> None:
    """``load_figures``' call (no gallery, no review queue) gives the same numbers too."""
    from maskjob.reporting.compliance_data import load_window
    from tests.reporting.superseded_window import load_window_superseded

    start, end = WINDOWS["a Kathmandu local day (starts and ends at :15 UTC)"]
    kwargs = {"gallery_cap": 0, "review_cap": 0, "review_threshold": 0.7}
    _assert_same(load_window(db.engine, start, end, **kwargs), load_window_superseded(db.engine, start, end, **kwargs))


def test_partial_hours_at_both_ends_are_counted(db: Db) -> None:
    """The Kathmandu day's first and last 45/15 minutes hold frames, and the totals include them."""
    from maskjob.reporting.compliance_data import hour_spans, load_window
    from maskjob.storage.schema import LatestScoring

    start, end = WINDOWS["a Kathmandu local day (starts and ends at :15 UTC)"]
    whole, edges = hour_spans(start, end)
    assert whole == (start + timedelta(minutes=45), end - timedelta(minutes=15))
    assert edges == [(start, whole[0]), (whole[1], end)]
    with db.engine.connect() as conn:
        def frames(lo: datetime, hi: datetime) -> int:
            return conn.execute(sa.select(sa.func.count()).select_from(LatestScoring).where(
                LatestScoring.captured_at >= lo, LatestScoring.captured_at < hi)).scalar_one()

        assert all(frames(lo, hi) > 0 for lo, hi in edges)
        expected = frames(start, end)
    assert load_window(db.engine, start, end).current.frames == expected


def test_hour_spans_of_whole_and_partial_windows() -> None:
    from maskjob.reporting.compliance_data import hour_spans

    day = datetime(2026, 11, 24)
    assert hour_spans(day, day + timedelta(days=1)) == ((day, day + timedelta(days=1)), [])
    assert hour_spans(day + timedelta(minutes=5), day + timedelta(minutes=50)) == (
        None, [(day + timedelta(minutes=5), day + timedelta(minutes=50))])
    assert hour_spans(day + timedelta(minutes=5), day + timedelta(hours=1)) == (
        None, [(day + timedelta(minutes=5), day + timedelta(hours=1))])
    assert hour_spans(day, day + timedelta(hours=2, minutes=30)) == (
        (day, day + timedelta(hours=2)), [(day + timedelta(hours=2), day + timedelta(hours=2, minutes=30))])
