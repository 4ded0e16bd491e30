"""Calendar periods in the shop's timezone (docs/metrics.md, Time).

A period is ``[start, end)``: a ``day`` starts at local midnight, a ``week`` at midnight of
its first day (Monday unless configured otherwise), a ``month`` at midnight on the 1st.
Calendar periods, not fixed durations, because reports and cohorts are read by people in
calendar terms: across a daylight-saving change a day lasts 23 or 25 hours.

The calendar is the process's: UTC with weeks from Monday unless :func:`use_calendar` is
told otherwise (the command line does so from ``RETENTION_TIMEZONE`` and
``RETENTION_WEEK_START``). The store records the calendar it was written with and refuses
another (store/shards.py). Period starts are datetimes in the calendar's zone; a day is
numbered by its local date, counted from 1970-01-01 (the store's period keys).

Every function refuses naive datetimes: a naive time has no defined instant, and guessing
its zone would shift events across period boundaries without anyone noticing.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta, tzinfo
from typing import Literal
from zoneinfo import ZoneInfo

from contract.events import EPOCH, MS_PER_DAY

Period = Literal["day", "week", "month"]
PERIODS: tuple[Period, ...] = ("day", "week", "month")
#: Week start days, as ``RETENTION_WEEK_START`` names them; 0 is Monday.
WEEKDAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")

_DAY = timedelta(days=1)
_WEEK = timedelta(days=7)


@dataclass(frozen=True, slots=True)
class Calendar:
    """Where periods start: an IANA zone name and the first day of the week (0 Monday)."""

    zone: str = "UTC"
    week_start: int = 0

    @property
    def tz(self) -> tzinfo:
        return UTC if self.zone == "UTC" else ZoneInfo(self.zone)

    @property
    def label(self) -> str:
        """What the store records (``zone`` and week start day), e.g. ``Asia/Tokyo|0``."""
        return f"{self.zone}|{self.week_start}"

    def describe(self) -> str:
        """For people: ``Asia/Tokyo, weeks from Sunday``."""
        return f"{self.zone}, weeks from {WEEKDAYS[self.week_start].capitalize()}"


UTC_CALENDAR = Calendar()
_calendar = UTC_CALENDAR
_tz: tzinfo = UTC
#: local day numbers per quarter hour since the epoch (every UTC offset in use is a whole
#: number of quarter hours), so that an event's periods cost one lookup
_days_cache: dict[int, tuple[int, int, int]] = {}


def calendar_of(zone: str, week_start: str | int = 0) -> Calendar:
    """A checked calendar: ``zone`` an IANA name, ``week_start`` a day name or 0-6."""
    if zone != "UTC":
        ZoneInfo(zone)  # unknown names raise here, not at the first event
    day = week_start if isinstance(week_start, int) else WEEKDAYS.index(week_start.lower())
    if not 0 <= day <= 6:
        raise ValueError(f"week start {week_start!r}: 0 (Monday) to 6 (Sunday)")
    return Calendar(zone, day)


def use_calendar(calendar: Calendar) -> None:
    """Count every period of this process in ``calendar``."""
    global _calendar, _tz
    if calendar != _calendar:
        _calendar, _tz = calendar, calendar.tz
        _days_cache.clear()


def current_calendar() -> Calendar:
    return _calendar


@contextmanager
def calendar_in_use(calendar: Calendar) -> Iterator[None]:
    """Count periods in ``calendar`` within the block, then in the one before."""
    before = _calendar
    use_calendar(calendar)
    try:
        yield
    finally:
        use_calendar(before)


def _local_date(ts: datetime) -> date:
    if ts.tzinfo is None or ts.utcoffset() is None:
        raise ValueError(f"naive datetime {ts.isoformat()}: a UTC offset is required")
    return ts.astimezone(_tz).date()


def local_date(ts: datetime) -> date:
    """The calendar's date holding ``ts``."""
    return _local_date(ts)


