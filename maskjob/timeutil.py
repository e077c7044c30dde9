"""Time helpers: every time column stores naive UTC.
"""

from __future__ import annotations

from datetime import UTC, datetime

__all__ = ["utcnow", "to_naive_utc"]


def utcnow() -> datetime:
    """Now as naive UTC, the form every time column stores."""
    return datetime.now(UTC).replace(tzinfo=None)


def to_naive_utc(value: datetime) -> datetime:
    """``value`` as naive UTC, the form every time column stores; naive input is taken as UTC."""
    if value.tzinfo is None:
        return value
    return value.astimezone(UTC).replace(tzinfo=None)
