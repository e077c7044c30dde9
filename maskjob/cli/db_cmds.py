"""``maskjob db upgrade|downgrade|current`` (schema) and ``maskjob register|promote|models``
(the model registry)."""

from __future__ import annotations

import argparse
import json
from typing import Any

from maskjob.cli import settings_from_args

__all__ = ["add_commands"]


def _settings(args: argparse.Namespace, **overrides: Any) -> Any:
    return settings_from_args(args, database_url=args.database_url, **overrides)


def _db_migrate(args: argparse.Namespace) -> int:
    from maskjob.storage import database

    settings = _settings(args)
    url = settings.database_url
    before = database.current(url)
    if args.direction == "upgrade":
        after = database.upgrade(url, args.rev, settings=settings)
    else:
        after = database.downgrade(url, args.rev)
    print(f"{database.safe_url(url)}: {before or 'empty'} -> {after or 'empty'}")
    return 0


def _db_current(args: argparse.Namespace) -> int:
    from maskjob.storage import database

    url = _settings(args).database_url
    rev, head = database.current(url), database.head_revision()
    if rev is None:
        state = "no schema; run `maskjob db upgrade`"
    elif rev == head:
        state = "head"
    else:
        state = f"head is {head}; run `maskjob db upgrade`"
    print(f"{database.safe_url(url)}: {rev or 'empty'} ({state})")
    return 0


def _register(args: argparse.Namespace) -> int:
    from maskjob.storage.database import database
    from maskjob.storage.registry import register

    with database(_settings(args).database_url) as engine:
        mv = register(engine, args.ckpt)
    print(f"{mv.version}: {mv.status} (test macro-F1 {mv.test_macro_f1}, {mv.checkpoint_path})")
    return 0


def _promote(args: argparse.Namespace) -> int:
    from maskjob.storage.database import database
    from maskjob.storage.registry import champion, promote

    settings = _settings(args, promotion_margin=args.margin)
    data_root = args.data or settings.dataset_root
    with database(settings.database_url) as engine:
        result = promote(engine, data_root, settings)
        current = champion(engine)
    if not result.decisions:
        print("no candidates to evaluate")
    for d in result.decisions:
        print(f"{d.version}: {d.status} - {d.reason}")
    print(f"champion: {current.version if current else 'none'}")
    return 0


def _version_dict(mv: Any) -> dict[str, Any]:
    return {
        "version": mv.version, "arch": mv.arch, "status": mv.status, "test_macro_f1": mv.test_macro_f1,
        "diverged": mv.diverged, "created_at": mv.created_at.isoformat(),
        "promoted_at": mv.promoted_at.isoformat() if mv.promoted_at else None,
        "checkpoint_path": mv.checkpoint_path, "checkpoint_sha256": mv.checkpoint_sha256,
        "dataset_fingerprint": mv.dataset_fingerprint, "decision_reason": mv.decision_reason,
    }


def _models(args: argparse.Namespace) -> int:
    from maskjob.storage.database import database
    from maskjob.storage.registry import list_versions

    with database(_settings(args).database_url) as engine:
        versions = [_version_dict(mv) for mv in list_versions(engine)]
    if args.json:
        print(json.dumps(versions, indent=2))
        return 0
    if not versions:
        print("no model versions registered; train with `maskjob train`, then `maskjob register CKPT`")
    for v in versions:
        f1 = "n/a" if v["test_macro_f1"] is None else f"{v['test_macro_f1']:.4f}"
        print(f"{v['version']:<44} {v['status']:<9} macro-F1 {f1:<6} {v['created_at']}  {v['decision_reason'] or ''}")
    return 0


def _add_url(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--database-url", metavar="URL",
                        help="database to use (default: setting database_url, sqlite:///<data_dir>/maskjob.db)")


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    db_parser = subparsers.add_parser("db", help="create or migrate the prediction database schema")
    actions = db_parser.add_subparsers(dest="db_command", metavar="ACTION", required=True)
    p = actions.add_parser("upgrade", help="migrate the schema up (creates the database if needed)")
    p.add_argument("rev", nargs="?", default="head", help="target revision (default: head)")
    _add_url(p)
    p.set_defaults(func=_db_migrate, direction="upgrade")
    p = actions.add_parser("downgrade", help="migrate the schema down")
    p.add_argument("rev", help="target revision, e.g. 0001; 'base' drops every maskjob table")
    _add_url(p)
    p.set_defaults(func=_db_migrate, direction="downgrade")
    p = actions.add_parser("current", help="show the schema revision of the database")
    _add_url(p)
    p.set_defaults(func=_db_current)

    p = subparsers.add_parser("register", help="record a trained checkpoint as a candidate model version")
    p.add_argument("ckpt", metavar="CKPT", help="checkpoint file written by `maskjob train`")
    _add_url(p)
    p.set_defaults(func=_register)

    p = subparsers.add_parser("promote", help="evaluate candidates and the champion on the test split; "
                                              "promote the best candidate if it passes the rules")
    p.add_argument("--data", metavar="ROOT", help="dataset root with a test/ split (default: setting dataset_root)")
    p.add_argument("--margin", type=float, metavar="X",
                   help="macro-F1 a candidate must beat the champion by (default: setting promotion_margin)")
    _add_url(p)
    p.set_defaults(func=_promote)

    p = subparsers.add_parser("models", help="list registered model versions and promotion decisions")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    _add_url(p)
    p.set_defaults(func=_models)
