"""The batch script's guards against a real Redis: gaps refused, sums kept exact, dedupe
scoped by customer, nothing written during a rebuild, stale offsets recognised."""

from __future__ import annotations

import asyncio
import random
import subprocess
import sys
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from contract.events import MAX_AMOUNT, OrderEvent, build_event
from processors.currency import Rates
from processors.windows import epoch_day, period_start
from retention.config import Settings
from store.periods import Periods
from store.shards import FORMAT_KEY, STORE_FORMAT, FormatMismatch
from store.store import Store, accepted_record, rejected_record
from streams import offsets
from streams.offsets import find_recreated, store_positions
from streams.producer import EventProducer
from tests.integration.conftest import settings_env


def order(
    n: int, customer: str = "c", amount: float = 10.0, event_id: str | None = None
) -> list[str]:
    event = build_event(
        {
            "event_id": event_id or f"e{n}",
            "customer_id": customer,
            "ts": 1_700_000_000 + n,
            "type": "order",
            "amount": amount,
        }
    )
    return accepted_record(event, "orders", 0, n, stamp_ms=1_700_000_000_000 + n)


@pytest.mark.parametrize("shards", [1, 4])
async def test_a_batch_with_a_hole_applies_up_to_the_hole(
    redis: Redis, settings: Settings, shards: int
) -> None:
    """Messages still buffered from before a seek can follow the re-read ones in a batch:
    only the consecutive part is taken, and the rest waits for the worker to seek."""
    store = Store(redis, settings.key_prefix, shards=shards, writer=True)
    floors = {("orders", 0): 0}
    customers = ["a", "b", "c", "d", "e", "f", "g"]
    batch = [order(n, customers[n]) for n in (0, 1, 2, 5, 6)]
    result = await store.apply_batch(batch, floors=floors)
    assert (result.applied, result.gaps) == (3, {("orders", 0): 3})
    assert await store.applied_offsets() == {("orders", 0): 2}
    again = await store.apply_batch([order(n, customers[n]) for n in range(2, 7)], floors=floors)
    assert (again.applied, again.redelivered, again.gaps) == (4, 1, {})
    assert await store.customer_count() == 7


async def test_a_batch_that_skips_past_the_stored_offset_is_refused(store: Store) -> None:
    floors = {("orders", 0): 0}
    first = await store.apply_batch([order(0), order(1)], floors=floors)
    assert (first.applied, first.gaps) == (2, {})
    skipped = await store.apply_batch([order(5), order(6)], floors=floors)
    assert (skipped.applied, skipped.gaps) == (0, {("orders", 0): 2})
    assert await store.applied_offsets() == {("orders", 0): 1}
    resumed = await store.apply_batch([order(n) for n in range(2, 7)], floors=floors)
    assert (resumed.applied, resumed.gaps) == (5, {})


async def test_an_empty_store_wants_the_lowest_offset_the_broker_holds(store: Store) -> None:
    result = await store.apply_batch([order(7)], floors={("orders", 0): 3})
    assert result.gaps == {("orders", 0): 3}
    result = await store.apply_batch([order(n) for n in range(3, 8)], floors={("orders", 0): 3})
    assert (result.applied, result.gaps) == (5, {})


def big_amount(rng: random.Random) -> float | int:
    """Amounts of every size up to the largest, many past what a double counts in micros."""
    kind = rng.random()
    if kind < 0.2:
        return MAX_AMOUNT
    if kind < 0.5:
        return rng.randint(0, MAX_AMOUNT)
    return round(rng.uniform(0, 10 ** rng.randint(0, 13)), rng.randint(0, 2))


