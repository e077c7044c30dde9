"""``maskjob ingest``: frames from a video file or a live camera stream into the inbox."""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from maskjob.cli import settings_from_args

__all__ = ["add_commands"]


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number of seconds, e.g. 2 or 0.5")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of at least 1")
    return value


@contextmanager
def _stop_on_signals() -> Iterator[threading.Event]:
    """An event set by SIGINT or SIGTERM for the block (the run then ends after the frame in hand)."""
    stop = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    for sig in saved:
        signal.signal(sig, lambda _signum, _frame: stop.set())
    try:
        yield stop
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)


def _ingest(args: argparse.Namespace) -> int:
    from maskjob.ingest.ingest import ingest

    settings = settings_from_args(args)
    with _stop_on_signals() as stop:
        summary = ingest(settings, args.source, args.camera, args.every,
                         inbox=Path(args.inbox) if args.inbox else None, timezone=args.timezone,
                         start=args.start, until=args.until, max_frames=args.max_frames,
                         max_retries=args.max_retries, stop=stop)
    print(json.dumps(summary.to_dict(), indent=2) if args.json else summary.format_line(), flush=True)
    if summary.error:
        print(f"maskjob: error: {summary.error}", file=sys.stderr)
        return 2
    return 0


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    """Register ``ingest``."""
    p = subparsers.add_parser(
        "ingest", help="take frames from a video file or live stream into the inbox",
        description="Write one frame every --every seconds from SOURCE to "
                    "<inbox>/<camera>/<local date>/<YYYYMMDDTHHMMSS+HHMM>.jpg (atomically, with EXIF times). "
                    "A file's frames are timed from its recording start plus their position; a stream's by "
                    "the wall clock. A rerun of a file resumes where it stopped without duplicates; a dropped "
                    "stream is reopened with backoff. SIGINT/SIGTERM stop cleanly.",
    )
    p.add_argument("source", metavar="SOURCE",
                   help="video file, file: URL, or stream URL (rtsp://, http:// MJPEG, ...) that FFmpeg opens")
    p.add_argument("--camera", required=True, metavar="ID",
                   help="camera id: the inbox folder (letters, digits, '_', '-', '.')")
    p.add_argument("--every", required=True, type=_positive_float, metavar="SECONDS",
                   help="interval between frames: video time for a file, wall time for a stream; "
                        "under 1 s adds milliseconds to the names")
    p.add_argument("--inbox", help="inbox folder (default: settings inbox_dir)")
    p.add_argument("--timezone", metavar="ZONE",
                   help="IANA zone the names and date folders use (default: the camera's registered zone, "
                        "else the site_timezone setting)")
    p.add_argument("--start", metavar="TIME",
                   help="recording start of a video file (ISO 8601, local to the zone unless it has an offset); "
                        "default: the container's creation time, else the file's mtime minus its duration")
    p.add_argument("--until", metavar="TIME",
                   help="stop at the first frame captured at or after TIME (ISO 8601, local unless it has an offset)")
    p.add_argument("--max-frames", type=_positive_int, metavar="N", help="stop after writing N frames")
    p.add_argument("--max-retries", type=_positive_int, metavar="N",
                   help="give up on a dropped stream after N failed reconnects in a row (default: retry forever, "
                        "waiting 1 s doubling to 30 s)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=_ingest)
