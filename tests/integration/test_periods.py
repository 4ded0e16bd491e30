"""Period rows and cohorts from the store's bitmaps equal the batch reference."""

from __future__ import annotations

import random
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from redis.asyncio import Redis

from contract.events import Event, build_event
from processors.metrics import cohorts, is_activity, period_rows
from processors.windows import PERIODS, Period, epoch_day, next_period, period_start
from store.periods import Periods
from store.store import Store, accepted_record
from tests.eventgen import random_events, with_duplicates
from tests.integration.test_store import records_for

KINDS = ("order", "login")


def unique(events: list[dict[str, Any]]) -> list[Event]:
    seen: set[str] = set()
    out = []
    for raw in events:
        if raw["event_id"] not in seen:
            seen.add(raw["event_id"])
            out.append(build_event(raw))
    return out


async def load(
    store: Store,
    events: list[dict[str, Any]],
    rng: random.Random,
    offsets: dict[int, int] | None = None,
) -> None:
    """Apply ``events`` in batches of random size, at the partition offsets after those in
    ``offsets`` (updated)."""
    offsets = {} if offsets is None else offsets
    records = []
    for raw in events:
        event = build_event(raw)
        partition = sum(event.customer_id.encode()) % 3
        offsets[partition] = offsets.get(partition, -1) + 1
        records.append(accepted_record(event, "orders", partition, offsets[partition]))
    i = 0
    while i < len(records):
        size = rng.randint(50, 500)
        await store.apply_batch(records[i : i + size])
        i += size


@pytest.mark.parametrize(("period", "churn_days"), [("day", 7), ("week", 30), ("month", 90)])
async def test_rows_and_cohorts_equal_the_reference(
    redis: Redis, rng: random.Random, period: Period, churn_days: int
) -> None:
    prefix = f"per{rng.randrange(1 << 30)}:"
    store = Store(redis, prefix, KINDS)
    # shuffled, so that events arrive late and first activities move earlier
    events = with_duplicates(rng, random_events(rng, customers=60, count=2500), share=0.05)
    rng.shuffle(events)
    await load(store, events, rng)

    periods = Periods(redis, prefix)
    accepted = unique(events)
    window = timedelta(days=churn_days)
    want = period_rows(accepted, period=period, churn_after=window, activity_kinds=set(KINDS))
    got = await periods.rows(period, churn_days)
    assert [r.as_dict() for r in got] == [r.as_dict() for r in want]
    assert await periods.cohorts(period) == cohorts(
        accepted, period=period, activity_kinds=frozenset(KINDS)
    )


async def test_rows_follow_data_applied_after_their_periods_ended(
    redis: Redis, rng: random.Random
) -> None:
    """History loaded in two halves with periods closed in between, then events for
    months long ended: every row of every period, and every cohort, follows the data."""
    prefix = f"late{rng.randrange(1 << 30)}:"
    store = Store(redis, prefix, KINDS)
    events = random_events(rng, customers=50, count=1600)
    rng.shuffle(events)
    half, offsets = len(events) // 2, {}
    await load(store, events[:half], rng, offsets)
    periods = Periods(redis, prefix)
    first, last = await periods.span() or (None, None)
    assert first and last
    later = last + timedelta(days=62)
    for period in PERIODS:
        assert await periods.close(period, clock=later, limit=None)
        before = await periods.rows(period, 30)
        assert [r.as_dict() for r in before] == [
            r.as_dict()
            for r in period_rows(
                unique(events[:half]), period=period, churn_after=timedelta(days=30),
                activity_kinds=set(KINDS),
            )
        ]  # fmt: skip
    months_before = sum(r.orders for r in await periods.rows("month", 30))
    await load(store, events[half:], rng, offsets)
    for period in PERIODS:
        await periods.close(period, clock=later, limit=None)
        want = period_rows(
            unique(events), period=period, churn_after=timedelta(days=30),
            activity_kinds=set(KINDS),
        )  # fmt: skip
        got = await periods.rows(period, 30)
        assert [r.as_dict() for r in got] == [r.as_dict() for r in want]
        assert await periods.cohorts(period) == cohorts(
            unique(events), period=period, activity_kinds=frozenset(KINDS)
        )
    # the months of the first half grew: their rows were not kept as first counted
    assert sum(r.orders for r in await periods.rows("month", 30)) > months_before


