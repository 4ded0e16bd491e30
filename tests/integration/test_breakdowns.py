"""Breakdowns by country, channel and shop: every value's rows and cohort cells equal a
batch computation over the customers whose latest value it is, and the total equals the
rows without a breakdown."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import pytest
from redis.asyncio import Redis

from contract.events import ATTRIBUTES, Event
from processors.metrics import (
    PeriodCounts,
    by_latest_value,
    cohorts,
    period_rows,
    row_from_counts,
)
from processors.windows import Period
from store.periods import Periods
from store.store import Store
from tests.eventgen import random_events, with_duplicates
from tests.integration.test_periods import KINDS, load, unique

EMPTY = PeriodCounts(0, 0, 0, 0, 0, 0, 0, 0, 0, 0)


def _expected_rows(
    events: list[Event], period: Period, churn_days: int, last: Event
) -> dict[str, dict[str, object]]:
    rows = period_rows(
        events,
        period=period,
        churn_after=timedelta(days=churn_days),
        activity_kinds=set(KINDS),
        until=last.ts,
    )
    return {r.period: r.as_dict() for r in rows}


@pytest.mark.parametrize(
    ("period", "churn_days", "attribute"),
    [
        ("day", 7, "country"),
        ("week", 30, "channel"),
        ("month", 60, "shop"),
        ("week", 14, "currency"),
    ],
)
async def test_every_value_equals_the_batch_computation(
    redis: Redis, rng: random.Random, period: Period, churn_days: int, attribute: str
) -> None:
    prefix = f"brk{rng.randrange(1 << 30)}:"
    store = Store(redis, prefix, KINDS)
    # shuffled: values and first activities arrive late and move customers between groups
    events = random_events(rng, customers=80, count=2000)
    for event in events:
        if event["type"] == "order" and rng.random() < 0.8:
            event["currency"] = rng.choice(["EUR", "USD", "JPY"])
    events = with_duplicates(rng, events, share=0.05)
    rng.shuffle(events)
    await load(store, events, rng)
    accepted = unique(events)
    last = max(accepted, key=lambda e: e.ts)
    groups = by_latest_value(accepted, attribute)

    periods = Periods(redis, prefix)
    by = await periods.breakdown(attribute)
    assert set(by.values) == {v for v in groups if v is not None}
    assert dict(zip(by.values, by.sizes, strict=True)) == {
        v: len({e.customer_id for e in group}) for v, group in groups.items() if v is not None
    }
    starts = await periods.starts(period)
    total, parts = await periods.breakdown_of(period, starts, churn_days, by)
    assert total == await periods.rows_of(period, starts, churn_days)
    assert set(parts) == set(groups) | {None}
    for value, rows in parts.items():
        want = _expected_rows(groups[value], period, churn_days, last) if value in groups else {}
        for start, row in zip(starts, rows, strict=True):
            # periods before the group's first event are empty
            expected = want.get(row.period, row_from_counts(start, EMPTY).as_dict())
            assert row.as_dict() == expected, (value, row.period)

    matrix, cohort_parts = await periods.cohorts_by(period, by)
    assert matrix == await periods.cohorts(period)
    for value, group in groups.items():
        want_cohorts = cohorts(group, period=period, activity_kinds=frozenset(KINDS), until=last.ts)
        assert cohort_parts[value] == want_cohorts, value


async def test_a_customer_moving_to_another_country_takes_its_numbers_along(
    redis: Redis, rng: random.Random
) -> None:
    prefix = f"brk{rng.randrange(1 << 30)}:"
    store = Store(redis, prefix, KINDS)
    base = 1_700_000_000
    first = [
        {
            "event_id": "a",
            "customer_id": "c1",
            "ts": base,
            "type": "order",
            "amount": 10,
            "status": "placed",
            "country": "DE",
        },
        {
            "event_id": "b",
            "customer_id": "c2",
            "ts": base,
            "type": "order",
            "amount": 5,
            "status": "placed",
            "country": "FR",
        },
    ]
    await load(store, first, rng)
    periods = Periods(redis, prefix)
    by = await periods.breakdown("country")
    assert by.values == ("DE", "FR")
    starts = await periods.starts("month")
    _, parts = await periods.breakdown_of("month", starts, 30, by)
    assert parts["DE"][0].revenue == 10.0 and parts["FR"][0].revenue == 5.0

    # a later order from France: c1's latest country is FR, and its revenue goes with it
    moved = [
        {
            "event_id": "c",
            "customer_id": "c1",
            "ts": base + 3600,
            "type": "order",
            "amount": 1,
            "status": "placed",
            "country": "FR",
        },
    ]
    await load(store, moved, rng, {0: 10, 1: 10, 2: 10})
    by = await periods.breakdown("country")
    assert by.values == ("FR",) and by.sizes == (2,)
    _, parts = await periods.breakdown_of("month", starts, 30, by)
    assert parts["FR"][0].revenue == 16.0 and parts["FR"][0].orders == 3
    assert parts["FR"][0].repeat_customer_rate == 0.5
    assert parts[None][0].orders == 0


def test_the_command_line_offers_every_dimension() -> None:
    from retention.cli import BREAKDOWNS

    assert BREAKDOWNS == ATTRIBUTES


async def test_the_exporter_labels_the_top_values_and_the_rest_as_other(
    redis: Redis, rng: random.Random
) -> None:
    from retention.snapshot import _monthly_breakdowns

    prefix = f"brk{rng.randrange(1 << 30)}:"
    events = random_events(rng, customers=80, count=1500)
    await load(Store(redis, prefix, KINDS), events, rng)
    accepted = unique(events)
    # the data runs from 2023-11-14 for 200 days: "now" in its fourth month
    now = datetime(2024, 3, 10, 12, tzinfo=UTC)
    got = await _monthly_breakdowns(Periods(redis, prefix), now, 30, top=2)
    # the top two by customers (counted over all the data, as the store keeps them)
    everyone = by_latest_value(accepted, "country")
    top = sorted(
        (v for v in everyone if v is not None),
        key=lambda v: (-len({e.customer_id for e in everyone[v]}), v),
    )[:2]
    assert len(top) == 2
    assert {v for a, v, _ in got if a == "country"} == {*top, "other"}
    for value in [*top, "other"]:
        if value == "other":
            mine = [e for v, g in everyone.items() if v not in top for e in g]
        else:
            mine = everyone[value]
        want = _expected_rows(mine, "month", 30, max(accepted, key=lambda e: e.ts))
        for window, start in (("last_closed", "2024-02-01"), ("current", "2024-03-01")):
            row = got[("country", value, window)]
            assert row.period == start
            assert row.as_dict() == want.get(start), (value, window)


async def test_a_scrape_serves_the_last_breakdowns_while_they_are_counted_again(
    redis: Redis, rng: random.Random, monkeypatch: pytest.MonkeyPatch
) -> None:
    from retention import snapshot

    prefix = f"brk{rng.randrange(1 << 30)}:"
    store, periods = Store(redis, prefix, KINDS), Periods(redis, prefix)
    base = 1_709_900_000  # 2024-03-08
    order = {"type": "order", "amount": 10, "status": "placed", "country": "DE"}
    await load(store, [{"event_id": "a", "customer_id": "c1", "ts": base, **order}], rng)
    now = datetime(2024, 3, 10, tzinfo=UTC)
    first = await snapshot._monthly_breakdowns(periods, now, 30, top=3)
    assert first[("country", "DE", "current")].orders == 1

    await load(
        store,
        [{"event_id": "b", "customer_id": "c2", "ts": base, **order}],
        rng,
        {0: 5, 1: 5, 2: 5},
    )
    monkeypatch.setattr(snapshot, "BREAKDOWN_EVERY_SECONDS", 0.0)
    # too old: the last count is served at once, and a new one starts beside the scrape
    assert await snapshot._monthly_breakdowns(periods, now, 30, top=3) is first
    counting = snapshot._breakdowns[prefix].task
    assert counting is not None
    await counting
    again = await snapshot._monthly_breakdowns(periods, now, 30, top=3)
    assert again is not first and again[("country", "DE", "current")].orders == 2
    # with no age allowed, that call started yet another count: let it end with the test
    left = snapshot._breakdowns[prefix].task
    if left is not None:
        await left
