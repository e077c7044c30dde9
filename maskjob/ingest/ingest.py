"""One ingest run: a video file or live stream into ``<inbox>/<camera>/<local date>/``.

Example:
    >>> summary = ingest(settings, "vtest.avi", "cam-lobby", every_s=2.0)   # doctest: +SKIP
    >>> summary.format_line()                                              # doctest: +SKIP
    'ingest vtest.avi -> cam-lobby: 40 frames written, 0 skipped, 0 reconnects (file finished)'
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np

from maskjob.config import Settings
from maskjob.errors import MaskjobError
from maskjob.ingest.clock import camera_zone, parse_local_time, video_start
from maskjob.ingest.source import Source, file_frames, live_frames, open_capture, parse_source
from maskjob.ingest.writer import FrameWriter, ResumeState, camera_folder, check_camera_id, state_key

__all__ = ["IngestSummary", "ingest"]

logger = logging.getLogger(__name__)


@dataclass
class IngestSummary:
    """What a run did. ``skipped`` frames already existed (a resumed run, or two frames in
    one named second); ``ended`` is ``file finished``, ``stopped``, ``limit`` or ``gave up``."""

    source: str
    camera: str
    timezone: str
    written: int = 0
    skipped: int = 0
    reconnects: int = 0
    ended: str = "stopped"
    first: str | None = None
    last: str | None = None
    error: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)

    def format_line(self) -> str:
        span = f"; {self.first} .. {self.last}" if self.first else ""
        return (f"ingest {self.source} -> {self.camera} ({self.timezone}): {self.written} frames written, "
                f"{self.skipped} skipped, {self.reconnects} reconnects ({self.ended}){span}")


class _Run:
    """The counters and limits shared by the file and stream loops."""

    def __init__(self, writer: FrameWriter, summary: IngestSummary, max_frames: int | None,
                 until_utc: datetime | None) -> None:
        self.writer, self.summary = writer, summary
        self.max_frames, self.until_utc = max_frames, until_utc

    def past_until(self, at_utc: datetime) -> bool:
        if self.until_utc is not None and at_utc >= self.until_utc:
            self.summary.ended = "limit"
            return True
        return False

    def put(self, frame: np.ndarray, at_utc: datetime) -> bool:
        """Write one frame; ``False`` once ``max_frames`` are written."""
        path = self.writer.write(frame, at_utc)
        if path is None:
            self.summary.skipped += 1
        else:
            self.summary.written += 1
            rel = path.relative_to(self.writer.folder.parent).as_posix()
            self.summary.first = self.summary.first or rel
            self.summary.last = rel
            logger.debug("wrote %s", rel)
        if self.max_frames is not None and self.summary.written >= self.max_frames:
            self.summary.ended = "limit"
            return False
        return True


def _ingest_file(source: Source, run: _Run, every_s: float, start: datetime | None,
                 stop: threading.Event) -> None:
    import cv2

    cap = open_capture(source)
    if cap is None:
        raise MaskjobError(f"cannot open {source.shown} as a video (unknown format or damaged file)")
    fps, count = cap.get(cv2.CAP_PROP_FPS), cap.get(cv2.CAP_PROP_FRAME_COUNT)
    cap.release()
    duration_s = count / fps if fps > 0 and count > 0 else None
    began = video_start(source.path, duration_s, start)
    logger.info("%s starts at %s (from %s)", source.shown, began.at_utc.isoformat(), began.source)
    key = state_key(os.path.realpath(source.path), began.at_utc, every_s)
    state = ResumeState.load(run.writer.folder, key, source.shown)
    if state.finished:
        logger.info("%s was ingested completely before; rereading it writes nothing new", source.shown)
    elif state.last_pos_ms is not None:
        logger.info("resuming %s after %.1f s of video", source.shown, state.last_pos_ms / 1000)
    for pos_ms, frame in file_frames(source, every_s, state.last_pos_ms, stop):
        at_utc = began.at_utc + timedelta(milliseconds=pos_ms)
        if run.past_until(at_utc):
            return
        more = run.put(frame, at_utc)
        state.last_pos_ms = pos_ms
        state.save()
        if not more:
            return
    if not stop.is_set():
        run.summary.ended = "file finished"
        state.finished = True
        state.save()


def _ingest_live(source: Source, run: _Run, every_s: float, max_retries: int | None,
                 stop: threading.Event) -> None:
    for item in live_frames(source, every_s, stop, max_retries=max_retries):
        if item is None:
            run.summary.reconnects += 1
            continue
        at_utc = datetime.fromtimestamp(item[0], UTC)
        if run.past_until(at_utc) or not run.put(item[1], at_utc):
            return


def ingest(settings: Settings, source_text: str, camera: str, every_s: float, *,
           inbox: Path | None = None, timezone: str | None = None, start: str | None = None,
           until: str | None = None, max_frames: int | None = None, max_retries: int | None = None,
           stop: threading.Event | None = None) -> IngestSummary:
    """Take one frame every ``every_s`` seconds from ``source_text`` into the inbox.

    Args:
        settings: ``inbox_dir``, ``site_timezone`` and the database (for the camera's zone).
        source_text: a video file, ``file:`` URL or stream URL (``rtsp://``, ``http://`` ...).
        camera: the camera id (its inbox folder).
        every_s: the interval: video time for files, wall time for streams.
        inbox: the inbox (default ``settings.inbox_dir``).
        timezone: the zone frames are named in (default: the camera's, else ``site_timezone``).
        start: a file's recording start (ISO 8601, local to the zone unless it has an offset).
        until: stop at frames captured at or after this time (same format as ``start``).
        max_frames: stop after writing this many frames.
        max_retries: reconnect attempts in a row before giving up on a stream (default: forever).
        stop: set it (e.g. from a signal handler) to end the run after the frame in hand.

    Returns:
        The :class:`IngestSummary`; a stream given up on has ``ended="gave up"`` and ``error``.

    Raises:
        MaskjobError: a bad camera id, zone, time or interval, or a source that cannot be opened.
    """
    if not every_s > 0:
        raise MaskjobError(f"--every {every_s} must be a positive number of seconds, e.g. --every 2")
    if max_frames is not None and max_frames < 1:
        raise MaskjobError(f"--max-frames {max_frames} must be at least 1")
    check_camera_id(camera)
    source = parse_source(source_text)
    if start is not None and source.live:
        raise MaskjobError("--start is for video files; a live stream's frames take the wall clock")
    tz, tz_source = camera_zone(settings, camera, timezone)
    logger.info("camera %s frames are named in %s (from %s)", camera, tz.key, tz_source)
    start_utc = parse_local_time(start, tz) if start else None
    until_utc = parse_local_time(until, tz) if until else None
    folder = camera_folder(Path(inbox) if inbox else settings.inbox_dir, camera)
    run = _Run(FrameWriter(folder, tz, subsecond=every_s < 1), IngestSummary(source.shown, camera, tz.key),
               max_frames, until_utc)
    stop = stop or threading.Event()
    try:
        if source.live:
            _ingest_live(source, run, every_s, max_retries, stop)
        else:
            _ingest_file(source, run, every_s, start_utc, stop)
    except MaskjobError as exc:
        # A stream that worked for a while ends with its summary; anything else is the user's to fix.
        if not source.live or (run.summary.written + run.summary.skipped == 0 and not run.summary.reconnects):
            raise
        run.summary.ended, run.summary.error = "gave up", str(exc)
    return run.summary