async def bitmap_sizes(redis: Redis, homes: Sequence[str], day: int) -> list[tuple[int, int, int]]:
    """A day's activity and cohort bitmaps in each shard: memory, that of an exact copy
    (under a name as long), bits."""
    out = []
    for home in homes:
        for family in ("act", "coh"):
            key, copy = (f"{home}{name}:d:{day}" for name in (family, "cpy"))
            await redis.bitop("OR", copy, key)
            exact = await redis.memory_usage(copy)
            await redis.delete(copy)
            out.append((await redis.memory_usage(key), exact, await redis.bitcount(key)))
    return out


async def grown_bitmaps(store: Store, first: datetime, days: int) -> int:
    """Customers one after the other, each active on one of ``days`` days, applied in
    batches so that every day's bitmaps grow batch by batch (new customers have higher
    numbers) and Redis leaves them room to grow. Returns the number of customers."""
    customers = 3000 * days
    events = [
        {"event_id": f"e{n}", "customer_id": f"c{n:05d}", "type": "login",
         "ts": (first + timedelta(days=n % days, seconds=n)).isoformat(), "channel": "web"}
        for n in range(customers)
    ]  # fmt: skip
    records = records_for(events, partitions=2)
    for start in range(0, len(records), 100):
        await store.apply_batch(records[start : start + 100])
    return customers


@pytest.mark.parametrize("shards", [1, 3])
async def test_closing_a_period_gives_its_bitmaps_their_exact_size(
    redis: Redis, rng: random.Random, shards: int
) -> None:
    """Closing a day writes its bitmaps again at their length, bits unchanged."""
    prefix = f"cmp{rng.randrange(1 << 30)}:"
    store = Store(redis, prefix, KINDS, shards=shards, writer=True)
    day = datetime(2024, 3, 5, tzinfo=UTC)
    customers = await grown_bitmaps(store, day, days=1)
    periods = Periods(redis, prefix)
    homes = await periods.homes()

    before = await bitmap_sizes(redis, homes, epoch_day(day))
    assert sum(bits for *_, bits in before) == 2 * customers
    assert any(used > exact for used, exact, _ in before)  # room left to grow
    assert await periods.close("day", clock=day + timedelta(days=1)) == [day]
    assert (await periods.row("day", day, 7)).end_customers == customers
    after = await bitmap_sizes(redis, homes, epoch_day(day))
    assert [(exact, exact, bits) for _, exact, bits in before] == after


async def test_periods_closed_before_are_compacted_a_step_at_a_time(
    redis: Redis, rng: random.Random
) -> None:
    """Ended days are compacted oldest first, ``limit`` days per call, and each once."""
    prefix = f"cmpb{rng.randrange(1 << 30)}:"
    store = Store(redis, prefix, KINDS, writer=True)
    first = datetime(2024, 3, 5, tzinfo=UTC)
    await grown_bitmaps(store, first, days=4)
    periods = Periods(redis, prefix)
    homes = await periods.homes()
    days = [epoch_day(first) + n for n in range(4)]

    async def roomy() -> list[bool]:
        """Per day: whether a bitmap still has room to spare."""
        return [
            any(used > exact for used, exact, _ in await bitmap_sizes(redis, homes, day))
            for day in days
        ]

    assert await roomy() == [True] * 4
    clock = first + timedelta(days=4)
    assert len(await periods.close("day", clock=clock, limit=3)) == 3
    assert await roomy() == [False, False, False, True]
    assert len(await periods.close("day", clock=clock, limit=3)) == 1
    assert await roomy() == [False] * 4
    # compacted once: a late bit that makes room again stays
    await redis.setbit(f"{prefix}act:d:{days[0]}", 200_000, 1)
    assert await periods.close("day", clock=clock, limit=3) == []
    assert (await roomy())[0]


def login(customer_id: str, at: datetime, event_id: str) -> dict[str, Any]:
    return {"event_id": event_id, "customer_id": customer_id, "type": "login",
            "ts": at.isoformat(), "channel": "web"}  # fmt: skip


