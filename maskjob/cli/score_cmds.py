"""``maskjob score`` (CCTV frames into the database) and ``maskjob predict`` (ad-hoc files)."""

from __future__ import annotations

import argparse
import json
from datetime import datetime
from pathlib import Path

from maskjob.cli import settings_from_args
from maskjob.errors import MaskjobError
from maskjob.timeutil import check_year, to_naive_utc

__all__ = ["add_commands", "parse_shard", "parse_time"]


def parse_time(text: str) -> datetime:
    """An ISO 8601 date or date-time as naive UTC (``2026-11-24``, ``2026-11-24T07:00``, ``...Z``)."""
    try:
        value = check_year(datetime.fromisoformat(text))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not an ISO 8601 time ({exc}); use e.g. 2026-11-24 or 2026-11-24T07:00:00Z"
        ) from None

    return to_naive_utc(value)


def parse_shard(text: str) -> tuple[int, int]:
    """``I/N`` (0-based shard index of N shards) as ``(I, N)``."""
    index, sep, count = text.partition("/")
    try:
        shard = int(index), int(count)
    except ValueError:
        shard = (-1, 0)
    if not sep or shard[1] < 1 or not 0 <= shard[0] < shard[1]:
        raise argparse.ArgumentTypeError(f"{text!r} is not a shard I/N with 0 <= I < N, e.g. 0/2")
    return shard


def _score(args: argparse.Namespace) -> int:
    from maskjob.scoring.score import score
    from maskjob.storage.database import database

    settings = settings_from_args(args, **({"retry_unreadable": True} if args.retry_unreadable else {}))
    inbox = Path(args.inbox) if args.inbox else settings.inbox_dir
    if args.since and args.until and args.since >= args.until:
        raise MaskjobError(f"--since {args.since} is not before --until {args.until}; the interval is [since, until)")
    with database(settings.database_url) as engine:
        summary = score(engine, settings, inbox, args.since, args.until, shard=args.shard,
                        model_version=args.model)
    if args.json:
        print(json.dumps(summary.to_dict(), indent=2))
    else:
        for path, reason in summary.unreadable:
            print(f"unreadable: {path}: {reason}")
        print(summary.format_line())
    return 0


def _format_prediction(result: dict) -> list[str]:
    if result["mode"] == "unreadable":
        return [f"{result['path']}: unreadable: {result['error']}"]
    lines = [f"{result['path']}: {len(result['faces'])} face(s), mode {result['mode']}"
             + (f", annotated {result['annotated']}" if result["annotated"] else "")]
    for i, face in enumerate(result["faces"]):
        probs = " ".join(f"{c}={p:.3f}" for c, p in face["probs"].items())
        lines.append(f"  face {i} box {tuple(face['box'])}: {face['label']} ({face['confidence']:.3f}) {probs}")
    return lines


def _predict(args: argparse.Namespace) -> int:
    from maskjob.scoring.predict import predict_files

    settings = settings_from_args(args)
    results = predict_files(args.files, settings, annotate_dir=args.annotate, checkpoint=args.model)
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        for result in results:
            print("\n".join(_format_prediction(result)))
    return 1 if any(r["mode"] == "unreadable" for r in results) else 0


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    """Register ``score`` and ``predict``."""
    p = subparsers.add_parser(
        "score", help="score CCTV frames of the inbox into the database",
        description="Detect and classify faces in the inbox frames captured in [--since, --until) "
                    "and store one row per frame and per face. Frames already scored by the model "
                    "are skipped, so a rerun (e.g. after a crash) only adds what is missing.",
    )
    p.add_argument("--inbox", help="CCTV inbox <inbox>/<camera_id>/<frame> (default: settings inbox_dir)")
    p.add_argument("--since", type=parse_time, help="first capture time to score, inclusive (ISO 8601; UTC unless it has a zone)")
    p.add_argument("--until", type=parse_time, help="capture time to stop at, exclusive (ISO 8601; UTC unless it has a zone)")
    p.add_argument("--shard", type=parse_shard, default=(0, 1), metavar="I/N",
                   help="score only shard I of N (0-based, by a stable hash of the path), e.g. 0/2 and 1/2 on two workers")
    p.add_argument("--model", metavar="VERSION", help="registered model version to score with (default: the champion)")
    p.add_argument("--retry-unreadable", action="store_true",
                   help="read frames recorded unreadable by this model again (e.g. after an upload finished)")
    p.add_argument("--json", action="store_true", help="print the run summary as JSON")
    p.set_defaults(func=_score)

    p = subparsers.add_parser(
        "predict", help="detect and classify faces in image files (no database writes)",
        description="Run the scoring detector and the champion (or --model) on image files. An image "
                    "with no detectable face that is itself a small face crop is classified whole.",
    )
    p.add_argument("files", nargs="+", metavar="FILE", help="image files to classify")
    p.add_argument("--annotate", metavar="DIR", help="write copies with a box, label and confidence per face into DIR")
    p.add_argument("--model", metavar="CKPT_PATH", help="checkpoint file to use instead of the registry's champion")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.set_defaults(func=_predict)