def local_midnight(day: date) -> datetime:
    """The first instant of the local date ``day``, in the calendar's zone. Where the
    clocks jump over midnight, the day starts at the jump."""
    naive = datetime(day.year, day.month, day.day)
    if _tz is UTC:
        return naive.replace(tzinfo=UTC)
    # fold=0 puts a missing midnight at the instant of the jump; the round trip through
    # UTC gives it its real local time
    return naive.replace(tzinfo=_tz).astimezone(UTC).astimezone(_tz)


def _start_date(day: date, period: Period) -> date:
    if period == "day":
        return day
    if period == "week":
        return day - timedelta(days=(day.weekday() - _calendar.week_start) % 7)
    if period == "month":
        return day.replace(day=1)
    raise ValueError(f"unknown period {period!r}")


def period_start(ts: datetime, period: Period) -> datetime:
    """Start of the period that holds ``ts``, in the calendar's zone."""
    return local_midnight(_start_date(_local_date(ts), period))


def next_period(start: datetime, period: Period) -> datetime:
    """Start of the period after the one that holds ``start``."""
    first = _start_date(_local_date(start), period)
    if period == "day":
        return local_midnight(first + _DAY)
    if period == "week":
        return local_midnight(first + _WEEK)
    if first.month == 12:
        return local_midnight(first.replace(year=first.year + 1, month=1))
    return local_midnight(first.replace(month=first.month + 1))


def period_bounds(ts: datetime, period: Period) -> tuple[datetime, datetime]:
    """``(start, end)`` of the period that holds ``ts``; ``start <= ts < end``."""
    start = period_start(ts, period)
    return start, next_period(start, period)


def period_index(start: datetime, period: Period) -> int:
    """A dense number for the period that holds ``start``: consecutive periods differ by 1.

    Cohort offsets are differences of these numbers (docs/metrics.md, Cohorts: period ``c + k``).
    Days and weeks count from 0001-01-01, which is a Monday, so a week index never straddles
    a week; months count as ``12 * year + month - 1``.
    """
    first = _start_date(_local_date(start), period)
    if period == "day":
        return first.toordinal()
    if period == "week":
        return (first.toordinal() - 1 - _calendar.week_start) // 7
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
_QUARTER_MS = 900_000


def epoch_day(ts: datetime) -> int:
    """Days since 1970-01-01 of the local date holding ``ts``: the store's period key."""
    return _local_date(ts).toordinal() - _EPOCH_ORDINAL


def from_epoch_day(day: int) -> datetime:
    """The first instant of the local date numbered ``day``."""
    return local_midnight(date.fromordinal(day + _EPOCH_ORDINAL))


def local_day(ts_ms: int) -> int:
    """The number of the local date holding ``ts_ms`` (days since 1970-01-01)."""
    return period_days(ts_ms)[0]


def period_days(ts_ms: int) -> tuple[int, int, int]:
    """Epoch-day numbers of the starts of the day, week and month holding ``ts_ms``.

    Computed per event on the hot path, so it avoids building datetimes where it can:
    1970-01-01 was a Thursday, hence the shift by 3 to reach Monday. In another zone than
    UTC the local date is looked up once per quarter hour.
    """
    if _tz is not UTC:
        quarter = ts_ms // _QUARTER_MS
        known = _days_cache.get(quarter)
        if known is None:
            first = _zone_day(quarter * _QUARTER_MS)
            if first != _zone_day((quarter + 1) * _QUARTER_MS - 1):
                # a local midnight inside the quarter (an offset of odd minutes, 1970s
                # Liberia): this instant alone
                return _days_of(_zone_day(ts_ms))
            if len(_days_cache) > 100_000:
                _days_cache.clear()
            known = _days_cache[quarter] = _days_of(first)
        return known
    return _days_of(ts_ms // MS_PER_DAY)


def _zone_day(ts_ms: int) -> int:
    local = (EPOCH + timedelta(milliseconds=ts_ms)).astimezone(_tz)
    return local.toordinal() - _EPOCH_ORDINAL


def _days_of(day: int) -> tuple[int, int, int]:
    week = day - (day + 3 - _calendar.week_start) % 7
    month = day - (datetime.fromordinal(day + _EPOCH_ORDINAL).day - 1)
    return day, week, month
