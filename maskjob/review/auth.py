"""Review-page users, passwords, the session key and the login rate limit.

Passwords are hashed with Argon2id (``cryptography``'s ``Argon2id``, RFC 9106's second
recommended parameters: 64 MiB, 3 passes, 4 lanes, a 16-byte random salt) and stored as a PHC
string (``$argon2id$v=19$m=65536,t=3,p=4$<salt>$<hash>``), so the parameters travel with each
hash and can be raised later without breaking old ones. Verification is constant-time
(``Argon2id.verify_phc_encoded``); an unknown user costs the same hash as a known one.

Example:
    >>> add_user(engine, "ana", "reviewer", "correct horse battery")   # doctest: +SKIP
    >>> authenticate(engine, "ana", "correct horse battery").role      # doctest: +SKIP
    'reviewer'
"""

from __future__ import annotations

import os
import re
import secrets
import threading
import time
from collections import deque
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Callable

import sqlalchemy as sa
from cryptography.exceptions import InvalidKey
from cryptography.hazmat.primitives.kdf.argon2 import Argon2id
from sqlalchemy.engine import Connection, Engine

from maskjob.config import Settings
from maskjob.errors import MaskjobError
from maskjob.storage import schema
from maskjob.timeutil import utcnow
from maskjob.vocab import REVIEW_ROLES

__all__ = [
    "LoginLimiter", "ReviewUser", "add_user", "authenticate", "disable_user", "get_user", "hash_password",
    "list_users", "session_secret", "verify_password",
]

ARGON2_MEMORY_KIB = 65536
ARGON2_ITERATIONS = 3
ARGON2_LANES = 4
ARGON2_SALT_BYTES = 16
ARGON2_HASH_BYTES = 32
MIN_PASSWORD_CHARS = 8
MAX_PASSWORD_CHARS = 1024
SECRET_FILE_NAME = "review_secret"
USERNAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")

users_table = schema.ReviewUser.__table__


@dataclass(frozen=True)
class ReviewUser:
    """A review-page account (never carries its password hash)."""

    username: str
    role: str
    disabled: bool
    created_at: datetime | None
    password_changed_at: datetime | None

    @property
    def can_write(self) -> bool:
        """Reviewers and admins decide; viewers only look."""
        return self.role in ("reviewer", "admin")


def hash_password(password: str) -> str:
    """An Argon2id PHC string for ``password`` with a fresh random salt."""
    kdf = Argon2id(salt=os.urandom(ARGON2_SALT_BYTES), length=ARGON2_HASH_BYTES, iterations=ARGON2_ITERATIONS,
                   lanes=ARGON2_LANES, memory_cost=ARGON2_MEMORY_KIB)
    return kdf.derive_phc_encoded(password.encode("utf-8"))


# Verified when the user is unknown, so a wrong name takes as long as a wrong password.
_DUMMY_HASH = hash_password(secrets.token_urlsafe(16))


def verify_password(password: str, encoded: str) -> bool:
    """True when ``password`` matches the PHC string ``encoded`` (constant-time compare)."""
    if not encoded.startswith("$argon2id$"):
        return False
    try:
        Argon2id.verify_phc_encoded(password.encode("utf-8"), encoded)
    except (InvalidKey, ValueError):
        return False
    return True


def _check_new(username: str, role: str, password: str) -> None:
    if not USERNAME_RE.match(username):
        raise MaskjobError(f"user name {username!r} is not allowed: use 1-64 letters, digits, '.', '_', '@' or '-', "
                           "starting with a letter or digit")
    if role not in REVIEW_ROLES:
        raise MaskjobError(f"unknown role {role!r}: use one of {', '.join(REVIEW_ROLES)}")
    if not MIN_PASSWORD_CHARS <= len(password) <= MAX_PASSWORD_CHARS:
        raise MaskjobError(f"the password must have {MIN_PASSWORD_CHARS} to {MAX_PASSWORD_CHARS} characters")


def _user(row: sa.Row) -> ReviewUser:
    return ReviewUser(row.username, row.role, bool(row.disabled), row.created_at, row.password_changed_at)


def add_user(engine: Engine, username: str, role: str, password: str, *, replace: bool = False) -> ReviewUser:
    """Create a user (or with ``replace``, set an existing user's role and password and enable it).

    Raises:
        MaskjobError: a bad name, role or password length, or an existing user without ``replace``.
    """
    _check_new(username, role, password)
    encoded = hash_password(password)
    now = utcnow()
    with engine.begin() as conn:
        exists = _get(conn, username) is not None
        if exists and not replace:
            raise MaskjobError(f"user {username!r} already exists: pass --replace to set a new password and role")
        if exists:
            conn.execute(users_table.update().where(users_table.c.username == username)
                         .values(password_hash=encoded, role=role, disabled=False, password_changed_at=now))
        else:
            conn.execute(users_table.insert().values(username=username, password_hash=encoded, role=role,
                                                     disabled=False, created_at=now, password_changed_at=now))
        user = _get(conn, username)
    assert user is not None
    return user


