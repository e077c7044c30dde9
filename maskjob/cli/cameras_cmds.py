"""``maskjob cameras add|list|set``: the camera registry (zone, site, expectations)."""

from __future__ import annotations

import argparse
import json
from typing import Any

from maskjob.cli import settings_from_args

__all__ = ["add_commands"]

COLUMNS = (("camera_id", "camera"), ("display_name", "name"), ("site", "site"), ("timezone", "zone"),
           ("expected_frames_per_hour", "frames/h"), ("compliance_target", "target"), ("auto_registered", "auto"))


def _changes(args: argparse.Namespace) -> dict[str, Any]:
    """The fields given on the command line; an empty --name/--site clears it."""
    given = {"display_name": args.name, "site": args.site, "timezone": args.timezone,
             "expected_frames_per_hour": args.expected_fph, "compliance_target": args.target}
    changes = {k: v for k, v in given.items() if v is not None}
    for key in ("display_name", "site"):
        if changes.get(key) == "":
            changes[key] = None
    return changes


def _show(camera: Any, as_json: bool) -> None:
    if as_json:
        print(json.dumps(camera.to_dict(), indent=2))
        return
    rate = "none" if camera.expected_frames_per_hour is None else f"{camera.expected_frames_per_hour:g}"
    print(f"{camera.camera_id}: zone {camera.timezone}, target {camera.compliance_target:g}, "
          f"expected frames/h {rate}, name {camera.display_name or '-'}, site {camera.site or '-'}")


def _add(args: argparse.Namespace) -> int:
    from maskjob.storage.cameras import add_camera
    from maskjob.storage.database import database

    settings = settings_from_args(args, database_url=args.database_url)
    with database(settings.database_url) as engine, engine.begin() as conn:
        camera = add_camera(conn, args.camera_id, settings=settings, **_changes(args))
    _show(camera, args.json)
    return 0


def _set(args: argparse.Namespace) -> int:
    from maskjob.errors import MaskjobError
    from maskjob.storage.cameras import set_camera
    from maskjob.storage.database import database

    changes = _changes(args)
    if not changes:
        raise MaskjobError("nothing to change: pass at least one of --name, --site, --timezone, --expected-fph, "
                           "--target")
    settings = settings_from_args(args, database_url=args.database_url)
    with database(settings.database_url) as engine, engine.begin() as conn:
        camera = set_camera(conn, args.camera_id, **changes)
    _show(camera, args.json)
    return 0


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return f"{value:g}" if isinstance(value, float) else str(value)


def _list(args: argparse.Namespace) -> int:
    from maskjob.storage.cameras import list_cameras
    from maskjob.storage.database import database

    settings = settings_from_args(args, database_url=args.database_url)
    with database(settings.database_url) as engine, engine.connect() as conn:
        cameras = list_cameras(conn)
    if args.json:
        print(json.dumps([c.to_dict() for c in cameras], indent=2))
        return 0
    if not cameras:
        print("no cameras registered; `maskjob cameras add ID` or score the inbox (new cameras register themselves)")
        return 0
    rows = [[title for _, title in COLUMNS]] + [[_cell(getattr(c, key)) for key, _ in COLUMNS] for c in cameras]
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())
    return 0


def _fields(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--name", help="display name for reports (an empty string clears it)")
    parser.add_argument("--site", help="site the camera belongs to (an empty string clears it)")
    parser.add_argument("--timezone", metavar="ZONE",
                        help="IANA zone of the camera's clock, e.g. Asia/Kolkata (default: setting site_timezone)")
    parser.add_argument("--expected-fph", type=float, metavar="N",
                        help="frames expected per hour; 0 = no expectation "
                             "(default: setting default_expected_frames_per_hour)")
    parser.add_argument("--target", type=float, metavar="X",
                        help="compliance target 0..1 (default: setting default_compliance_target)")
    _common(parser)


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print JSON")
    parser.add_argument("--database-url", metavar="URL",
                        help="database to use (default: setting database_url, sqlite:///<data_dir>/maskjob.db)")


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    """Register ``cameras add|list|set``."""
    parser = subparsers.add_parser("cameras", help="list and edit the cameras (zone, site, targets)",
                                   description="The camera registry. Cameras first seen in the inbox are "
                                               "registered with the site defaults when frames are scored.")
    actions = parser.add_subparsers(dest="cameras_command", metavar="ACTION", required=True)
    p = actions.add_parser("add", help="register a camera")
    p.add_argument("camera_id", metavar="ID", help="the camera's folder name in the inbox")
    _fields(p)
    p.set_defaults(func=_add)
    p = actions.add_parser("list", help="show every camera as a table")
    _common(p)
    p.set_defaults(func=_list)
    p = actions.add_parser("set", help="change a registered camera (stored frames keep their zone)")
    p.add_argument("camera_id", metavar="ID", help="a registered camera id")
    _fields(p)
    p.set_defaults(func=_set)
