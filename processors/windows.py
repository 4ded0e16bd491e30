"""Calendar periods in UTC (docs/metrics.md, Time).

A period is ``[start, end)``: a ``day`` starts at 00:00 UTC, a ``week`` is the ISO week
starting Monday 00:00 UTC, a ``month`` starts on the 1st at 00:00 UTC. Calendar periods,
not fixed durations, because reports and cohorts are read by people in calendar terms.

Every function refuses naive datetimes: a naive time has no defined instant, and guessing
its zone would shift events across period boundaries without anyone noticing.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Literal

from contract.events import EPOCH, MS_PER_DAY

Period = Literal["day", "week", "month"]
PERIODS: tuple[Period, ...] = ("day", "week", "month")

_DAY = timedelta(days=1)
_WEEK = timedelta(days=7)


def _utc(ts: datetime) -> datetime:
    if ts.tzinfo is None or ts.utcoffset() is None:
        raise ValueError(f"naive datetime {ts.isoformat()}: a UTC offset is required")
    return ts.astimezone(UTC)


def period_start(ts: datetime, period: Period) -> datetime:
    """Start of the period that holds ``ts``, in UTC."""
    day = _utc(ts).replace(hour=0, minute=0, second=0, microsecond=0)
    if period == "day":
        return day
    if period == "week":
        return day - timedelta(days=day.weekday())
    if period == "month":
        return day.replace(day=1)
    raise ValueError(f"unknown period {period!r}")


def next_period(start: datetime, period: Period) -> datetime:
    """Start of the period after the one that holds ``start``."""
    first = period_start(start, period)
    if period == "day":
        return first + _DAY
    if period == "week":
        return first + _WEEK
    if first.month == 12:
        return first.replace(year=first.year + 1, month=1)
    return first.replace(month=first.month + 1)


def period_bounds(ts: datetime, period: Period) -> tuple[datetime, datetime]:
    """``(start, end)`` of the period that holds ``ts``; ``start <= ts < end``."""
    start = period_start(ts, period)
    return start, next_period(start, period)


def period_index(start: datetime, period: Period) -> int:
    """A dense number for the period that holds ``start``: consecutive periods differ by 1.

    Cohort offsets are differences of these numbers (docs/metrics.md, Cohorts: period ``c + k``).
    Days and weeks count from 0001-01-01, which is a Monday, so a week index never straddles
    an ISO week; months count as ``12 * year + month - 1``.
    """
    first = period_start(start, period)
    if period == "day":
        return first.toordinal()
    if period == "week":
        return (first.toordinal() - 1) // 7
    return 12 * first.year + first.month - 1


def periods_between(first: datetime, last: datetime, period: Period) -> list[datetime]:
    """Starts of every period from the one holding ``first`` through the one holding ``last``.

    Empty when ``last`` lies in a period before ``first``'s.
    """
    current = period_start(first, period)
    end = period_start(last, period)
    out: list[datetime] = []
    while current <= end:
        out.append(current)
        current = next_period(current, period)
    return out


_EPOCH_ORDINAL = EPOCH.toordinal()
PERIOD_LETTERS: dict[Period, str] = {"day": "d", "week": "w", "month": "m"}


def epoch_day(ts: datetime) -> int:
    """Days since 1970-01-01 of the UTC date holding ``ts``: the store's period key."""
    return _utc(ts).toordinal() - _EPOCH_ORDINAL


def from_epoch_day(day: int) -> datetime:
    return datetime.fromordinal(day + _EPOCH_ORDINAL).replace(tzinfo=UTC)


def period_days(ts_ms: int) -> tuple[int, int, int]:
    """Epoch-day numbers of the starts of the day, ISO week and month holding ``ts_ms``.

    Computed per event on the hot path, so it avoids building datetimes where it can:
    1970-01-01 was a Thursday, hence the shift by 3 to reach Monday.
    """
    day = ts_ms // MS_PER_DAY
    week = day - (day + 3) % 7
    month = day - (datetime.fromordinal(day + _EPOCH_ORDINAL).day - 1)
    return day, week, month
