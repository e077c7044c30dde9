"""Local time end to end: camera zones for naive names and EXIF, DST days, date-folder
discovery, and the views' local day and wall time after a real scoring run on both databases."""

from __future__ import annotations

import os
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa
from PIL import ExifTags, Image

from maskjob.config import replace
from maskjob.scoring.frames import discover_frames, scan_inbox
from maskjob.scoring.score import score
from maskjob.storage import database, schema
from maskjob.storage.cameras import CameraZones, add_camera, list_cameras
from maskjob.timeutil import zone
from tests.scoring.test_score import score_settings, use_champion

SITE = "America/Chicago"  # UTC-6 in November, UTC-5 in summer
KOLKATA = "Asia/Kolkata"  # UTC+05:30, no DST
BERLIN = "Europe/Berlin"  # 2026-03-29 has 23 hours, 2026-10-25 has 25


def _jpeg(path: Path, exif_time: str | None = None, exif_offset: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    exif = Image.Exif()
    if exif_time:
        exif.get_ifd(ExifTags.IFD.Exif)[ExifTags.Base.DateTimeOriginal] = exif_time
    if exif_offset:
        exif.get_ifd(ExifTags.IFD.Exif)[ExifTags.Base.OffsetTimeOriginal] = exif_offset
    Image.fromarray(np.full((48, 64, 3), 120, np.uint8)).save(path, exif=exif)
    return path


def _zones() -> CameraZones:
    return CameraZones({"kol": zone(KOLKATA), "ber": zone(BERLIN)}, zone(SITE))


def _utc(*args: int) -> datetime:
    return datetime(*args)  # Frame.captured_at is the instant as naive UTC


def test_naive_names_and_exif_are_read_in_the_camera_zone(tmp_path):
    inbox = tmp_path / "inbox"
    _jpeg(inbox / "lobby" / "20261124T071500.jpg")  # unknown camera: the site zone
    _jpeg(inbox / "kol" / "20261124T071500.jpg")  # naive name: Kolkata wall time
    _jpeg(inbox / "kol" / "20261124T081500+0100.jpg")  # offset in the name: absolute
    _jpeg(inbox / "kol" / "20261124T091500Z.jpg")
    _jpeg(inbox / "kol" / "20261124T101500-0530.jpg")
    _jpeg(inbox / "kol" / "20261124T111500.250+0100.jpg")  # ingest's sub-second names keep their offset
    _jpeg(inbox / "kol" / "exif_naive.jpg", exif_time="2026:11:24 09:30:00")  # EXIF wall time
    _jpeg(inbox / "kol" / "exif_zoned.jpg", exif_time="2026:11:24 09:30:00", exif_offset="-05:00")
    mtime = _jpeg(inbox / "kol" / "no_time.jpg")
    stamp = datetime(2026, 11, 24, 3, 4, 5, tzinfo=UTC).timestamp()
    os.utime(mtime, (stamp, stamp))

    got = {f.rel_path: (f.captured_at, f.time_source) for f in discover_frames(inbox, zones=_zones())}
    assert got == {
        "lobby/20261124T071500.jpg": (_utc(2026, 11, 24, 13, 15), "name"),
        "kol/20261124T071500.jpg": (_utc(2026, 11, 24, 1, 45), "name"),
        "kol/20261124T081500+0100.jpg": (_utc(2026, 11, 24, 7, 15), "name"),
        "kol/20261124T091500Z.jpg": (_utc(2026, 11, 24, 9, 15), "name"),
        "kol/20261124T101500-0530.jpg": (_utc(2026, 11, 24, 15, 45), "name"),
        "kol/20261124T111500.250+0100.jpg": (_utc(2026, 11, 24, 10, 15), "name"),
        "kol/exif_naive.jpg": (_utc(2026, 11, 24, 4, 0), "exif"),
        "kol/exif_zoned.jpg": (_utc(2026, 11, 24, 14, 30), "exif"),
        "kol/no_time.jpg": (_utc(2026, 11, 24, 3, 4, 5), "mtime"),  # mtime is absolute
    }
    # Without zones every camera is UTC, as before cameras had zones.
    plain = {f.rel_path: f.captured_at for f in discover_frames(inbox)}
    assert plain["kol/20261124T071500.jpg"] == _utc(2026, 11, 24, 7, 15)
    assert plain["kol/exif_zoned.jpg"] == _utc(2026, 11, 24, 14, 30)


def test_dst_gaps_and_repeats_in_naive_times(tmp_path):
    inbox = tmp_path / "inbox"
    _jpeg(inbox / "ber" / "20260329T023000.jpg")  # does not exist in Berlin: moved forward to 03:30 CEST
    _jpeg(inbox / "ber" / "20261025T023000.jpg")  # happens twice: the first (CEST) is taken
    _jpeg(inbox / "ber" / "20261025T033000.jpg")  # after the change: CET
    got = {f.rel_path.split("/")[1]: f.captured_at for f in discover_frames(inbox, zones=_zones())}
    assert got == {"20260329T023000.jpg": _utc(2026, 3, 29, 1, 30), "20261025T023000.jpg": _utc(2026, 10, 25, 0, 30),
                   "20261025T033000.jpg": _utc(2026, 10, 25, 2, 30)}


def test_date_folders_outside_the_interval_are_not_listed(tmp_path, monkeypatch):
    inbox = tmp_path / "inbox"
    for day in ("2025-01-01", "2026-11-20", "2026-11-23", "2026-11-24", "2026-11-25", "2026-11-27"):
        _jpeg(inbox / "kol" / day / f"{day.replace('-', '')}T000100+0530.jpg")
    _jpeg(inbox / "kol" / "20261124T120000.jpg")  # flat frames next to date folders still count
    _jpeg(inbox / "kol" / "misc" / "20261124T130000.jpg")  # so do frames in other folders
    _jpeg(inbox / "kol" / "2026-13-45" / "20261124T140000.jpg")  # not a real date: walked
    listed: list[str] = []
    real_scandir = os.scandir

    def recording(path):
        listed.append(Path(path).relative_to(inbox).as_posix())
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", recording)
    # [2026-11-24 00:00 UTC, 2026-11-25 00:00 UTC) is 05:30 on the 24th to 05:30 on the 25th in Kolkata.
    frames = discover_frames(inbox, datetime(2026, 11, 24, tzinfo=UTC), datetime(2026, 11, 25, tzinfo=UTC),
                             zones=_zones())
    assert sorted(listed) == [".", "kol", "kol/2026-11-23", "kol/2026-11-24", "kol/2026-11-25", "kol/2026-13-45",
                              "kol/misc"]
    assert sorted(f.rel_path for f in frames) == [
        "kol/2026-11-25/20261125T000100+0530.jpg",  # 18:31 UTC on the 24th
        "kol/2026-13-45/20261124T140000.jpg", "kol/20261124T120000.jpg", "kol/misc/20261124T130000.jpg"]
    listed.clear()
    assert len(scan_inbox(inbox, zones=_zones()).frames) == 9  # an open interval walks every folder
    assert "kol/2025-01-01" in listed


@pytest.fixture
def local_inbox(tmp_path) -> Path:
    """Frames of three cameras: 'lobby' (not registered: the site zone), 'kol' (Kolkata) and
    'ber' (Berlin), hourly across both 2026 DST changes."""
    inbox = tmp_path / "inbox"
    _jpeg(inbox / "lobby" / "20261124T233000.jpg")  # 05:30 UTC on the 25th, local day the 24th
    _jpeg(inbox / "kol" / "20261124T003000.jpg")  # 19:00 UTC on the 23rd, local day the 24th
    _jpeg(inbox / "kol" / "exif.jpg", exif_time="2026:11:24 23:50:00")  # local day the 24th
    for start, hours in ((datetime(2026, 3, 28, 20), 31), (datetime(2026, 10, 24, 18), 34)):
        for h in range(hours):
            _jpeg(inbox / "ber" / f"{start + timedelta(hours=h):%Y%m%dT%H%M%S}Z.jpg")
    return inbox


def _rows(url: str, sql: str) -> list[sa.Row]:
    engine = database.open_database(url)
    try:
        with engine.connect() as conn:
            return conn.execute(sa.text(sql)).all()
    finally:
        engine.dispose()


@pytest.mark.timeout(300)
def test_scoring_stores_local_facts_and_views_count_local_days(migrated_db_url, tiny_demo, tiny_checkpoints,
                                                               local_inbox):
    use_champion(migrated_db_url, tiny_checkpoints["cnn"])
    settings = replace(score_settings(tiny_demo.settings, score_batch_frames=16), site_timezone=SITE,
                       database_url=migrated_db_url)
    engine = database.make_engine(migrated_db_url)
    try:
        with engine.begin() as conn:
            add_camera(conn, "kol", timezone=KOLKATA, display_name="Gate", settings=settings)
            add_camera(conn, "ber", timezone=BERLIN, settings=settings)
        summary = score(engine, settings, local_inbox)
        with engine.connect() as conn:
            cameras = {c.camera_id: c for c in list_cameras(conn)}
    finally:
        engine.dispose()
    assert summary.n_frames == 3 + 31 + 34 and summary.n_unreadable == 0
    assert set(cameras) == {"ber", "kol", "lobby"}
    lobby = cameras["lobby"]
    assert (lobby.timezone, lobby.auto_registered, lobby.compliance_target) == (SITE, True, 0.9)
    assert not cameras["kol"].auto_registered and cameras["kol"].display_name == "Gate"

    local = {r.image_path: r for r in _rows(migrated_db_url, "SELECT image_path, captured_at, captured_local, "
                                                             "timezone, local_day FROM image_predictions")}
    sqlite = migrated_db_url.startswith("sqlite")
    expected = {  # path -> (UTC instant, local wall time, offset, zone, local day)
        "lobby/20261124T233000.jpg": (datetime(2026, 11, 25, 5, 30), datetime(2026, 11, 24, 23, 30), "-06:00", SITE),
        "kol/20261124T003000.jpg": (datetime(2026, 11, 23, 19, 0), datetime(2026, 11, 24, 0, 30), "+05:30", KOLKATA),
        "kol/exif.jpg": (datetime(2026, 11, 24, 18, 20), datetime(2026, 11, 24, 23, 50), "+05:30", KOLKATA),
        # 02:00 local twice: first in summer time, an hour later in winter time.
        "ber/20261025T000000Z.jpg": (datetime(2026, 10, 25, 0), datetime(2026, 10, 25, 2), "+02:00", BERLIN),
        "ber/20261025T010000Z.jpg": (datetime(2026, 10, 25, 1), datetime(2026, 10, 25, 2), "+01:00", BERLIN),
        "ber/20260329T010000Z.jpg": (datetime(2026, 3, 29, 1), datetime(2026, 3, 29, 3), "+02:00", BERLIN),
    }
    for path, (instant, wall, offset, tz) in expected.items():
        row = local[path]
        captured = row.captured_at
        if isinstance(captured, str):  # raw SQL on SQLite: the stored text, explicitly UTC
            assert captured == f"{instant:%Y-%m-%d %H:%M:%S}.000000+00:00", path
        else:
            assert captured == instant.replace(tzinfo=UTC), path
        if sqlite:
            assert row.captured_local == f"{wall:%Y-%m-%d %H:%M:%S}{offset}", path
        else:
            assert row.captured_local == wall, path
        assert row.timezone == tz and str(row.local_day) == f"{wall:%Y-%m-%d}", path

    daily = {(str(r.day), r.camera_id): (r.images, r.timezone)
             for r in _rows(migrated_db_url, "SELECT day, camera_id, images, timezone FROM daily_compliance")}
    assert daily[("2026-11-24", "lobby")] == (1, SITE)  # its UTC day is the 25th
    assert daily[("2026-11-24", "kol")] == (2, KOLKATA)  # UTC days 23rd and 24th
    assert daily[("2026-03-29", "ber")] == (23, BERLIN)  # the local day has 23 hours
    assert daily[("2026-10-25", "ber")] == (25, BERLIN)  # and this one 25
    assert sum(n for (_, cam), (n, _) in daily.items() if cam == "ber") == 31 + 34
    assert daily[("2026-03-28", "ber")][0] == 3 and daily[("2026-03-30", "ber")][0] == 5
    # A typed query reads the local day as a date on both databases.
    dc = schema.daily_compliance
    engine = database.open_database(migrated_db_url)
    try:
        with engine.connect() as conn:
            days = conn.execute(sa.select(dc.c.day).where(dc.c.camera_id == "ber", dc.c.day >= date(2026, 10, 25))
                                .order_by(dc.c.day)).scalars().all()
    finally:
        engine.dispose()
    assert days == [date(2026, 10, 25), date(2026, 10, 26)]
