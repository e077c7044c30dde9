"""Time helpers: every stored time is timezone-aware UTC; local facts come from a camera's zone.

A wall-clock time without an offset (a camera's EXIF or file name) is read in the camera's
IANA zone with :func:`localize`: an ambiguous time (the hour repeated when clocks go back)
takes its first occurrence (``fold=0``), a time that does not exist (skipped when clocks go
forward) is moved forward by the gap, e.g. 02:30 on a spring-forward night becomes 03:30.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta, tzinfo
from functools import lru_cache
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

__all__ = [
    "MAX_YEAR", "MIN_YEAR", "check_year", "local_facts", "localize", "offset_text", "to_naive_utc", "to_utc",
    "utcnow", "zone",
]

# Dates a user gives (capture intervals, report windows, run days) must lie in these years:
# far wider than any camera, and far enough from 1 and 9999 that a day or a zone offset
# added to them never overflows.
MIN_YEAR = 1900
MAX_YEAR = 2999


def utcnow() -> datetime:
    """Now as aware UTC, the form every time column stores."""
    return datetime.now(UTC)


def to_utc(value: datetime) -> datetime:
    """``value`` as aware UTC; naive input is taken as UTC."""
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


def to_naive_utc(value: datetime) -> datetime:
    """``value`` as naive UTC (for code that still compares naive times); naive input is taken as UTC."""
    if value.tzinfo is None:
        return value
    return value.astimezone(UTC).replace(tzinfo=None)


def localize(wall: datetime, tz: tzinfo) -> datetime:
    """The aware UTC instant of the naive wall-clock time ``wall`` in zone ``tz``.

    Ambiguous times take the first occurrence (``fold=0``); non-existent times are moved
    forward by the gap (the instant a clock that missed the change would have shown).
    """
    first = wall.replace(tzinfo=tz, fold=0)
    instant = first.astimezone(UTC)
    if instant.astimezone(tz).replace(tzinfo=None) != wall:
        # In a gap: fold=0 used the offset before the change; move forward by the gap.
        before, after = first.utcoffset(), wall.replace(tzinfo=tz, fold=1).utcoffset()
        assert before is not None and after is not None
        instant = (wall - min(before, after)).replace(tzinfo=UTC)
    return instant


def local_facts(instant: datetime, tz: tzinfo) -> tuple[date, int]:
    """The local calendar day and UTC offset (seconds) of ``instant`` (naive = UTC) in ``tz``."""
    local = to_utc(instant).astimezone(tz)
    offset = local.utcoffset() or timedelta(0)
    return local.date(), int(offset.total_seconds())


def offset_text(offset_s: int) -> str:
    """``+05:30`` for 19800 seconds (the form SQLite's view text and ISO 8601 use)."""
    sign = "-" if offset_s < 0 else "+"
    minutes = abs(offset_s) // 60
    return f"{sign}{minutes // 60:02d}:{minutes % 60:02d}"


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
