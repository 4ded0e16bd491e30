"""Calendar periods in UTC: a table of boundaries, then properties."""

from __future__ import annotations

import random
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from itertools import pairwise
from typing import Any

import pytest

from processors.windows import (
    PERIODS,
    Period,
    next_period,
    period_bounds,
    period_index,
    period_start,
    periods_between,
)


def utc(
    year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0, us: int = 0
) -> datetime:
    return datetime(year, month, day, hour, minute, second, us, tzinfo=UTC)


PLUS_2 = timezone(timedelta(hours=2))
MINUS_5 = timezone(timedelta(hours=-5))


@pytest.mark.parametrize(
    ("ts", "period", "start", "end"),
    [
        # a day runs from 00:00 to the next 00:00
        (utc(2024, 3, 10, 23, 59, 59, 999999), "day", utc(2024, 3, 10), utc(2024, 3, 11)),
        (utc(2024, 3, 11), "day", utc(2024, 3, 11), utc(2024, 3, 12)),
        # the offset is applied before the day is cut: 01:30+02:00 is 23:30 UTC the day before
        (datetime(2024, 3, 11, 1, 30, tzinfo=PLUS_2), "day", utc(2024, 3, 10), utc(2024, 3, 11)),
        # Sunday 23:59:59 still belongs to the week that began on Monday
        (utc(2024, 3, 17, 23, 59, 59), "week", utc(2024, 3, 11), utc(2024, 3, 18)),
        # one second later: Monday 00:00 opens a new week
        (utc(2024, 3, 18), "week", utc(2024, 3, 18), utc(2024, 3, 25)),
        # Monday 01:30+02:00 is Sunday 23:30 UTC: the previous week
        (datetime(2024, 3, 18, 1, 30, tzinfo=PLUS_2), "week", utc(2024, 3, 11), utc(2024, 3, 18)),
        # Sunday 20:00-05:00 is Monday 01:00 UTC: the next week
        (datetime(2024, 3, 17, 20, tzinfo=MINUS_5), "week", utc(2024, 3, 18), utc(2024, 3, 25)),
        # ISO week 2020-W53 starts in December and holds New Year's Day 2021
        (utc(2021, 1, 1, 12), "week", utc(2020, 12, 28), utc(2021, 1, 4)),
        # 2025-W01 starts on 2024-12-30
        (utc(2024, 12, 31, 23, 59, 59), "week", utc(2024, 12, 30), utc(2025, 1, 6)),
        # Sunday 2027-01-03 closes 2026-W53
        (utc(2027, 1, 3, 23, 59, 59), "week", utc(2026, 12, 28), utc(2027, 1, 4)),
        # leap February ends on the 29th
        (utc(2024, 2, 29, 23, 59, 59), "month", utc(2024, 2, 1), utc(2024, 3, 1)),
        # a common-year February ends on the 28th
        (utc(2023, 2, 28, 12), "month", utc(2023, 2, 1), utc(2023, 3, 1)),
        # 31-day month
        (utc(2024, 1, 31, 23, 59, 59), "month", utc(2024, 1, 1), utc(2024, 2, 1)),
        # December rolls into the next year
        (utc(2024, 12, 31, 23, 59, 59), "month", utc(2024, 12, 1), utc(2025, 1, 1)),
        # the first instant of a month is its start
        (utc(2025, 1, 1), "month", utc(2025, 1, 1), utc(2025, 2, 1)),
        # 1 March 00:30+02:00 is still February in UTC
        (datetime(2024, 3, 1, 0, 30, tzinfo=PLUS_2), "month", utc(2024, 2, 1), utc(2024, 3, 1)),
    ],
)
def test_period_bounds(ts: datetime, period: Period, start: datetime, end: datetime) -> None:
    assert period_start(ts, period) == start
    assert period_bounds(ts, period) == (start, end)
    assert next_period(start, period) == end
    assert start <= ts < end
    assert period_start(ts, period).tzinfo is UTC


@pytest.mark.parametrize(
    ("earlier", "later", "period", "difference"),
    [
        # leap day in between
        (utc(2024, 2, 28), utc(2024, 3, 1), "day", 2),
        (utc(2023, 12, 31, 23), utc(2024, 1, 1), "day", 1),
        # 2020-W53 to 2021-W01 across the year boundary
        (utc(2020, 12, 28), utc(2021, 1, 4), "week", 1),
        # Sunday to Monday is one week apart, Monday to Sunday none
        (utc(2024, 3, 17, 23, 59, 59), utc(2024, 3, 18), "week", 1),
        (utc(2024, 3, 11), utc(2024, 3, 17, 23, 59, 59), "week", 0),
        (utc(2024, 1, 1), utc(2024, 12, 30), "week", 52),
        (utc(2023, 12, 15), utc(2024, 2, 1), "month", 2),
        (utc(2023, 1, 31), utc(2024, 1, 1), "month", 12),
        (utc(1997, 1, 1), utc(1998, 6, 30), "month", 17),
    ],
)
def test_period_index_difference(
    earlier: datetime, later: datetime, period: Period, difference: int
) -> None:
    assert period_index(later, period) - period_index(earlier, period) == difference


