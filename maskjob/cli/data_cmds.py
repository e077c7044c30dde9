"""``maskjob data check``: the labelled dataset's layout and quality."""

from __future__ import annotations

import argparse
import json

from maskjob.cli import settings_from_args

__all__ = ["add_commands"]


def _check(args: argparse.Namespace) -> int:
    from maskjob.ml.dataset import check_dataset

    settings = settings_from_args(args)
    report = check_dataset(args.root or settings.dataset_root, settings.max_image_pixels)
    print(json.dumps(report.to_dict(), indent=2) if args.json else report.format_text())
    return 0 if report.ok else 1


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    """Register ``data`` (with ``check``)."""
    data = subparsers.add_parser("data", help="inspect the labelled training/test dataset")
    data_sub = data.add_subparsers(dest="data_command", metavar="ACTION", required=True)
    check = data_sub.add_parser(
        "check",
        help="per-class counts, imbalance, unreadable files and train/test duplicates; "
        "exit 1 when files are unreadable or duplicated across splits, 2 on a wrong layout",
    )
    check.add_argument("root", nargs="?", help="dataset root (default: settings.dataset_root)")
    check.add_argument("--json", action="store_true", help="print the report as JSON")
    check.set_defaults(func=_check)