@pytest.mark.parametrize("shards", [1, 3])
async def test_cohort_bitmaps_start_at_their_first_customer(
    redis: Redis, rng: random.Random, shards: int
) -> None:
    """Customers are numbered as they first appear, so a day of newcomers takes a bitmap
    of their own bits only, not room for everyone numbered before them. A customer
    numbered below a cohort bitmap's start, joining it late, moves the start down. Cohorts
    and rows stay those of the reference."""
    prefix = f"cst{rng.randrange(1 << 30)}:"
    store = Store(redis, prefix, KINDS, shards=shards, writer=True)
    first = datetime(2024, 3, 4, tzinfo=UTC)  # a Monday
    per_day, days = 400, 5
    events = [
        login(f"c{n:05d}", first + timedelta(days=n // per_day, seconds=n), f"e{n}")
        for n in range(per_day * days)
    ]
    records = records_for(events, partitions=2)
    for start in range(0, len(records), 100):
        await store.apply_batch(records[start : start + 100])
    periods = Periods(redis, prefix)
    homes = await periods.homes()
    last = epoch_day(first) + days - 1

    async def lengths(family: str) -> int:
        return sum([await redis.strlen(f"{home}{family}:d:{last}") for home in homes])

    assert await lengths("coh") <= per_day // 8 + 2 * len(homes)
    assert await lengths("act") > days * per_day // 8 - 2 * len(homes)

    # late: the newest customer, then the first of its shard, active three days before
    # the rest, each in its own batch (the second finds the bitmap started)
    layout = await store.layout()
    newest = f"c{per_day * days - 1:05d}"
    home = layout.prefix_of(newest)
    oldest = next(c["customer_id"] for c in events if layout.prefix_of(c["customer_id"]) == home)
    earlier = first - timedelta(days=3)
    for offset, customer_id in enumerate((newest, oldest)):
        events.append(login(customer_id, earlier, f"late-{offset}"))
        await store.apply_batch([accepted_record(build_event(events[-1]), "logins", 0, offset)])
    start = await redis.hget(f"{home}coh:base", f"d:{epoch_day(earlier)}")
    assert start == "0"  # moved down to the byte of the shard's first customer

    accepted = unique(events)
    for period in PERIODS:
        assert await periods.cohorts(period) == cohorts(
            accepted, period=period, activity_kinds=frozenset(KINDS)
        )
        want = period_rows(
            accepted, period=period, churn_after=timedelta(days=7), activity_kinds=set(KINDS)
        )
        assert [r.as_dict() for r in await periods.rows(period, 7)] == [r.as_dict() for r in want]


async def test_watermark_waits_for_every_partition_of_a_busy_topic(redis: Redis) -> None:
    prefix = "wm:"
    store = Store(redis, prefix, KINDS, offsets_scope="k")
    periods = Periods(redis, prefix)

    def login(n: int, customer: str, ts: int) -> Event:
        return build_event(
            {"event_id": f"w{n}", "customer_id": customer, "ts": ts, "type": "login"}
        )

    await store.apply_batch([accepted_record(login(1, "a", 1000), "logins", 0, 0)])
    assert await periods.watermark("k", {"logins": 2, "orders": 2}) is None
    await store.apply_batch([accepted_record(login(2, "b", 500), "logins", 1, 0)])
    await store.apply_batch([accepted_record(login(3, "a", 2000), "logins", 0, 1)])
    assert await periods.watermark("k", {"logins": 2, "orders": 2}) == datetime.fromtimestamp(
        500, UTC
    )


async def test_active_customers_per_day_week_and_month(redis: Redis, rng: random.Random) -> None:
    prefix = f"dau{rng.randrange(1 << 30)}:"
    store = Store(redis, prefix, KINDS)
    events = random_events(rng, customers=50, count=1500)
    await load(store, events, rng)
    periods = Periods(redis, prefix)
    accepted = unique(events)
    for period in ("day", "week", "month"):
        at = rng.choice(accepted).ts
        start, end = period_start(at, period), next_period(period_start(at, period), period)
        want = {
            e.customer_id
            for e in accepted
            if start <= e.ts < end and is_activity(e, frozenset(KINDS))
        }
        assert await periods.active(period, at) == len(want)


async def assert_kept_windows_follow_late_events(
    store: Store, events: list[dict[str, Any]], rng: random.Random, churn_days: int = 30
) -> None:
    """Rows read with the kept window unions equal rows counted afresh, after every batch,
    while a third of the events arrive late (into windows already kept)."""
    timed = sorted(events, key=lambda raw: build_event(raw).ts_ms)
    late = [raw for raw in timed if rng.random() < 0.3]
    ordered = [raw for raw in timed if raw not in late]
    for raw in late:  # each late event lands somewhere after its time
        ordered.insert(rng.randrange(len(ordered) + 1), raw)
    records = records_for(ordered, partitions=3)
    periods = Periods(store.redis, store.prefix)
    stamps = [build_event(raw).ts for raw in rng.sample(events, 3)]
    fixed = {p: {period_start(ts, p) for ts in stamps} for p in PERIODS}
    compared, i = 0, 0
    while i < len(records):
        size = rng.randint(100, 400)
        await store.apply_batch(records[i : i + size])
        i += size
        last = await periods.last_event()
        assert last is not None
        for period in PERIODS:
            for start in fixed[period] | {period_start(last, period)}:
                kept = await periods.row(period, start, churn_days, cached=True)
                fresh = await periods.row(period, start, churn_days)
                assert kept.as_dict() == fresh.as_dict(), (period, start)
                compared += 1
    assert compared > 0
    # the day counts that tell which days moved are the days' active customers
    for home in await periods.homes():
        counts = await store.redis.hgetall(home + "act:n")
        assert counts
        for day, n in counts.items():
            assert int(n) == await store.redis.bitcount(f"{home}act:d:{day}")


@pytest.mark.parametrize("shards", [None, 4])
async def test_kept_window_unions_follow_late_events(
    redis: Redis, rng: random.Random, shards: int | None
) -> None:
    store = Store(redis, f"kept{rng.randrange(1 << 30)}:", KINDS, shards=shards, writer=True)
    await assert_kept_windows_follow_late_events(
        store, random_events(rng, customers=80, count=1500), rng
    )


async def test_the_exporters_cohort_revenue_follows_new_cohorts_and_its_interval(
    redis: Redis, rng: random.Random, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The exporter reads the cohorts' revenue at most every few minutes, but at once when
    a cohort appears that it has not read."""
    from retention import snapshot

    prefix = f"rev{rng.randrange(1 << 30)}:"
    store, periods = Store(redis, prefix, KINDS), Periods(redis, prefix)
    now = datetime(2024, 5, 20, tzinfo=UTC)

    def orders(month: int, customer: str, amount: float, n: int) -> list[dict[str, Any]]:
        at = datetime(2024, month, 3, tzinfo=UTC).isoformat()
        return [{"event_id": f"{customer}-{month}-{n}", "customer_id": customer, "ts": at,
                 "type": "order", "amount": amount}]  # fmt: skip

    offsets: dict[int, int] = {}
    await load(store, orders(3, "a", 10, 0), rng, offsets)
    first = await snapshot._recent_cohorts(periods, now, 12)
    assert first["2024-03-01"].revenue_micros == [10_000_000, 0, 0]
    # a new cohort is read at once; more money in a known one waits for the interval
    await load(store, orders(4, "b", 7, 0) + orders(3, "a", 5, 1), rng, offsets)
    second = await snapshot._recent_cohorts(periods, now, 12)
    assert second["2024-04-01"].revenue_micros == [7_000_000, 0]
    assert second["2024-03-01"].revenue_micros == [15_000_000, 0, 0]
    await load(store, orders(5, "a", 1, 2), rng, offsets)
    cached = await snapshot._recent_cohorts(periods, now, 12)
    assert cached["2024-03-01"].revenue_micros == [15_000_000, 0, 0]
    monkeypatch.setattr(snapshot, "COHORT_REVENUE_EVERY_SECONDS", 0.0)
    read = await snapshot._recent_cohorts(periods, now, 12)
    assert read["2024-03-01"].revenue_micros == [15_000_000, 0, 1_000_000]
    assert read == {k: c for k, c in (await periods.cohorts("month", now, last=12)).items()}
