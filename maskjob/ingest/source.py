"""Video sources: opening a file or stream with OpenCV's FFmpeg backend, taking one frame per
interval, and reopening a dropped live stream with backoff.

A file's frames are taken on video time: the first frame at or after each multiple of the
interval (``grab()`` skips the rest without converting them). A live stream's are taken on
wall time: the stream is read continuously (so frames never queue up) and the frame read
when the next interval is due is kept.
"""

from __future__ import annotations

import logging
import os
import random
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import numpy as np

from maskjob.config import register_secrets
from maskjob.errors import MaskjobError

__all__ = ["Backoff", "Source", "display_source", "file_frames", "live_frames", "open_capture", "parse_source"]

logger = logging.getLogger(__name__)

LIVE_SCHEMES = frozenset({"rtsp", "rtsps", "rtmp", "http", "https", "udp", "tcp", "srt"})
OPEN_TIMEOUT_S = 10.0
READ_TIMEOUT_S = 10.0
BACKOFF_FIRST_S = 1.0
BACKOFF_MAX_S = 30.0
# Seeking in a container can land late; resume seeks this far before the frame it needs.
SEEK_MARGIN_MS = 5000.0


@dataclass(frozen=True)
class Source:
    """What ``SOURCE`` names: ``url`` is what OpenCV opens, ``shown`` is safe to print."""

    url: str
    shown: str
    live: bool
    path: Path | None = None


def display_source(text: str) -> str:
    """``text`` with any ``user:password@`` of a URL replaced by ``***@``."""
    return re.sub(r"(?<=//)[^/@\s]*@", "***@", text)


def parse_source(text: str) -> Source:
    """A file path, ``file:`` URL or stream URL as a :class:`Source`.

    Raises:
        MaskjobError: an empty source, a scheme OpenCV does not stream, or a missing file.
    """
    if not text.strip():
        raise MaskjobError("SOURCE is empty; give a video file or a stream URL such as rtsp://camera/stream")
    parts = urlsplit(text)
    scheme = parts.scheme.lower()
    if scheme in LIVE_SCHEMES:
        if parts.password:
            # The user name alone is no secret, and redacting a common one would blank it everywhere.
            register_secrets([parts.password, unquote(parts.password)])
        return Source(text, display_source(text), live=True)
    if scheme == "file":
        path = Path(unquote(parts.path))
    elif len(scheme) > 1 and "://" in text:
        raise MaskjobError(f"SOURCE {display_source(text)} has the scheme {scheme!r}; use a video file or one of "
                           f"{', '.join(sorted(LIVE_SCHEMES))}")
    else:
        path = Path(text)
    if not path.is_file():
        raise MaskjobError(f"video file {path} does not exist or is not a file; give a video file or a stream URL")
    return Source(str(path), str(path), live=False, path=path)


def open_capture(source: Source, open_timeout_s: float = OPEN_TIMEOUT_S,
                 read_timeout_s: float = READ_TIMEOUT_S) -> Any | None:
    """An opened ``cv2.VideoCapture`` on the FFmpeg backend, or ``None`` when it cannot be opened."""
    import cv2

    # FFmpeg's own error lines (e.g. "Connection refused" on each retry) go straight to stderr;
    # our log says what happened instead. Read by OpenCV when it first loads FFmpeg.
    os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)
    params = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, int(open_timeout_s * 1000),
              cv2.CAP_PROP_READ_TIMEOUT_MSEC, int(read_timeout_s * 1000),
              cv2.CAP_PROP_N_THREADS, 1]
    cap = cv2.VideoCapture(source.url, cv2.CAP_FFMPEG, params)
    if cap.isOpened():
        return cap
    cap.release()
    return None


class Backoff:
    """Exponential delays with jitter: ``first_s``, doubling, at most ``max_s``."""

    def __init__(self, first_s: float = BACKOFF_FIRST_S, max_s: float = BACKOFF_MAX_S) -> None:
        self.first_s, self.max_s = first_s, max_s
        self.attempt = 0

    def next_delay(self) -> float:
        """The wait before the next attempt (jittered by up to 25 % either way)."""
        base = min(self.max_s, self.first_s * 2 ** self.attempt)
        self.attempt += 1
        return base * random.uniform(0.75, 1.25)

    def reset(self) -> None:
        self.attempt = 0


