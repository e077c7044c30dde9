"""What the ``maskjob`` command shows: answers on stdout, warnings on stderr, library logs
only when asked.

Verbosity (the top-level ``-v`` flag, counted):

- default: WARNING and up from every logger go to stderr; INFO is not shown;
- ``-v``: INFO and up (maskjob's progress, Alembic's migrations, Airflow's messages);
- ``-vv``: DEBUG and up.

:func:`capture_output` sends everything a block writes to file descriptors 1 and 2 (Python
logging, structlog, ``print``, C libraries, child processes) to a log file, for commands that
run a chatty library in-process (``maskjob run`` and Airflow's ``dag.test()``); the block
writes its own answer to :attr:`Console.out`.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, TextIO

from maskjob.config import SecretFilter

__all__ = ["Console", "capture_output", "configure_logging", "console_handler", "level_for", "restore_logging"]

# Loggers that drown the rest at the level asked for: the level they get instead, per verbosity.
CHATTY_LOGGERS: dict[str, dict[int, int]] = {
    # Seven "setup plugin ..." lines each time Alembic builds a migration context.
    "alembic.runtime.plugins": {1: logging.WARNING},
    # PNG chunk and font-cache chatter.
    "PIL": {2: logging.INFO},
    "matplotlib": {2: logging.INFO},
}

_FORMATS = {
    0: "%(levelname)s %(name)s: %(message)s",
    1: "%(asctime)s %(levelname)s %(name)s: %(message)s",
}


def level_for(verbosity: int) -> int:
    """The logging level shown at ``verbosity`` (0: WARNING, 1: INFO, 2+: DEBUG)."""
    return logging.WARNING if verbosity <= 0 else logging.INFO if verbosity == 1 else logging.DEBUG


class _StderrHandler(logging.StreamHandler):
    """A handler on whatever ``sys.stderr`` is when a record comes (pytest swaps it)."""

    def __init__(self) -> None:
        super().__init__()

    @property  # type: ignore[override]
    def stream(self) -> TextIO:
        return sys.stderr

    @stream.setter
    def stream(self, _value: TextIO) -> None:
        pass


def console_handler(verbosity: int, stream: TextIO | None = None) -> logging.Handler:
    """A handler for the console at ``verbosity``: ``stream``, else the current ``sys.stderr``."""
    handler: logging.Handler = _StderrHandler() if stream is None else logging.StreamHandler(stream)
    handler.setLevel(level_for(verbosity))
    handler.setFormatter(logging.Formatter(_FORMATS[min(verbosity, 1)]))
    # Driver DEBUG lines (-vv) can repeat a server error that quotes a connection extra.
    handler.addFilter(SecretFilter())
    handler._maskjob_console = True  # type: ignore[attr-defined]
    return handler


@dataclass
class _Saved:
    root_level: int
    levels: dict[str, int]


def configure_logging(verbosity: int) -> _Saved:
    """Show records at :func:`level_for` ``(verbosity)`` and up on stderr.

    Replaces the handler an earlier call installed (and no other), sets the root level and
    quietens :data:`CHATTY_LOGGERS`. Returns what :func:`restore_logging` puts back.
    """
    root = logging.getLogger()
    saved = _Saved(root.level, {name: logging.getLogger(name).level for name in CHATTY_LOGGERS})
    for handler in [h for h in root.handlers if getattr(h, "_maskjob_console", False)]:
        root.removeHandler(handler)
    root.addHandler(console_handler(verbosity))
    root.setLevel(level_for(verbosity))
    for name, per_verbosity in CHATTY_LOGGERS.items():
        level = per_verbosity.get(min(verbosity, 2))
        if level is not None:
            logging.getLogger(name).setLevel(level)
    return saved


def restore_logging(saved: _Saved) -> None:
    """Undo :func:`configure_logging` (for ``main()`` called inside another program)."""
    root = logging.getLogger()
    for handler in [h for h in root.handlers if getattr(h, "_maskjob_console", False)]:
        root.removeHandler(handler)
    root.setLevel(saved.root_level)
    for name, level in saved.levels.items():
        logging.getLogger(name).setLevel(level)


@dataclass
class Console:
    """The terminal while :func:`capture_output` holds file descriptors 1 and 2."""

    out: TextIO
    err: TextIO
    log_path: Path

    def print(self, *values: object) -> None:
        print(*values, file=self.out, flush=True)


def _copy(source: int, sinks: tuple[int, ...]) -> None:
    """Copy ``source`` to every sink until end of file; then close them all (they are its own)."""
    try:
        while True:
            try:
                chunk = os.read(source, 65536)
            except OSError:
                return
            if not chunk:
                return
            for sink in sinks:
                try:
                    os.write(sink, chunk)
                except OSError:
                    pass
    finally:
        for fd in (source, *sinks):
            try:
                os.close(fd)
            except OSError:
                pass


@contextmanager
def capture_output(log_path: Path, *, echo: bool = False) -> Iterator[Console]:
    """Send file descriptors 1 and 2 to ``log_path`` (appended) for the block.

    Args:
        log_path: the log file; its folder is created.
        echo: also copy everything to the terminal's stderr (``-v``).

    Yields:
        The terminal's stdout and stderr, for the block's own answer and warnings.
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    saved_out, saved_err = os.dup(1), os.dup(2)
    copier: threading.Thread | None = None
    with open(log_path, "ab", buffering=0) as log:
        if echo:
            read_end, target = os.pipe()
            # The copier owns its ends: the pipe's read end, a log and a terminal descriptor.
            copier = threading.Thread(target=_copy, args=(read_end, (os.dup(log.fileno()), os.dup(saved_err))),
                                      name="maskjob-log-copier", daemon=True)
            copier.start()
        else:
            target = log.fileno()
        os.dup2(target, 1)
        os.dup2(target, 2)
        if echo:
            os.close(target)
    console = Console(
        out=open(os.dup(saved_out), "w", buffering=1, encoding=sys.stdout.encoding or "utf-8", errors="replace"),
        err=open(os.dup(saved_err), "w", buffering=1, encoding=sys.stderr.encoding or "utf-8", errors="replace"),
        log_path=log_path,
    )
    try:
        yield console
    finally:
        for stream in (sys.stdout, sys.stderr, console.out, console.err):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
        os.dup2(saved_out, 1)
        os.dup2(saved_err, 2)
        os.close(saved_out)
        os.close(saved_err)
        console.out.close()
        console.err.close()
        if copier is not None:
            # A child process that inherited the pipe may still hold it open: don't wait long.
            copier.join(timeout=5)