@pytest.mark.parametrize("reporting", ["IDR", "JPY", "KRW", "USD"])
async def test_money_sums_are_exact_python_integers_at_any_size(
    redis: Redis, rng: random.Random, reporting: str
) -> None:
    """Random amounts up to 10^13 in random currencies, converted into the reporting
    currency: every customer's, period's and currency's sum equals Python's integer sum,
    far past 2^53 micros, and nothing is refused."""
    rates = Rates(reporting, "USD")
    prefix = f"big{rng.randrange(1 << 30)}:"
    store = Store(redis, prefix, shards=2, writer=True)
    events = []
    for n in range(600):
        events.append(
            build_event(
                {
                    "event_id": f"e{n}",
                    "customer_id": f"c{rng.randrange(4)}",
                    "ts": 1_700_000_000 + rng.randrange(90 * 86400),
                    "type": "order",
                    "amount": big_amount(rng),
                    "currency": rng.choice(["IDR", "JPY", "USD", "EUR", "KRW"]),
                    "status": rng.choice(["placed", "placed", "placed", "refunded"]),
                }
            )
        )
    records = [accepted_record(e, "orders", 0, n, rates=rates) for n, e in enumerate(events)]
    for start in range(0, len(records), 97):
        result = await store.apply_batch(records[start : start + 97])
        assert result.rejected == 0

    placed: dict[str, int] = {}
    refunded: dict[str, int] = {}
    by_currency: dict[tuple[str, str, str], int] = {}
    months: dict[str, list[int]] = {}
    for event, record in zip(events, records, strict=True):
        assert isinstance(event, OrderEvent)
        micros = int(record[11])
        sums = placed if event.status == "placed" else refunded
        sums[event.customer_id] = sums.get(event.customer_id, 0) + micros
        key = (event.customer_id, event.status, event.currency or "")
        by_currency[key] = by_currency.get(key, 0) + event.amount_micros
        month = months.setdefault(period_start(event.ts, "month").date().isoformat(), [0, 0])
        month[0 if event.status == "placed" else 1] += micros
    assert max(placed.values()) > 2**53 * 100  # far past what one double counts
    for customer_id, state in zip(
        sorted(placed), await store.read_customers(sorted(placed)), strict=True
    ):
        assert state.placed_micros == placed[customer_id]
        assert state.refunded_micros == refunded.get(customer_id, 0)
        for currency, micros in state.placed_by_currency.items():
            assert micros == by_currency[(customer_id, "placed", currency)]
        for currency, micros in state.refunded_by_currency.items():
            assert micros == by_currency[(customer_id, "refunded", currency)]
    rows = await Periods(redis, prefix).rows("month", 90)
    assert {r.period: r.revenue_micros for r in rows} == {m: p - r for m, (p, r) in months.items()}
    # the cohorts' revenue, each cell a Python integer sum too
    first: dict[str, str] = {}
    for event in events:
        if isinstance(event, OrderEvent) and event.status == "placed":
            month = period_start(event.ts, "month").date().isoformat()
            first[event.customer_id] = min(first.get(event.customer_id, month), month)
    cells: dict[tuple[str, str], int] = {}
    for event, record in zip(events, records, strict=True):
        month = period_start(event.ts, "month").date().isoformat()
        home = first.get(event.customer_id)
        if home is not None and month >= home:
            sign = 1 if isinstance(event, OrderEvent) and event.status == "placed" else -1
            cells[(home, month)] = cells.get((home, month), 0) + sign * int(record[11])
    got = {}
    for home, cohort in (await Periods(redis, prefix).cohorts("month")).items():
        assert cohort.revenue_micros is not None
        later = sorted(m for m in months if m >= home)
        got.update({(home, m): v for m, v in zip(later, cohort.revenue_micros, strict=True)})
    assert {k: v for k, v in got.items() if v} == {k: v for k, v in cells.items() if v}
    assert max(abs(v) for v in cells.values()) > 2**53


async def test_a_period_sum_near_2_53_micros_carries_into_its_high_part(
    redis: Redis, rng: random.Random
) -> None:
    """A sales hash whose low part an earlier version took close to 2^53 micros: the next
    orders carry it into the high part, and the sum stays exact."""
    prefix = f"carry{rng.randrange(1 << 30)}:"
    store = Store(redis, prefix)
    event = build_event(
        {"event_id": "x", "customer_id": "c", "ts": 1_700_000_000, "type": "order", "amount": 1}
    )
    month = period_start(event.ts, "month")
    key = f"{prefix}sales:m:{epoch_day(month)}"
    near = 2**53 - 5_000
    await redis.hset(key, "pm", near)
    records = [order(n, amount=MAX_AMOUNT) for n in range(3)]
    await store.apply_batch(records)
    (row,) = await Periods(redis, prefix).rows("month", 90)
    assert row.revenue_micros == near + 3 * MAX_AMOUNT * 1_000_000
    assert int(await redis.hget(key, "pm")) < 10**12