def _grab_pos(cap: Any) -> float | None:
    import cv2

    if not cap.grab():
        return None
    return round(cap.get(cv2.CAP_PROP_POS_MSEC), 3)


def _seek(cap: Any, target_ms: float) -> float | None:
    """Seek to just before ``target_ms``; the first frame's position, or ``None`` when the
    container cannot seek there without landing past it."""
    import cv2

    cap.set(cv2.CAP_PROP_POS_MSEC, max(0.0, target_ms - SEEK_MARGIN_MS))
    pos = _grab_pos(cap)
    return pos if pos is not None and pos <= target_ms else None


def file_frames(source: Source, every_s: float, after_ms: float | None,
                stop: threading.Event) -> Iterator[tuple[float, np.ndarray]]:
    """``(position ms, BGR frame)``: the first frame at or after each multiple of ``every_s``
    seconds of video time that lies after ``after_ms`` (resume), until the file ends.

    Raises:
        MaskjobError: the file cannot be opened as a video.
    """
    every_ms = every_s * 1000.0
    cap = open_capture(source)
    if cap is None:
        raise MaskjobError(f"cannot open {source.shown} as a video (unknown format or damaged file)")
    try:
        due = 0.0 if after_ms is None else (after_ms // every_ms + 1) * every_ms
        pos = _seek(cap, due) if due > SEEK_MARGIN_MS else None
        if pos is None:
            cap.release()
            cap = open_capture(source)
            if cap is None:
                raise MaskjobError(f"cannot reopen {source.shown}")
            pos = _grab_pos(cap)
        while pos is not None and not stop.is_set():
            if pos >= due:
                ok, frame = cap.retrieve()
                if ok:
                    yield pos, frame
                due = (pos // every_ms + 1) * every_ms
            pos = _grab_pos(cap)
    finally:
        cap.release()


def _reopen(source: Source, backoff: Backoff, max_retries: int | None, stop: threading.Event) -> Any | None:
    """Reopen a dropped stream, waiting :class:`Backoff` delays; ``None`` when stopped.

    Raises:
        MaskjobError: ``max_retries`` attempts failed.
    """
    while not stop.is_set():
        if max_retries is not None and backoff.attempt >= max_retries:
            raise MaskjobError(f"stream {source.shown} could not be reopened after {max_retries} attempts; "
                               "check the camera and the network, or raise --max-retries")
        delay = backoff.next_delay()
        logger.warning("stream %s is down; reconnect attempt %d in %.1f s", source.shown, backoff.attempt, delay)
        if stop.wait(delay):
            return None
        cap = open_capture(source)
        if cap is not None:
            logger.warning("stream %s reconnected", source.shown)
            return cap
    return None


def live_frames(source: Source, every_s: float, stop: threading.Event, max_retries: int | None = None,
                backoff: Backoff | None = None) -> Iterator[tuple[float, np.ndarray] | None]:
    """``(wall time epoch s, BGR frame)`` every ``every_s`` seconds of wall time; ``None``
    after each reconnect (so the caller can count them). Runs until ``stop`` is set.

    Raises:
        MaskjobError: the stream cannot be opened at all, or ``max_retries`` reconnects failed.
    """
    backoff = backoff or Backoff()
    cap = open_capture(source)
    if cap is None:
        raise MaskjobError(f"cannot open the stream {source.shown}; check the URL, the camera and the network")
    due = 0.0
    try:
        while not stop.is_set():
            if not cap.grab():
                cap.release()
                cap = _reopen(source, backoff, max_retries, stop)
                if cap is None:
                    return
                yield None
                continue
            backoff.reset()
            now = time.time()
            if now < due:
                continue
            ok, frame = cap.retrieve()
            if ok:
                yield now, frame
                # A late frame (slow write, reconnect) moves the schedule on instead of bunching frames.
                due = due + every_s if due and due + every_s > now else now + every_s
    finally:
        if cap is not None:
            cap.release()
