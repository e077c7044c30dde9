"""Shared helpers of the ingest tests: running ``maskjob ingest`` and reading what it wrote."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from datetime import datetime, timedelta
from pathlib import Path

from PIL import ExifTags, Image

_SCRIPT = Path(sys.executable).with_name("maskjob")
MASKJOB = [str(_SCRIPT)] if _SCRIPT.is_file() else [sys.executable, "-m", "maskjob"]
NAME = re.compile(r"(\d{8}T\d{6})(\.\d{3})?([+-]\d{4})\.jpg")


def env(**extra: str) -> dict[str, str]:
    """The test's environment without MASKJOB_* settings, single-threaded."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("MASKJOB_")}
    return {**base, "OMP_NUM_THREADS": "1", **extra}


def start_ingest(data_dir: Path, *argv: str, **extra_env: str) -> subprocess.Popen[str]:
    """``maskjob --data-dir DATA ingest ARGV...`` as a child process (stdout and stderr piped)."""
    return subprocess.Popen([*MASKJOB, "--data-dir", str(data_dir), "ingest", *argv], env=env(**extra_env),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)


def run_ingest(data_dir: Path, *argv: str, timeout: float = 60, **extra_env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*MASKJOB, "--data-dir", str(data_dir), "ingest", *argv], env=env(**extra_env),
                          capture_output=True, text=True, timeout=timeout, check=False)


def frames(folder: Path) -> list[Path]:
    """The frames under ``folder`` (``*.jpg``, hidden names excluded), sorted by relative path."""
    return sorted(p for p in folder.rglob("*.jpg") if not p.name.startswith("."))


def names(folder: Path) -> set[str]:
    return {p.relative_to(folder).as_posix() for p in frames(folder)}


def wait_for_frames(folder: Path, count: int, proc: subprocess.Popen, timeout_s: float = 30) -> None:
    """Wait until ``folder`` holds ``count`` frames (the child must still be running)."""
    deadline = time.monotonic() + timeout_s
    while len(frames(folder)) < count:
        assert proc.poll() is None, f"ingest exited early: {proc.communicate()}"
        assert time.monotonic() < deadline, f"fewer than {count} frames after {timeout_s} s"
        time.sleep(0.01)


def name_time(path: Path) -> datetime:
    """The aware local time in a frame's name."""
    match = NAME.fullmatch(path.name)
    assert match, path.name
    text = match[1] + (match[2] or ".000") + match[3]
    return datetime.strptime(text, "%Y%m%dT%H%M%S.%f%z")


def exif_time(path: Path) -> datetime:
    """The aware time in a frame's EXIF DateTimeOriginal + OffsetTimeOriginal (+ SubSecTimeOriginal)."""
    with Image.open(path) as img:
        ifd = img.getexif().get_ifd(ExifTags.IFD.Exif)
    taken = datetime.strptime(ifd[ExifTags.Base.DateTimeOriginal] + ifd[ExifTags.Base.OffsetTimeOriginal],
                              "%Y:%m:%d %H:%M:%S%z")
    return taken + timedelta(milliseconds=int(ifd.get(ExifTags.Base.SubsecTimeOriginal, "0")))
