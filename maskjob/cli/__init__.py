"""The ``maskjob`` command. Each area registers its subcommands from its own module;
every command calls the same library steps the DAG calls."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from typing import Sequence

from maskjob import __version__
from maskjob.cli.console import configure_logging, restore_logging
from maskjob.config import Settings, load_settings
from maskjob.errors import MaskjobError

__all__ = ["main", "build_parser", "settings_from_args"]

logger = logging.getLogger("maskjob")

# Each module defines ``add_commands(subparsers)``; a command's handler is stored as
# ``func`` and called with the parsed namespace. Handlers return an exit status.
COMMAND_MODULES = (
    "maskjob.cli.assets_cmds",
    "maskjob.cli.data_cmds",
    "maskjob.cli.train_cmds",
    "maskjob.cli.db_cmds",
    "maskjob.cli.score_cmds",
    "maskjob.cli.report_cmds",
    "maskjob.cli.run_cmds",
    "maskjob.cli.cameras_cmds",
    "maskjob.cli.ingest_cmds",
    "maskjob.cli.review_cmds",
    "maskjob.cli.corrections_cmds",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="maskjob",
        description="Face-mask compliance: train, promote, score CCTV frames, report.",
    )
    parser.add_argument("--version", action="version", version=f"maskjob {__version__}")
    parser.add_argument("--config", help="TOML settings file (default: $MASKJOB_CONFIG or ./maskjob.toml)")
    parser.add_argument("--data-dir", help="root for the dataset, inbox, models, database and reports")
    _add_verbose(parser, default=0)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:
                raise
            continue
        module.add_commands(sub)
    _add_verbose_below(parser)
    return parser


VERBOSE_HELP = (
    "show library logs on stderr: -v INFO (maskjob's progress, Alembic's migrations, Airflow's "
    "task log), -vv DEBUG. Default: the answer on stdout, warnings and errors on stderr"
)


def _add_verbose(parser: argparse.ArgumentParser, default: object) -> None:
    parser.add_argument("-v", "--verbose", action="count", default=default, help=VERBOSE_HELP)


def _add_verbose_below(parser: argparse.ArgumentParser) -> None:
    """``-v`` after any (sub)command too: ``maskjob run -v`` as ``maskjob -v run``."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                if not any("-v" in a.option_strings for a in child._actions):
                    _add_verbose(child, default=argparse.SUPPRESS)
                _add_verbose_below(child)


def settings_from_args(args: argparse.Namespace, **overrides: object) -> Settings:
    """Settings from the config file, env, then ``--data-dir`` and ``overrides``."""
    values = {"data_dir": getattr(args, "data_dir", None), **overrides}
    return load_settings(config_path=getattr(args, "config", None), overrides=values)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    saved = configure_logging(args.verbose)
    try:
        return int(args.func(args) or 0)
    except MaskjobError as exc:
        print(f"maskjob: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("maskjob: interrupted", file=sys.stderr)
        return 130
    finally:
        restore_logging(saved)


if __name__ == "__main__":
    sys.exit(main())
