"""``maskjob review user add|list|disable`` and ``maskjob review serve``: the review page."""

from __future__ import annotations

import argparse
import getpass
import json
import sys

from maskjob.cli import settings_from_args
from maskjob.errors import MaskjobError
from maskjob.vocab import REVIEW_ROLES

__all__ = ["add_commands"]


def _password(args: argparse.Namespace) -> str:
    """The new password from stdin (``--password-stdin``: its first line) or typed twice at a prompt."""
    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
        if not password:
            raise MaskjobError("no password on stdin: pipe it in, e.g. `printf %s \"$PW\" | maskjob review user "
                               "add NAME --password-stdin`")
        return password
    if not sys.stdin.isatty():
        raise MaskjobError("no terminal to ask for the password: pass --password-stdin and pipe it in")
    first = getpass.getpass(f"password for {args.username}: ")
    if first != getpass.getpass("again: "):
        raise MaskjobError("the two passwords differ: run the command again")
    return first


def _user_add(args: argparse.Namespace) -> int:
    from maskjob.review.auth import add_user
    from maskjob.storage.database import database

    settings = settings_from_args(args, database_url=args.database_url)
    password = _password(args)
    with database(settings.database_url) as engine:
        user = add_user(engine, args.username, args.role, password, replace=args.replace)
    print(f"{'updated' if args.replace else 'added'} user {user.username} ({user.role})")
    return 0


def _user_list(args: argparse.Namespace) -> int:
    from maskjob.review.auth import list_users
    from maskjob.storage.database import database

    settings = settings_from_args(args, database_url=args.database_url)
    with database(settings.database_url) as engine:
        users = list_users(engine)
    if args.json:
        print(json.dumps([{"username": u.username, "role": u.role, "disabled": u.disabled,
                           "created_at": u.created_at.isoformat() if u.created_at else None} for u in users], indent=2))
        return 0
    if not users:
        print("no review users yet: `maskjob review user add NAME --role reviewer`")
        return 0
    width = max(len(u.username) for u in users)
    for u in users:
        print(f"{u.username.ljust(width)}  {u.role:<8}  {'disabled' if u.disabled else 'enabled'}")
    return 0


def _user_disable(args: argparse.Namespace) -> int:
    from maskjob.review.auth import disable_user
    from maskjob.storage.database import database

    settings = settings_from_args(args, database_url=args.database_url)
    with database(settings.database_url) as engine:
        user = disable_user(engine, args.username)
    print(f"disabled user {user.username}: it cannot log in, and its open sessions end")
    return 0


def _serve(args: argparse.Namespace) -> int:
    from maskjob.review.app import create_app, serve

    overrides = {"database_url": args.database_url, "review_host": args.host, "review_port": args.port}
    settings = settings_from_args(args, **overrides)
    app = create_app(settings)
    print(f"review page on http://{settings.review_host}:{settings.review_port}/ (Ctrl-C stops it)", flush=True)
    serve(settings, app)
    return 0


def _database(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--database-url", metavar="URL",
                        help="database to use (default: setting database_url, sqlite:///<data_dir>/maskjob.db)")


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    """Register ``review user add|list|disable`` and ``review serve``."""
    parser = subparsers.add_parser("review", help="the review web page: its users and its server",
                                   description="Reviewers correct the model's labels in a web page; the "
                                               "corrections count in the views and reports and become training "
                                               "data. See docs/REVIEW.md.")
    actions = parser.add_subparsers(dest="review_command", metavar="ACTION", required=True)
    user = actions.add_parser("user", help="add, list or disable review-page users")
    user_actions = user.add_subparsers(dest="user_command", metavar="ACTION", required=True)
    p = user_actions.add_parser("add", help="add a user (the password is asked for, never echoed)")
    p.add_argument("username", help="the login name (letters, digits, '.', '_', '@', '-')")
    p.add_argument("--role", choices=REVIEW_ROLES, default="reviewer",
                   help="viewer: looks, faces blurred; reviewer: also decides; admin: as reviewer (default: reviewer)")
    p.add_argument("--password-stdin", action="store_true",
                   help="read the password from the first line of stdin instead of a prompt")
    p.add_argument("--replace", action="store_true", help="set a new password and role for an existing user")
    _database(p)
    p.set_defaults(func=_user_add)
    p = user_actions.add_parser("list", help="show every user, role and state")
    p.add_argument("--json", action="store_true", help="print JSON")
    _database(p)
    p.set_defaults(func=_user_list)
    p = user_actions.add_parser("disable", help="stop a user logging in (ends its sessions)")
    p.add_argument("username", help="an existing user")
    _database(p)
    p.set_defaults(func=_user_disable)
    p = actions.add_parser("serve", help="serve the review page (uvicorn) until Ctrl-C")
    p.add_argument("--host", help="address to listen on (default: setting review_host, 127.0.0.1)")
    p.add_argument("--port", type=int, help="port (default: setting review_port, 8765)")
    _database(p)
    p.set_defaults(func=_serve)
