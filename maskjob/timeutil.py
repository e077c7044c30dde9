"""Time helpers: every time column stores naive UTC.
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from functools import lru_cache
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

__all__ = ["MAX_YEAR", "MIN_YEAR", "check_year", "to_naive_utc", "utcnow", "zone"]

# Dates a user gives (capture intervals, report windows, run days) must lie in these years:
# far wider than any camera, and far enough from 1 and 9999 that a day or a zone offset
# added to them never overflows.
MIN_YEAR = 1900
MAX_YEAR = 2999


def utcnow() -> datetime:
    """Now as naive UTC, the form every time column stores."""
    return datetime.now(UTC).replace(tzinfo=None)


def to_naive_utc(value: datetime) -> datetime:
    """``value`` as naive UTC, the form every time column stores; naive input is taken as UTC."""
    if value.tzinfo is None:
        return value
    return value.astimezone(UTC).replace(tzinfo=None)


def check_year(value: date) -> date:
    """``value`` if its year is in ``MIN_YEAR..MAX_YEAR``; else ``ValueError`` saying so."""
    if not MIN_YEAR <= value.year <= MAX_YEAR:
        raise ValueError(f"year {value.year} is outside {MIN_YEAR}-{MAX_YEAR}")
    return value


@lru_cache(maxsize=256)
def zone(name: str) -> ZoneInfo:
    """The IANA time zone ``name`` (e.g. ``Europe/Berlin``); ``ValueError`` saying what is wrong."""
    if not isinstance(name, str) or not name.strip() or name != name.strip():
        raise ValueError(f"{name!r} is not an IANA time zone name such as 'Europe/Berlin' or 'UTC'")
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise ValueError(f"{name!r} is not an IANA time zone name such as 'Europe/Berlin' or 'UTC'") from None
