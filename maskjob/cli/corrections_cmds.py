"""``maskjob corrections``: reviewed faces into the training dataset, and Label Studio JSON."""

from __future__ import annotations

import argparse
import json

from maskjob.cli import settings_from_args
from maskjob.config import Settings

__all__ = ["add_commands"]


def _settings(args: argparse.Namespace) -> Settings:
    overrides = {"database_url": args.database_url, "inbox_dir": getattr(args, "inbox", None),
                 "dataset_root": getattr(args, "dataset", None)}
    return settings_from_args(args, **{k: v for k, v in overrides.items() if v})


def _export(args: argparse.Namespace) -> int:
    from maskjob.review.export import export_corrections
    from maskjob.storage.database import database

    settings = _settings(args)
    with database(settings.database_url) as engine:
        result = export_corrections(engine, settings)
    print(json.dumps(result.to_dict(), indent=2) if args.json else result.format_text())
    return 0


def _export_labelstudio(args: argparse.Namespace) -> int:
    from maskjob.review.labelstudio import export_tasks, write_tasks
    from maskjob.storage.database import database

    settings = _settings(args)
    with database(settings.database_url) as engine:
        tasks = export_tasks(engine, settings, queue_limit=args.queue, reviewed=not args.queue_only,
                             image_url_prefix=args.image_url_prefix)
    path = write_tasks(args.out, tasks)
    print(f"{len(tasks)} Label Studio tasks written to {path}")
    return 0


def _import_labelstudio(args: argparse.Namespace) -> int:
    from maskjob.review.labelstudio import import_tasks, read_tasks
    from maskjob.storage.database import database

    settings = _settings(args)
    tasks = read_tasks(args.source)
    with database(settings.database_url) as engine:
        result = import_tasks(engine, tasks, args.reviewer)
    print(json.dumps(result.to_dict(), indent=2) if args.json else result.format_text())
    return 0


def _database(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--database-url", metavar="URL",
                        help="database to use (default: setting database_url, sqlite:///<data_dir>/maskjob.db)")


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    """Register ``corrections`` (with ``export``, ``export-labelstudio``, ``import-labelstudio``)."""
    corrections = subparsers.add_parser(
        "corrections", help="reviewed faces as training data (the nightly DAG's export_corrections step)")
    sub = corrections.add_subparsers(dest="corrections_command", metavar="ACTION", required=True)

    export = sub.add_parser(
        "export", help="crop every reviewed face into the dataset (train or test_site, by camera and day) "
        "with site_provenance.jsonl; idempotent")
    export.add_argument("--dataset", metavar="DIR", help="dataset root (default: setting dataset_root)")
    export.add_argument("--inbox", metavar="DIR", help="where the frames are (default: setting inbox_dir)")
    export.add_argument("--json", action="store_true", help="print the result as JSON")
    _database(export)
    export.set_defaults(func=_export)

    ls_out = sub.add_parser(
        "export-labelstudio", help="write Label Studio tasks (JSON): faces in the review queue with the "
        "model's prediction, and reviewed faces with their review as the annotation")
    ls_out.add_argument("out", metavar="OUT.json", help="the file to write")
    ls_out.add_argument("--queue", type=int, default=500, metavar="N",
                        help="faces from the review queue to include (default 500; 0: none)")
    ls_out.add_argument("--queue-only", action="store_true", help="leave the already reviewed faces out")
    ls_out.add_argument("--image-url-prefix", default="/data/local-files/?d=", metavar="PREFIX",
                        help="put before each frame's inbox path to make the task's image URL (default: "
                        "Label Studio's local files storage, '/data/local-files/?d=')")
    _database(ls_out)
    ls_out.set_defaults(func=_export_labelstudio)

    ls_in = sub.add_parser(
        "import-labelstudio", help="record the annotations of Label Studio tasks exported by maskjob as "
        "reviews; tasks that cannot be used are listed with the reason")
    ls_in.add_argument("source", metavar="IN.json", help="Label Studio's JSON export")
    ls_in.add_argument("--reviewer", required=True, metavar="NAME", help="the name the reviews are recorded under")
    ls_in.add_argument("--json", action="store_true", help="print the result as JSON")
    _database(ls_in)
    ls_in.set_defaults(func=_import_labelstudio)
