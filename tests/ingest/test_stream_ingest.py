"""``maskjob ingest`` of a live HTTP MJPEG stream served by ffmpeg: wall-clock times,
reconnect after the server dies, clean stop on SIGTERM, giving up, credentials never shown."""

from __future__ import annotations

import re
import signal
import time
from datetime import UTC, datetime, timedelta

import pytest

from maskjob.cli import main
from maskjob.ingest.source import Backoff, display_source
from maskjob.scoring.frames import scan_inbox
from tests.fixtures.net import free_port
from tests.ingest.helpers import exif_time, frames, name_time, run_ingest, start_ingest, wait_for_frames

pytestmark = pytest.mark.timeout(120)


def test_live_stream_reconnects_after_the_server_dies_and_stops_on_sigterm(tmp_path, mjpeg_server):
    data, inbox = tmp_path / "data", tmp_path / "data" / "inbox"
    began = datetime.now(UTC)
    proc = start_ingest(data, mjpeg_server.url, "--camera", "gate", "--every", "0.5",
                        "--timezone", "America/New_York")
    try:
        wait_for_frames(inbox, 3, proc)
        mjpeg_server.kill()  # the camera drops off the network mid-stream
        time.sleep(0.3)
        mjpeg_server.start()
        wait_for_frames(inbox, 7, proc)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=20)
    finally:
        proc.kill()
    ended = datetime.now(UTC)
    assert proc.returncode == 0, err
    assert re.fullmatch(r"ingest http://127\.0\.0\.1:\d+/ -> gate \(America/New_York\): (\d+) frames written, "
                        r"0 skipped, 1 reconnects \(stopped\); .*\n", out), out
    assert "reconnect attempt 1 in" in err and "reconnected" in err
    assert "Traceback" not in err and "[ WARN" not in err and "Connection refused" not in err, err

    got = frames(inbox)
    assert len(got) >= 7 and str(len(got)) in out.split(" frames written")[0]
    times = [name_time(p) for p in got]
    assert all(began - timedelta(seconds=1) <= t <= ended for t in times), (began, times, ended)
    assert times == sorted(times) and len(set(times)) == len(times)
    # On a wall-clock grid of 0.5 s: a frame read late (the stream delivers every 0.1 s) does not shift it.
    gaps = sorted((b - a).total_seconds() for a, b in zip(times, times[1:]))
    assert gaps[0] >= 0.3 and 0.45 <= gaps[len(gaps) // 2] <= 0.6, gaps
    assert [exif_time(p) for p in got] == times
    assert all(re.fullmatch(r"\d{8}T\d{6}\.\d{3}-0[45]00\.jpg", p.name) for p in got)
    assert {p.parent.name for p in got} == {f"{t:%Y-%m-%d}" for t in times}
    assert {f.camera_id for f in scan_inbox(inbox).frames} == {"gate"}
    assert len(scan_inbox(inbox).frames) == len(got)


def test_gives_up_after_max_retries_with_the_summary(tmp_path, mjpeg_server):
    data, inbox = tmp_path / "data", tmp_path / "data" / "inbox"
    proc = start_ingest(data, mjpeg_server.url, "--camera", "gate", "--every", "0.5", "--max-retries", "2")
    try:
        wait_for_frames(inbox, 2, proc)
        mjpeg_server.kill()
        out, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 2, err
    assert "(gave up)" in out and "0 reconnects" in out
    assert "could not be reopened after 2 attempts" in err and "--max-retries" in err
    assert err.count("reconnect attempt") == 2


def test_max_frames_bounds_a_live_run(tmp_path, mjpeg_server):
    done = run_ingest(tmp_path / "data", mjpeg_server.url, "--camera", "gate", "--every", "1", "--max-frames", "2")
    assert done.returncode == 0, done.stderr
    assert "2 frames written" in done.stdout and "(limit)" in done.stdout
    got = frames(tmp_path / "data" / "inbox")
    assert [p.name for p in got] and all(re.fullmatch(r"\d{8}T\d{6}\+0000\.jpg", p.name) for p in got)
    assert len(got) == 2 and name_time(got[1]) - name_time(got[0]) >= timedelta(seconds=1)


def test_an_unreachable_stream_is_an_error_that_hides_the_password(tmp_path, capsys):
    url = f"rtsp://admin:s3cret-pw@127.0.0.1:{free_port()}/live"
    rc = main(["--data-dir", str(tmp_path / "data"), "ingest", url, "--camera", "gate", "--every", "1"])
    err = capsys.readouterr().err
    assert rc == 2
    assert "cannot open the stream rtsp://***@127.0.0.1:" in err
    assert "s3cret-pw" not in err
    rc = main(["--data-dir", str(tmp_path / "data"), "ingest", url, "--camera", "gate", "--every", "1",
               "--start", "2026-11-24T07:00:00"])
    assert rc == 2 and "--start is for video files" in capsys.readouterr().err


def test_backoff_doubles_to_30_s_with_jitter_and_urls_are_masked():
    backoff = Backoff()
    delays = [backoff.next_delay() for _ in range(8)]
    for delay, base in zip(delays, [1, 2, 4, 8, 16, 30, 30, 30]):
        assert 0.75 * base <= delay <= 1.25 * base
    backoff.reset()
    assert backoff.next_delay() <= 1.25
    assert display_source("rtsp://admin:pa:ss@cam.local:554/s?x=1") == "rtsp://***@cam.local:554/s?x=1"
    assert display_source("http://cam.local/video.mjpg") == "http://cam.local/video.mjpg"