CALLS: list[tuple[str, Callable[[datetime], Any]]] = [
    ("period_start", lambda ts: period_start(ts, "day")),
    ("period_bounds", lambda ts: period_bounds(ts, "week")),
    ("next_period", lambda ts: next_period(ts, "month")),
    ("period_index", lambda ts: period_index(ts, "week")),
    ("periods_between first", lambda ts: periods_between(ts, utc(2030, 1, 1), "day")),
    ("periods_between last", lambda ts: periods_between(utc(2020, 1, 1), ts, "day")),
]


@pytest.mark.parametrize(("name", "call"), CALLS, ids=[name for name, _ in CALLS])
def test_naive_input_is_refused(name: str, call: Callable[[datetime], Any]) -> None:
    with pytest.raises(ValueError, match="naive"):
        call(datetime(2024, 3, 11, 12))


@pytest.mark.parametrize(
    ("first", "last", "period", "expected"),
    [
        # Sunday and the next Monday lie in two weeks
        (utc(2024, 3, 17, 23), utc(2024, 3, 18, 1), "week", [utc(2024, 3, 11), utc(2024, 3, 18)]),
        # both ends in the same period
        (utc(2024, 3, 12), utc(2024, 3, 14), "week", [utc(2024, 3, 11)]),
        # the last period is included even when `last` is its first instant
        (utc(2024, 1, 15), utc(2024, 3, 1), "month", [utc(2024, m, 1) for m in (1, 2, 3)]),
        # leap day included
        (
            utc(2024, 2, 28, 5),
            utc(2024, 3, 1),
            "day",
            [utc(2024, 2, 28), utc(2024, 2, 29), utc(2024, 3, 1)],
        ),
        # `last` before `first`'s period: nothing
        (utc(2024, 3, 12), utc(2024, 3, 1), "week", []),
    ],
)
def test_periods_between(
    first: datetime, last: datetime, period: Period, expected: list[datetime]
) -> None:
    assert periods_between(first, last, period) == expected


@pytest.mark.parametrize("period", PERIODS)
def test_consecutive_periods_are_dense(rng: random.Random, period: Period) -> None:
    """Each period's end is the next one's start, and its index is one more."""
    for _ in range(200):
        ts = utc(1990, 1, 1) + timedelta(seconds=rng.randrange(60 * 365 * 86400))
        start, end = period_bounds(ts, period)
        assert start <= ts < end
        assert period_start(end, period) == end
        assert period_start(end - timedelta(microseconds=1), period) == start
        assert period_index(end, period) == period_index(start, period) + 1
        assert period_index(ts, period) == period_index(start, period)


@pytest.mark.parametrize("period", PERIODS)
def test_periods_between_counts_by_index(rng: random.Random, period: Period) -> None:
    for _ in range(50):
        first = utc(2020, 1, 1) + timedelta(hours=rng.randrange(24 * 800))
        last = first + timedelta(hours=rng.randrange(24 * 400))
        starts = periods_between(first, last, period)
        assert len(starts) == period_index(last, period) - period_index(first, period) + 1
        assert all(next_period(a, period) == b for a, b in pairwise(starts))


@pytest.mark.parametrize(
    "instant",
    [
        "1970-01-01T00:00:00Z",
        "1969-12-31T23:59:59.999Z",  # before the epoch: floor, not truncation
        "2024-02-29T12:00:00Z",
        "2024-12-30T00:00:00Z",  # ISO week 1 of 2025 starts in 2024
        "2026-11-23T10:29:26Z",
        "1997-03-31T23:59:59Z",
    ],
)
def test_period_days_agree_with_period_start(instant: str) -> None:
    from processors.windows import epoch_day, from_epoch_day, period_days

    ts = datetime.fromisoformat(instant)
    ms = (ts - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(milliseconds=1)
    day, week, month = period_days(ms)
    assert day == epoch_day(period_start(ts, "day"))
    assert from_epoch_day(week) == period_start(ts, "week")
    assert from_epoch_day(month) == period_start(ts, "month")