def _get(conn: Connection, username: str) -> ReviewUser | None:
    row = conn.execute(sa.select(users_table.c.username, users_table.c.role, users_table.c.disabled,
                                 users_table.c.created_at, users_table.c.password_changed_at)
                       .where(users_table.c.username == username)).first()
    return None if row is None else _user(row)


def get_user(engine: Engine, username: str) -> ReviewUser | None:
    """The user named ``username``, or ``None``."""
    with engine.connect() as conn:
        return _get(conn, username)


def list_users(engine: Engine) -> list[ReviewUser]:
    """Every user, by name."""
    with engine.connect() as conn:
        rows = conn.execute(sa.select(users_table.c.username, users_table.c.role, users_table.c.disabled,
                                      users_table.c.created_at, users_table.c.password_changed_at)
                            .order_by(users_table.c.username)).all()
    return [_user(r) for r in rows]


def disable_user(engine: Engine, username: str) -> ReviewUser:
    """Disable ``username``: it can no longer log in, and its open sessions end at their next request.

    Raises:
        MaskjobError: no such user.
    """
    with engine.begin() as conn:
        done = conn.execute(users_table.update().where(users_table.c.username == username)
                            .values(disabled=True, password_changed_at=utcnow())).rowcount
        if not done:
            raise MaskjobError(f"no user {username!r}: see `maskjob review user list`")
        user = _get(conn, username)
    assert user is not None
    return user


def authenticate(engine: Engine, username: str, password: str) -> ReviewUser | None:
    """The enabled user whose password is ``password``, else ``None`` (same cost either way)."""
    with engine.connect() as conn:
        row = conn.execute(sa.select(users_table).where(users_table.c.username == username)).first()
    if row is None or len(password) > MAX_PASSWORD_CHARS:
        verify_password(password[:MAX_PASSWORD_CHARS], _DUMMY_HASH)
        return None
    if not verify_password(password, row.password_hash) or row.disabled:
        return None
    return _user(row)


def session_secret(settings: Settings) -> str:
    """The key that signs session cookies: setting ``review_secret``, else the random key kept in
    ``<data_dir>/review_secret`` (created once with mode 0600; its value is never printed or logged)."""
    if settings.review_secret:
        return settings.review_secret
    path = Path(settings.data_dir) / SECRET_FILE_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        pass
    else:
        with os.fdopen(fd, "w", encoding="ascii") as fh:
            fh.write(secrets.token_urlsafe(48))
    try:
        mode = path.stat().st_mode
        key = path.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise MaskjobError(f"cannot read the review key file {path}: {exc.__class__.__name__}. Delete it to get a "
                           "new one (open sessions end) or set review_secret") from None
    if mode & 0o077:
        raise MaskjobError(f"the review key file {path} is readable by other users: `chmod 600 {path}`")
    if len(key) < 32:
        raise MaskjobError(f"the review key file {path} holds a key shorter than 32 characters: delete it to get "
                           "a new one, or set review_secret")
    return key


class LoginLimiter:
    """Failed logins per (user, client address) in a sliding window; thread-safe, in memory.

    Example:
        >>> limiter = LoginLimiter(attempts=5, window_s=900)
        >>> limiter.retry_after_s("ana", "10.0.0.1")
        0.0
    """

    MAX_KEYS = 100_000

    def __init__(self, attempts: int, window_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.attempts = attempts
        self.window_s = window_s
        self._clock = clock
        self._failures: dict[tuple[str, str], deque[float]] = {}
        self._lock = threading.Lock()

    def _recent(self, key: tuple[str, str], now: float) -> deque[float]:
        stamps = self._failures.get(key, deque())
        while stamps and stamps[0] <= now - self.window_s:
            stamps.popleft()
        return stamps

    def retry_after_s(self, username: str, address: str) -> float:
        """Seconds until this user may try again from this address (0: now)."""
        now = self._clock()
        with self._lock:
            stamps = self._recent((username.casefold(), address), now)
            if len(stamps) < self.attempts:
                return 0.0
            return max(stamps[0] + self.window_s - now, 0.0)

    def failed(self, username: str, address: str) -> None:
        """Count one failed login."""
        now = self._clock()
        key = (username.casefold(), address)
        with self._lock:
            if len(self._failures) >= self.MAX_KEYS:
                self._prune(now)
            stamps = self._recent(key, now)
            stamps.append(now)
            self._failures[key] = stamps

    def succeeded(self, username: str, address: str) -> None:
        """Forget the failures of this user from this address."""
        with self._lock:
            self._failures.pop((username.casefold(), address), None)

    def _prune(self, now: float) -> None:
        for key in [k for k, v in self._failures.items() if not v or v[-1] <= now - self.window_s]:
            del self._failures[key]
