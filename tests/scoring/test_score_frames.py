"""Frame discovery: camera ids, capture-time precedence, [since, until), order, shards."""

from __future__ import annotations

import os
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pytest
from PIL import ExifTags, Image

from maskjob.errors import MaskjobError
from maskjob.scoring.frames import capture_time, discover_frames, name_timestamp, shard_frames
from maskjob.timeutil import to_naive_utc

UTC = timezone.utc


def _utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def _jpeg(path: Path, exif_time: str | None = None, exif_offset: str | None = None, mtime: datetime | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    exif = Image.Exif()
    if exif_time:
        exif.get_ifd(ExifTags.IFD.Exif)[ExifTags.Base.DateTimeOriginal] = exif_time
    if exif_offset:
        exif.get_ifd(ExifTags.IFD.Exif)[ExifTags.Base.OffsetTimeOriginal] = exif_offset
    Image.fromarray(np.full((24, 32, 3), 128, np.uint8)).save(path, exif=exif)
    if mtime is not None:
        stamp = mtime.replace(tzinfo=timezone.utc).timestamp()
        os.utime(path, (stamp, stamp))
    return path


@pytest.mark.parametrize(
    "name, expected",
    [
        ("20261124T071500.jpg", datetime(2026, 11, 24, 7, 15)),
        ("cam3_2026-11-24_07-15-00.jpg", datetime(2026, 11, 24, 7, 15)),
        ("20261124_071500.png", datetime(2026, 11, 24, 7, 15)),
        ("IMG_20261124-071500.jpeg", datetime(2026, 11, 24, 7, 15)),
        ("2026-11-24T07:15:00Z.jpg", _utc(2026, 11, 24, 7, 15)),  # with an offset: aware UTC
        ("20261124T071500+0100.jpg", _utc(2026, 11, 24, 6, 15)),
        ("20261124T071500-0530.jpg", _utc(2026, 11, 24, 12, 45)),
        ("20261124T071500-0001.jpg", datetime(2026, 11, 24, 7, 15)),  # a counter, not an offset
        ("20261399T000000_20261124T071500.jpg", datetime(2026, 11, 24, 7, 15)),  # first is no date
        ("frame_0001.jpg", None),
        ("20261124071500123.jpg", None),  # digits run on: not a time stamp
    ],
)
def test_name_timestamp_formats(name, expected):
    assert name_timestamp(name) == expected


def test_capture_time_precedence_exif_then_name_then_mtime(tmp_path):
    mtime = datetime(2026, 1, 2, 3, 4, 5)
    both = _jpeg(tmp_path / "20261124T071500.jpg", exif_time="2026:11:24 09:30:00", mtime=mtime)
    name_only = _jpeg(tmp_path / "20261124T071500b.jpg", mtime=mtime)
    neither = _jpeg(tmp_path / "frame.jpg", mtime=mtime)
    assert capture_time(both) == (datetime(2026, 11, 24, 9, 30), "exif")
    assert capture_time(name_only) == (datetime(2026, 11, 24, 7, 15), "name")
    assert capture_time(neither) == (mtime, "mtime")


def test_exif_offset_is_converted_to_utc(tmp_path):
    path = _jpeg(tmp_path / "x.jpg", exif_time="2026:11:24 09:30:00", exif_offset="+02:00")
    assert capture_time(path) == (datetime(2026, 11, 24, 7, 30), "exif")


def test_unparseable_exif_falls_back_to_name(tmp_path):
    path = _jpeg(tmp_path / "20261124T071500.jpg", exif_time="not a date")
    assert capture_time(path) == (datetime(2026, 11, 24, 7, 15), "name")


def test_discover_cameras_interval_and_order(tmp_path):
    inbox = tmp_path / "inbox"
    for camera in ("cam_b", "cam_a"):
        for minute in (0, 30, 59):
            _jpeg(inbox / camera / f"20261124T07{minute:02d}00.jpg")
    _jpeg(inbox / "cam_a" / "20261124T080000.jpg")  # == until: excluded
    _jpeg(inbox / "cam_a" / "20261124T065959.jpg")  # before since: excluded
    _jpeg(inbox / "root_20261124T071000.jpg")  # directly in the inbox
    _jpeg(inbox / ".partial" / "20261124T071000.jpg")  # hidden folder: ignored
    _jpeg(inbox / "cam_a" / ".20261124T071000.jpg")  # hidden file: ignored
    (inbox / "ground_truth.csv").write_text("image,x1\n")
    (inbox / "cam_a" / "notes.txt").write_text("x")

    frames = discover_frames(inbox, datetime(2026, 11, 24, 7), datetime(2026, 11, 24, 8))

    assert [f.rel_path for f in frames] == [
        "cam_a/20261124T070000.jpg", "cam_b/20261124T070000.jpg", "root_20261124T071000.jpg",
        "cam_a/20261124T073000.jpg", "cam_b/20261124T073000.jpg",
        "cam_a/20261124T075900.jpg", "cam_b/20261124T075900.jpg",
    ]
    assert {f.camera_id for f in frames} == {"cam_a", "cam_b", "unknown"}
    assert all(f.time_source == "name" and f.path.is_file() for f in frames)
    assert len(discover_frames(inbox)) == 9


def test_discover_accepts_aware_bounds(tmp_path):
    inbox = tmp_path / "inbox"
    _jpeg(inbox / "cam" / "20261124T070000.jpg")
    plus2 = timezone(timedelta(hours=2))
    assert len(discover_frames(inbox, since=datetime(2026, 11, 24, 9, tzinfo=plus2))) == 1
    assert discover_frames(inbox, since=datetime(2026, 11, 24, 9, 0, 1, tzinfo=plus2)) == []
    assert to_naive_utc(datetime(2026, 11, 24, 9, tzinfo=plus2)) == datetime(2026, 11, 24, 7)


def test_missing_inbox_is_an_actionable_error(tmp_path):
    with pytest.raises(MaskjobError, match="--inbox"):
        discover_frames(tmp_path / "nope")


def test_outside_symlink_is_listed_without_reading_its_target(tmp_path):
    outside = _jpeg(tmp_path / "secret.jpg", exif_time="2020:01:01 00:00:00")
    inbox = tmp_path / "inbox"
    (inbox / "cam").mkdir(parents=True)
    (inbox / "cam" / "20261124T070000.jpg").symlink_to(outside)
    (frame,) = discover_frames(inbox)
    assert frame.captured_at == datetime(2026, 11, 24, 7) and frame.time_source == "name"


def test_shards_partition_frames_stably(tmp_path):
    inbox = tmp_path / "inbox"
    for i in range(40):
        _jpeg(inbox / f"cam{i % 3}" / f"20261124T07{i:02d}00.jpg")
    frames = discover_frames(inbox)
    parts = [shard_frames(frames, i, 3) for i in range(3)]
    paths = [f.rel_path for part in parts for f in part]
    assert sorted(paths) == sorted(f.rel_path for f in frames) and len(set(paths)) == 40
    assert all(part for part in parts)
    # The assignment depends only on the relative path, not on which other frames exist.
    assert [f.rel_path for f in shard_frames(frames[::2], 1, 3)] == [f.rel_path for f in parts[1] if f in frames[::2]]
    assert shard_frames(frames, 0, 1) == frames
    with pytest.raises(MaskjobError, match="shard"):
        shard_frames(frames, 3, 3)
