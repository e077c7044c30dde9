"""``maskjob report`` (compliance page for a window) and ``maskjob report model`` (model page)."""

from __future__ import annotations

import argparse
from datetime import UTC, date, datetime
from pathlib import Path

from maskjob.cli import settings_from_args
from maskjob.errors import MaskjobError
from maskjob.timeutil import check_year

__all__ = ["add_commands", "parse_day_or_time"]


def parse_day_or_time(text: str) -> date | datetime:
    """``2026-11-24`` as a date (a whole local day in ``site_timezone``), ``2026-11-24T07:00[Z]``
    or ``2026-11-24T08:00+01:00`` as naive UTC (a time without an offset is UTC)."""
    try:
        if "T" not in text and " " not in text.strip():
            return check_year(date.fromisoformat(text))
        value = check_year(datetime.fromisoformat(text))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not an ISO 8601 date or time ({exc}); use e.g. 2026-11-24 or 2026-11-24T07:00Z"
        ) from None
    return value.astimezone(UTC).replace(tzinfo=None) if value.tzinfo else value


def _compliance(args: argparse.Namespace) -> int:
    from maskjob.reporting.compliance import render_compliance_report
    from maskjob.storage.database import database

    if args.model is not None:
        raise MaskjobError("--model applies to `maskjob report model`; add `model` after `report` or drop --model")
    if args.start is None:
        raise MaskjobError("`maskjob report` needs --from DATE (and optionally --to DATE), e.g. --from 2026-11-24")
    settings = settings_from_args(args)
    with database(settings.database_url) as engine:
        path = render_compliance_report(
            engine, settings, args.start, args.end or args.start, camera=args.camera,
            out_dir=Path(args.out) if args.out else None, blur=False if args.no_blur else None,
        )
    print(path)
    return 0


def _model(args: argparse.Namespace) -> int:
    from maskjob.reporting.model_report import render_model_report
    from maskjob.storage.database import database

    for flag, value in (("--from", args.start), ("--to", args.end), ("--camera", args.camera)):
        if value is not None:
            raise MaskjobError(f"{flag} applies to the compliance report, not `maskjob report model`; drop it")
    settings = settings_from_args(args)
    with database(settings.database_url) as engine:
        path = render_model_report(engine, settings, version=args.model, out_dir=Path(args.out) if args.out else None)
    print(path)
    return 0


def _report(args: argparse.Namespace) -> int:
    return _model(args) if args.kind == "model" else _compliance(args)


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    """Register ``report`` on the top-level parser."""
    p = subparsers.add_parser(
        "report",
        help="render an HTML report (compliance for a window, or the models)",
        description=(
            "maskjob report --from 2026-11-24 [--to 2026-11-30]: the compliance page for those days "
            "(local days in site_timezone, midnight to midnight, both inclusive). "
            "maskjob report model [--model VERSION]: the model page. "
            "Both write one self-contained HTML file and print its path."
        ),
    )
    p.add_argument("kind", nargs="?", choices=("compliance", "model"), default="compliance",
                   help="which report (default: compliance)")
    p.add_argument("--from", dest="start", type=parse_day_or_time, metavar="DATE",
                   help="first local day (site_timezone) of the compliance window, or an ISO time "
                        "(UTC unless it has an offset)")
    p.add_argument("--to", dest="end", type=parse_day_or_time, metavar="DATE",
                   help="last day of the window, inclusive (an ISO time is the excluded end); default: --from")
    p.add_argument("--camera", metavar="ID", help="only this camera id (compliance report)")
    p.add_argument("--no-blur", action="store_true",
                   help="show faces unblurred in the violation gallery (default: blur_faces setting, on)")
    p.add_argument("--model", metavar="VERSION",
                   help="model report for this registered version only (default: champion + newest of the other family)")
    p.add_argument("--out", metavar="DIR", help="output directory (default: reports_dir setting)")
    p.set_defaults(func=_report)