async def test_the_same_event_id_from_two_customers_counts_twice(store: Store) -> None:
    result = await store.apply_batch(
        [
            order(0, "alice", event_id="1"),
            order(1, "bob", event_id="1"),
            order(2, "bob", event_id="1"),
        ]
    )
    assert (result.applied, result.duplicates) == (2, 1)


async def test_nothing_is_written_while_a_rebuild_wipes_the_store(
    store: Store, redis: Redis
) -> None:
    await redis.set(store.key("rebuilding"), "1")
    with pytest.raises(ResponseError, match="REBUILDING"):
        await store.apply_batch([order(0)])
    await redis.delete(store.key("rebuilding"))
    assert await store.read_customer("c") is None
    assert (await store.apply_batch([order(0)])).applied == 1


async def test_a_topic_created_again_is_not_mistaken_for_the_old_one(
    settings: Settings, store: Store
) -> None:
    assert settings.kafka_bootstrap
    topic = f"{settings.topic_prefix}recreated"
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap)
    await admin.start()
    await producer.start()
    try:
        await admin.create_topics([NewTopic(topic, 1, 1)])
        sent = [await producer.send_and_wait(topic, b"old", partition=0) for _ in range(5)]
        tp = (topic, 0)
        same = {tp: (sent[3].offset, sent[3].timestamp)}
        assert await find_recreated(settings.kafka_bootstrap, same) == set()

        await admin.delete_topics([topic])
        await asyncio.sleep(0.5)
        await admin.create_topics([NewTopic(topic, 1, 1)])
        for _ in range(2):
            await producer.send_and_wait(topic, b"new", partition=0)
        assert await find_recreated(settings.kafka_bootstrap, same) == {tp}

        # the store held offset 3 of the old topic: the new one is read from its start
        await store.redis.hset(store.key("offsets", store.offsets_scope), f"{topic}|0", 3)
        await store.redis.hset(
            store.key("stamps", store.offsets_scope), f"{topic}|0", sent[3].timestamp
        )
        positions = await store_positions(store, settings.kafka_bootstrap, [tp], {tp: 0})
        assert positions == {tp: 0}
        assert tp not in await store.applied_offsets()
    finally:
        await producer.stop()
        await admin.close()


