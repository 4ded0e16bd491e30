"""Periods in the shop's timezone: day, week and month rows and cohorts counted by the
store in Asia/Tokyo and America/Los_Angeles, across daylight-saving changes, equal two
batch computations in that zone; a store refuses a worker set to another calendar."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from redis.asyncio import Redis

from processors.metrics import cohorts, period_rows
from processors.windows import (
    Period,
    calendar_in_use,
    calendar_of,
    current_calendar,
    period_days,
    use_calendar,
)
from store.periods import Periods
from store.shards import CalendarMismatch, check_calendar, stored_calendar
from store.store import Store
from tests import oracle
from tests.eventgen import random_events, with_duplicates
from tests.integration.test_periods import KINDS, load, unique

# 2024-03-10 and 2024-11-03: the US clocks go forward and back; Tokyo keeps +09:00
DST_CHANGES = (datetime(2024, 3, 10, tzinfo=UTC), datetime(2024, 11, 3, tzinfo=UTC))


def _near_midnights(rng: random.Random, zone: str, count: int) -> list[dict[str, Any]]:
    """Events a few minutes either side of local midnights around the clock changes,
    where a UTC day, or a day of fixed 24 hours, would put them in another period."""
    tz = ZoneInfo(zone)
    out = []
    for n in range(count):
        change = rng.choice(DST_CHANGES)
        day = (change + timedelta(days=rng.randint(-3, 3))).astimezone(tz).date()
        midnight = datetime(day.year, day.month, day.day, tzinfo=tz)
        ts = midnight + timedelta(minutes=rng.choice([-45, -5, -1, 1, 5, 45, 90]))
        kind = rng.random()
        event: dict[str, Any] = {
            "event_id": f"mid-{n}",
            "customer_id": f"cust-{rng.randrange(40):04d}",
            "ts": ts.astimezone(UTC).isoformat(),
        }
        if kind < 0.6:
            event |= {"type": "order", "amount": rng.randint(1, 90), "status": "placed"}
        else:
            event |= {"type": "login"}
        out.append(event)
    return out


def _spread_over_2024(rng: random.Random, events: list[dict[str, Any]]) -> None:
    """Move the generated events (late 2023 to mid 2024) to cover both clock changes."""
    for event in events:
        shift = rng.choice([0, 0, 200])
        ts = event["ts"]
        if isinstance(ts, int):
            event["ts"] = ts + shift * 86400
        else:
            moved = datetime.fromisoformat(ts.replace("Z", "+00:00")) + timedelta(days=shift)
            event["ts"] = moved.isoformat()


@pytest.mark.parametrize(
    ("zone", "week_start"),
    [("Asia/Tokyo", "monday"), ("America/Los_Angeles", "sunday")],
)
async def test_rows_and_cohorts_follow_the_shops_calendar(
    redis: Redis, rng: random.Random, zone: str, week_start: str
) -> None:
    calendar = calendar_of(zone, week_start)
    prefix = f"tz{rng.randrange(1 << 30)}:"
    with calendar_in_use(calendar):
        events = random_events(rng, customers=60, count=1500)
        _spread_over_2024(rng, events)
        events += _near_midnights(rng, zone, 400)
        events = with_duplicates(rng, events, share=0.05)
        rng.shuffle(events)
        await load(Store(redis, prefix, KINDS), events, rng)
        accepted = unique(events)
        periods = Periods(redis, prefix)
        for period, churn_days in (("day", 7), ("week", 30), ("month", 60)):
            await _check(periods, accepted, period, churn_days, zone, calendar.week_start)


async def _check(
    periods: Periods,
    accepted: list[Any],
    period: Period,
    churn_days: int,
    zone: str,
    week_start: int,
) -> None:
    got = await periods.rows(period, churn_days)
    # every period starts at a local midnight, on the configured weekday for weeks
    for row in got:
        start = datetime.fromisoformat(row.period)
        assert period != "week" or start.weekday() == week_start
    want = period_rows(
        accepted, period=period, churn_after=timedelta(days=churn_days), activity_kinds=set(KINDS)
    )
    assert [r.as_dict() for r in got] == [r.as_dict() for r in want], period
    independent = oracle.period_rows(
        accepted, period, churn_days, frozenset(KINDS), zone=zone, week_start=week_start
    )
    assert [r.as_dict() for r in got] == [pytest.approx(r) for r in independent], period
    matrix = await periods.cohorts(period)
    assert matrix == cohorts(accepted, period=period, activity_kinds=frozenset(KINDS))
    assert {k: c.as_dict() for k, c in matrix.items()} == oracle.cohorts(
        accepted, period, frozenset(KINDS), zone=zone, week_start=week_start
    )


async def test_a_store_refuses_a_worker_set_to_another_calendar(
    redis: Redis, rng: random.Random
) -> None:
    prefix = f"tz{rng.randrange(1 << 30)}:"
    tokyo = calendar_of("Asia/Tokyo")
    event = {"event_id": "e", "customer_id": "c", "ts": 1_710_000_000, "type": "login"}
    with calendar_in_use(tokyo):
        await load(Store(redis, prefix, KINDS), [event], rng)
    assert current_calendar() != tokyo
    with pytest.raises(CalendarMismatch, match="Asia/Tokyo, weeks from Monday"):
        await check_calendar(redis, prefix, writer=True)
    # a reader counts in the store's calendar, whatever its own
    before = current_calendar()
    try:
        await check_calendar(redis, prefix, writer=False)
        assert current_calendar() == tokyo
    finally:
        use_calendar(before)


def test_a_local_day_is_the_zones_date_on_both_sides_of_a_clock_change() -> None:
    la = ZoneInfo("America/Los_Angeles")
    with calendar_in_use(calendar_of("America/Los_Angeles", "sunday")):
        for hours in range(-30, 30):
            instant = datetime(2024, 3, 10, 10, tzinfo=UTC) + timedelta(minutes=37 * hours)
            ms = int(instant.timestamp() * 1000)
            local = instant.astimezone(la).date()
            day, week, month = period_days(ms)
            assert day == (local - datetime(1970, 1, 1).date()).days
            # 2024-03-10 is a Sunday: the week of the days around it starts on the Sunday
            sunday = local - timedelta(days=(local.weekday() + 1) % 7)
            assert week == (sunday - datetime(1970, 1, 1).date()).days
            assert month == (local.replace(day=1) - datetime(1970, 1, 1).date()).days


async def test_a_reader_keeps_its_calendar_over_an_empty_store_and_a_wipe_records_one(
    redis: Redis, rng: random.Random
) -> None:
    prefix = f"tz{rng.randrange(1 << 30)}:"
    tokyo, la = calendar_of("Asia/Tokyo"), calendar_of("America/Los_Angeles", "sunday")
    with calendar_in_use(tokyo):
        # nothing stored yet: a reader (an exporter started before the workers) keeps
        # its own calendar instead of taking the empty store for a UTC one
        await check_calendar(redis, prefix, writer=False)
        assert current_calendar() == tokyo
        event = {"event_id": "e", "customer_id": "c", "ts": 1_710_000_000, "type": "login"}
        store = Store(redis, prefix, KINDS)
        await load(store, [event], rng)
        assert await stored_calendar(redis, prefix) == tokyo
        # a wipe keeps the store's calendar unless told another (retention rebuild)
        await store.wipe()
        assert await stored_calendar(redis, prefix) == tokyo
        await store.wipe(calendar=la)
        assert await stored_calendar(redis, prefix) == la
