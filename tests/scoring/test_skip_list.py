"""The skip-list follows the run's interval: only the path keys of the frames found for the run
are looked up (in chunks, on the unique (path_key, model) index), never the model's history."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest
import sqlalchemy as sa

from maskjob import timeutil
from maskjob.scoring import score as score_module
from maskjob.scoring.frames import discover_frames
from maskjob.scoring.score import SKIP_LOOKUP_KEYS, _scored_keys, score
from maskjob.storage import database, schema, writes
from tests.scoring.test_score import score_settings, use_champion


@pytest.fixture
def champion_url(migrated_db_url, tiny_checkpoints) -> str:
    use_champion(migrated_db_url, tiny_checkpoints["cnn"])
    return migrated_db_url


def old_rows(version_id: int, n: int, status: str = "no_face") -> list[dict]:
    """``n`` image rows of another interval (a year earlier) for ``version_id``."""
    when = datetime(2025, 11, 24, 7)
    return [{"path": f"cam-old/{i:06d}.jpg", "content_sha256": f"{i:064x}", "camera_id": "cam-old",
             "captured_at": when + timedelta(seconds=i), "width": 640, "height": 480, "status": status,
             "reason": "truncated" if status == "unreadable" else None, "n_faces": 0,
             "model_version_id": version_id, "scoring_run_id": None, "scored_at": timeutil.utcnow(), "faces": []}
            for i in range(n)]


class Statements:
    """Every SQL statement an engine sends while listening, with its bound values."""

    def __init__(self, engine: sa.Engine) -> None:
        self.engine, self.seen = engine, []

    def __enter__(self) -> "Statements":
        sa.event.listen(self.engine, "before_cursor_execute", self._record)
        return self

    def __exit__(self, *exc: object) -> None:
        sa.event.remove(self.engine, "before_cursor_execute", self._record)

    def _record(self, conn, cursor, statement, parameters, context, executemany) -> None:
        values = parameters.values() if isinstance(parameters, dict) else parameters
        self.seen.append((statement, [str(v) for v in values or ()]))

    def reading_images(self) -> list[tuple[str, list[str]]]:
        return [(s, p) for s, p in self.seen if s.lstrip().upper().startswith("SELECT") and "path_key" in s
                and "FROM images" in s]


def test_lookup_reads_only_the_given_keys_in_chunks(champion_url):
    engine = database.make_engine(champion_url)
    with engine.connect() as conn:
        version_id = conn.scalar(sa.select(schema.ModelVersion.id))
    with engine.begin() as conn:
        writes.insert_scored_images(conn, old_rows(version_id, 1200))
    history = {writes.path_key(f"cam-old/{i:06d}.jpg") for i in range(1200)}
    wanted = [writes.path_key(f"cam-new/{i:06d}.jpg") for i in range(2 * SKIP_LOOKUP_KEYS + 7)]
    wanted += sorted(history)[:3]  # three of the run's frames were scored before
    with engine.connect() as conn, Statements(engine) as spy:
        done = _scored_keys(conn, version_id, wanted + wanted[:10], retry_unreadable=False)
    engine.dispose()
    assert done == set(sorted(history)[:3])
    reads = spy.reading_images()
    assert len(reads) == 3  # 1010 distinct keys in chunks of 500
    bound = [v for _, values in reads for v in values]
    assert max(len(values) for _, values in reads) <= SKIP_LOOKUP_KEYS + 1  # the keys and the model id
    assert history & set(bound) == set(sorted(history)[:3])  # no other key of the history is asked for


def test_retrying_unreadable_looks_up_the_same_keys_and_leaves_unreadable_rows_to_redo(champion_url):
    engine = database.make_engine(champion_url)
    with engine.connect() as conn:
        version_id = conn.scalar(sa.select(schema.ModelVersion.id))
    with engine.begin() as conn:
        writes.insert_scored_images(conn, old_rows(version_id, 4, status="unreadable"))
    keys = [writes.path_key(f"cam-old/{i:06d}.jpg") for i in range(4)]
    with engine.connect() as conn:
        assert _scored_keys(conn, version_id, keys, retry_unreadable=False) == set(keys)
        assert _scored_keys(conn, version_id, keys, retry_unreadable=True) == set()
        assert _scored_keys(conn, version_id, [], retry_unreadable=False) == set()
    engine.dispose()


def test_a_run_looks_up_its_own_frames_and_still_skips_them(champion_url, tiny_demo, monkeypatch):
    frames = discover_frames(tiny_demo.inbox)
    middle = frames[len(frames) // 2].captured_at
    first_half = {writes.path_key(f.rel_path) for f in frames if f.captured_at < middle}
    second_half = {writes.path_key(f.rel_path) for f in frames if f.captured_at >= middle}
    asked: list[tuple[set[str], set[str]]] = []
    real = score_module._scored_keys

    def spy(conn, model_version_id, keys, *, retry_unreadable):
        done = real(conn, model_version_id, keys, retry_unreadable=retry_unreadable)
        asked.append((set(keys), done))
        return done

    monkeypatch.setattr(score_module, "_scored_keys", spy)
    settings = score_settings(tiny_demo.settings)
    engine = database.make_engine(champion_url)
    first = score(engine, settings, tiny_demo.inbox, until=middle)
    second = score(engine, settings, tiny_demo.inbox, since=middle)
    again = score(engine, settings, tiny_demo.inbox, since=middle)
    everything = score(engine, settings, tiny_demo.inbox)
    engine.dispose()
    assert first.n_frames == len(first_half) and second.n_frames == len(second_half)
    # The second interval's lookup neither asks for nor returns the first interval's rows.
    assert asked[1] == (second_half, set())
    assert asked[2] == (second_half, second_half) and (again.n_frames, again.n_skipped) == (0, len(second_half))
    assert (everything.n_frames, everything.n_skipped) == (0, len(frames))
