"""``maskjob ingest`` of video files: the demo's CCTV footage, capture times, kill and resume."""

from __future__ import annotations

import os
import signal
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from PIL import Image

from maskjob.cli import main
from maskjob.scoring.frames import scan_inbox
from maskjob.timeutil import to_naive_utc
from tests.fixtures.streams import VTEST
from tests.ingest.helpers import exif_time, frames, name_time, names, run_ingest, start_ingest, wait_for_frames

pytestmark = pytest.mark.timeout(120)


def _clip(tmp_path: Path, seconds: float, creation_time: str | None = None) -> Path:
    """A ``seconds`` long 10 fps test pattern as a Matroska file (MJPEG), with a creation_time tag or none."""
    out = tmp_path / "clip.mkv"
    meta = ["-metadata", f"creation_time={creation_time}"] if creation_time else []
    subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-f", "lavfi", "-i", "testsrc=size=192x144:rate=10",
                    "-t", str(seconds), "-c:v", "mjpeg", "-q:v", "8", *meta, str(out)],
                   check=True, timeout=60)
    return out


def test_vtest_every_2s_lands_in_dated_folders_with_exif_times(tmp_path, capsys):
    data = tmp_path / "data"
    # 23:59 Berlin time: the 79.5 s of footage cross local midnight after 60 s.
    rc = main(["--data-dir", str(data), "ingest", str(VTEST), "--camera", "cam-1", "--every", "2",
               "--start", "2026-11-24T23:59:00", "--timezone", "Europe/Berlin"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    inbox = data / "inbox"
    got = frames(inbox)
    assert len(got) == 40  # 0, 2, ..., 78 s
    assert out.splitlines() == [
        f"ingest {VTEST} -> cam-1 (Europe/Berlin): 40 frames written, 0 skipped, 0 reconnects (file finished); "
        "cam-1/2026-11-24/20261124T235900+0100.jpg .. cam-1/2026-11-25/20261125T000018+0100.jpg"]
    assert err == ""
    start = datetime(2026, 11, 24, 22, 59, tzinfo=UTC)
    expected = [start + timedelta(seconds=2 * k) for k in range(40)]
    assert [name_time(p) for p in got] == expected
    assert [exif_time(p) for p in got] == expected
    assert {p.parent.relative_to(inbox).as_posix() for p in got} == {"cam-1/2026-11-24", "cam-1/2026-11-25"}
    assert len(list((inbox / "cam-1" / "2026-11-24").glob("*.jpg"))) == 30
    for path in got:
        with Image.open(path) as img:
            img.load()
            assert (img.format, img.size) == ("JPEG", (768, 576))
    # Only the resume state is hidden; no temporary file is left.
    hidden = [p.name for p in inbox.rglob(".*")]
    assert len(hidden) == 1 and hidden[0].endswith(".json"), hidden

    scan = scan_inbox(inbox)
    assert scan.warnings == []
    assert [f.camera_id for f in scan.frames] == ["cam-1"] * 40
    # Naive UTC, or aware once the scanner keeps zones: the same instants either way.
    assert [to_naive_utc(f.captured_at) for f in scan.frames] == [to_naive_utc(t) for t in expected]
    assert {f.time_source for f in scan.frames} == {"exif"}

    # A rerun of a finished file writes nothing.
    assert main(["--data-dir", str(data), "ingest", str(VTEST), "--camera", "cam-1", "--every", "2",
                 "--start", "2026-11-24T23:59:00", "--timezone", "Europe/Berlin"]) == 0
    assert "0 frames written" in capsys.readouterr().out
    assert len(frames(inbox)) == 40


def test_container_creation_time_across_a_dst_change(tmp_path, capsys):
    # Berlin goes from +01:00 to +02:00 at 01:00 UTC on 2026-03-29.
    clip = _clip(tmp_path, 6, creation_time="2026-03-29T00:59:57Z")
    rc = main(["--data-dir", str(tmp_path / "data"), "ingest", f"file:{clip}", "--camera", "door",
               "--every", "2", "--timezone", "Europe/Berlin"])
    assert rc == 0, capsys.readouterr().err
    assert sorted(names(tmp_path / "data" / "inbox")) == [
        "door/2026-03-29/20260329T015957+0100.jpg",
        "door/2026-03-29/20260329T015959+0100.jpg",
        "door/2026-03-29/20260329T030001+0200.jpg",
    ]


def test_without_creation_time_the_start_is_mtime_minus_duration(tmp_path):
    clip = _clip(tmp_path, 4)
    end = datetime(2026, 11, 24, 8, 0, 4, tzinfo=UTC)
    os.utime(clip, (end.timestamp(), end.timestamp()))
    done = run_ingest(tmp_path / "data", str(clip), "--camera", "cam-2", "--every", "1",
                      MASKJOB_SITE_TIMEZONE="Asia/Kolkata")
    assert done.returncode == 0, done.stderr
    assert "has no creation time in its container" in done.stderr and "--start" in done.stderr
    assert "Traceback" not in done.stderr
    assert sorted(names(tmp_path / "data" / "inbox")) == [
        f"cam-2/2026-11-24/20261124T13{m}+0530.jpg" for m in ("3000", "3001", "3002", "3003")]
    # No camera registry and no database: the zone is site_timezone, and no database is created.
    assert not (tmp_path / "data" / "maskjob.db").exists()


def test_kill_in_the_middle_then_resume_equals_an_uninterrupted_run(tmp_path):
    args = ("--camera", "cam-k", "--every", "0.1", "--start", "2026-11-24T07:00:00Z", "--until", "2026-11-24T07:00:20Z")
    whole = run_ingest(tmp_path / "whole", str(VTEST), *args)
    assert whole.returncode == 0, whole.stderr
    expected = names(tmp_path / "whole" / "inbox")
    assert len(expected) == 200 and "cam-k/2026-11-24/20261124T070000.100+0000.jpg" in expected

    data = tmp_path / "data"
    inbox = data / "inbox"
    proc = start_ingest(data, str(VTEST), *args)
    try:
        wait_for_frames(inbox, 60, proc)
        proc.kill()
        proc.communicate(timeout=10)
    finally:
        proc.kill()
    killed_at = len(frames(inbox))
    assert 60 <= killed_at < 200

    # A temporary file of a killed writer (a pid that cannot exist) is cleaned up by the next run.
    stale = inbox / "cam-k" / "2026-11-24" / ".ingest-999999999-20261124T070000.000+0000.jpg.tmp"
    stale.write_bytes(b"half a frame")

    # An interrupt (SIGINT) stops cleanly with the summary and exit 0.
    proc = start_ingest(data, str(VTEST), *args)
    wait_for_frames(inbox, killed_at + 20, proc)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    assert "frames written" in out and "(stopped)" in out, out
    interrupted_at = len(frames(inbox))
    assert killed_at + 20 <= interrupted_at < 200
    assert not stale.exists()

    done = run_ingest(data, str(VTEST), *args)
    assert done.returncode == 0, done.stderr
    assert "(limit)" in done.stdout
    assert names(inbox) == expected
    assert not [p for p in inbox.rglob(".ingest-*.tmp")]
    assert len(scan_inbox(inbox).frames) == 200


@pytest.mark.parametrize("camera", ["..", "a/b", "", ".hidden", "cam 1", "x" * 65])
def test_unsafe_camera_ids_are_refused(tmp_path, capsys, camera):
    rc = main(["--data-dir", str(tmp_path), "ingest", str(VTEST), "--camera", camera, "--every", "2"])
    err = capsys.readouterr().err
    assert rc == 2
    assert "is not a safe folder name" in err and "--camera cam-lobby" in err
    assert not (tmp_path / "inbox").exists() or not any((tmp_path / "inbox").iterdir())


def test_bad_sources_and_options_are_clear_errors(tmp_path, capsys):
    not_video = tmp_path / "notes.avi"
    not_video.write_text("not a video")
    cases = [
        ([str(tmp_path / "missing.mp4")], "does not exist or is not a file"),
        ([str(not_video)], "cannot open"),
        ([str(VTEST), "--timezone", "Mars/Olympus"], "is not an IANA time zone name"),
        ([str(VTEST), "--start", "yesterday"], "is not an ISO 8601 time"),
        (["gopher://camera/1"], "has the scheme 'gopher'"),
    ]
    for argv, message in cases:
        rc = main(["--data-dir", str(tmp_path / "data"), "ingest", *argv, "--camera", "cam", "--every", "2"])
        err = capsys.readouterr().err
        assert rc == 2, argv
        assert message in err and err.startswith("maskjob: error: ") and "Traceback" not in err, err
    with pytest.raises(SystemExit):
        main(["ingest", str(VTEST), "--camera", "cam", "--every", "0"])
    assert "not a positive number of seconds" in capsys.readouterr().err