async def test_a_short_end_offset_and_a_slow_broker_never_forget_an_offset(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Nothing comes back at the stored offset in time (a slow broker) and the end offset
    is reported short (Tansu does): the log's last messages are read, the stored message
    is found there, and the offset is kept. A full replay would count twice whatever is
    older than the dedupe horizon."""
    assert settings.kafka_bootstrap
    topic = f"{settings.topic_prefix}short"
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, 1, 1)])
    finally:
        await admin.close()
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap)
    await producer.start()
    try:
        sent = [await producer.send_and_wait(topic, b"m", partition=0) for _ in range(8)]
    finally:
        await producer.stop()
    tp = (topic, 0)
    stored = {tp: (sent[6].offset, sent[6].timestamp)}
    monkeypatch.setattr(offsets, "READ_BACK_SECONDS", 0.0)  # nothing comes back in time
    true_ends = AIOKafkaConsumer.end_offsets

    async def short_ends(self: AIOKafkaConsumer, partitions: list[TopicPartition]) -> Any:
        return {p: n - 4 for p, n in (await true_ends(self, partitions)).items()}

    monkeypatch.setattr(AIOKafkaConsumer, "end_offsets", short_ends)
    assert await find_recreated(settings.kafka_bootstrap, stored) == set()
    # a message of another topic of that name at the stored offset is still told apart
    other = {tp: (sent[6].offset, sent[6].timestamp + 1)}
    assert await find_recreated(settings.kafka_bootstrap, other) == {tp}


async def test_heartbeats_of_workers_long_gone_are_dropped(store: Store, redis: Redis) -> None:
    await store.heartbeat("alive", {"partitions": []})
    await redis.hset(store.key("workers"), "crashed", '{"at_ms": 1000}')
    await redis.hset(store.key("workers"), "garbled", "not json")
    assert set(await store.workers(max_age_seconds=60)) == {"alive"}
    assert set(await redis.hkeys(store.key("workers"))) == {"alive"}


def support(n: int, ticket: str, action: str, ts: int) -> tuple[dict[str, object], list[str]]:
    raw = {
        "event_id": f"s{n}",
        "customer_id": "t",
        "ts": ts,
        "type": "support",
        "ticket_id": ticket,
        "action": action,
    }
    return raw, accepted_record(build_event(raw), "support", 0, n)


@pytest.mark.parametrize(
    ("resolved_first", "untracked"),
    [
        (True, 0),  # the old resolved tickets make room for the new ones
        (False, 5),  # all still open: the new ones are counted, not tracked
    ],
)
async def test_a_customer_tracks_at_most_max_tickets(
    store: Store, resolved_first: bool, untracked: int
) -> None:
    from processors.state import MAX_TICKETS
    from tests.eventgen import fold

    day = 86_400
    events = []
    for n in range(MAX_TICKETS):
        events.append(support(2 * n, f"old-{n}", "opened", 1_700_000_000 + n))
        if resolved_first:
            events.append(support(2 * n + 1, f"old-{n}", "resolved", 1_700_000_000 + n + 60))
    for n in range(5):
        events.append(support(10_000 + n, f"new-{n}", "opened", 1_700_000_000 + 200 * day + n))
    records = [record for _, record in events]
    for i, record in enumerate(records):
        record[3] = str(i)  # offsets in arrival order
    await store.apply_batch(records)
    state = await store.read_customer("t")
    expected = fold([raw for raw, _ in events], frozenset({"order", "login"}))["t"]
    assert state == expected
    assert state is not None
    assert len(state.tickets) <= MAX_TICKETS
    assert state.tickets_untracked == untracked


async def test_a_rebuild_with_a_new_shard_count_is_refused_while_workers_run(
    redis: Redis, settings: Settings
) -> None:
    from retention.rebuild import rebuild

    store = Store(redis, settings.key_prefix)
    await store.apply_batch([order(0)])
    await store.heartbeat("worker-1", {"partitions": []})
    lines: list[str] = []
    assert await rebuild(settings, wait=False, write=lines.append, shards=3) == 2
    assert "stop them first" in lines[0]
    assert await store.read_customer("c") is not None  # nothing wiped
    await store.forget_worker("worker-1")
    assert await rebuild(settings, wait=False, write=lines.append, shards=3) == 0
    assert (await store.layout()).count == 3


async def test_an_offset_twice_in_one_batch_counts_once(store: Store) -> None:
    """Around a seek back, a batch can hold an offset twice (buffered, then read again):
    the second is the same message, redelivered, whether accepted or rejected."""
    bad = rejected_record("orders", 0, 2, "invalid_json")
    batch = [order(0), order(1), bad, order(1), bad, order(0)]
    result = await store.apply_batch(batch)
    assert (result.applied, result.rejected, result.redelivered) == (2, 1, 3)
    stats = await store.stats()
    assert stats.rejected == {("orders", "invalid_json"): 1}
    assert stats.duplicates == {}


async def test_a_store_of_another_format_is_refused_until_rebuilt(
    redis: Redis, settings: Settings
) -> None:
    """A store written by another version (another format) is refused by workers, readers
    and the command line, with the command that upgrades it; a rebuild does."""
    from retention.rebuild import rebuild

    store = Store(redis, settings.key_prefix, writer=True)
    await store.apply_batch([order(0)])
    assert await redis.get(settings.key_prefix + FORMAT_KEY) == str(STORE_FORMAT)
    await redis.set(settings.key_prefix + FORMAT_KEY, "99")

    for fresh in (
        Store(redis, settings.key_prefix, writer=True),
        Store(redis, settings.key_prefix),
    ):
        with pytest.raises(FormatMismatch, match="retention rebuild"):
            await fresh.read_customer("c")
    env = settings_env(settings)
    for command in (["worker"], ["customer", "c"], ["metrics"]):
        proc = subprocess.run(
            [sys.executable, "-m", "retention.cli", *command],
            capture_output=True, text=True, timeout=60, env=env,
        )  # fmt: skip
        assert proc.returncode == 2, (command, proc.stdout, proc.stderr)
        assert "format 99" in proc.stderr and "retention rebuild" in proc.stderr, proc.stderr

    assert await rebuild(settings, wait=False, write=lambda _: None) == 0
    assert await redis.get(settings.key_prefix + FORMAT_KEY) == str(STORE_FORMAT)
    assert await Store(redis, settings.key_prefix, writer=True).read_customer("c") is None


async def test_a_store_of_an_earlier_version_is_refused_as_format_1(
    redis: Redis, settings: Settings
) -> None:
    """A store that holds data but records no format was written before formats were
    recorded: it is refused with the upgrade, as any other format is."""
    await Store(redis, settings.key_prefix, writer=True).apply_batch([order(0)])
    await redis.delete(settings.key_prefix + FORMAT_KEY)
    for fresh in (
        Store(redis, settings.key_prefix, writer=True),
        Store(redis, settings.key_prefix),
    ):
        with pytest.raises(FormatMismatch, match=r"format 1.*retention rebuild"):
            await fresh.read_customer("c")
    assert await redis.get(settings.key_prefix + FORMAT_KEY) is None  # nothing written
    # a new store is stamped by its first writer, before anything else
    other = settings.key_prefix + "new:"
    assert await Store(redis, other).read_customer("c") is None
    assert await redis.get(other + FORMAT_KEY) is None  # readers write nothing
    await Store(redis, other, writer=True).apply_batch([order(0)])
    assert await redis.get(other + FORMAT_KEY) == str(STORE_FORMAT)


async def test_a_worker_that_finds_the_store_behind_it_holds_evaluations_back(
    redis: Redis, settings: Settings
) -> None:
    """After a Redis rollback or restore the worker reads the lost events again; until the
    store is back where that worker had brought it, evaluations wait (Store.replaying)."""
    from streams.ingest_batch import Ingest
    from streams.topics import Topics

    store = Store(redis, settings.key_prefix)
    ingest = Ingest(settings, Topics(), store, dlq=None)
    tp = ("orders", 0)
    await store.apply_batch([order(n) for n in range(10)])
    ingest.applied_upto[tp] = 40  # the worker had applied up to 40 before the rollback
    await ingest.check_store([tp])
    assert await store.replaying() == {tp: 41}
    await store.apply_batch([order(n) for n in range(10, 30)])
    assert await store.replaying() == {tp: 41}
    await store.apply_batch([order(n) for n in range(30, 41)])
    assert await store.replaying() == {}
    assert await redis.exists(store.key("replay")) == 0


async def test_a_rebuild_with_no_worker_says_so_once_the_replay_stands_still(
    settings: Settings, producer: EventProducer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Nothing replays the topics and no heartbeat is fresh: the rebuild says how to start
    a worker instead of waiting for ever."""
    from retention import rebuild as rebuild_module

    monkeypatch.setattr(rebuild_module, "NO_WORKER_GRACE_SECONDS", 1.0)
    for n in range(5):
        await producer.send(
            {"event_id": f"r{n}", "customer_id": "c", "ts": 1_700_000_000, "type": "login"}
        )
    await producer.flush()
    lines: list[str] = []
    code = await rebuild_module.rebuild(settings, write=lines.append, poll_seconds=0.2)
    assert code == 1
    assert "no worker is running" in lines[-1]


async def test_a_worker_that_reads_the_store_while_another_sets_it_up_is_not_refused(
    redis: Redis, rng: random.Random
) -> None:
    """Two workers start on a new store: one finds no format, then finds the shard count
    the other has just written. The other recorded its format first, so the first reads
    it again instead of taking the store for an old one."""
    from store.shards import SHARDS_KEY, check_format

    prefix = f"race{rng.randrange(1 << 30)}:"

    class OtherWriterInBetween:
        def __init__(self) -> None:
            self.raced = False

        async def get(self, key: str) -> Any:
            value = await redis.get(key)
            if not self.raced:
                self.raced = True  # the other worker sets the store up right after this read
                await redis.set(prefix + FORMAT_KEY, str(STORE_FORMAT))
                await redis.set(prefix + SHARDS_KEY, "1")
            return value

        async def exists(self, *keys: str) -> int:
            return int(await redis.exists(*keys))

        async def set(self, key: str, value: str, nx: bool = False) -> Any:
            return await redis.set(key, value, nx=nx)

    await check_format(OtherWriterInBetween(), prefix, writer=True)  # type: ignore[arg-type]
    # a store that holds data and never recorded a format is still an old one
    old = f"old{rng.randrange(1 << 30)}:"
    await redis.set(old + SHARDS_KEY, "1")
    with pytest.raises(FormatMismatch, match="in format 1"):
        await check_format(redis, old, writer=True)
