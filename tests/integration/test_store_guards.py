"""The batch script's guards against a real Redis: gaps refused, sums kept exact, dedupe
scoped by customer, nothing written during a rebuild, stale offsets recognised."""

from __future__ import annotations

import asyncio

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from retention.config import Settings
from store.store import Store, accepted_record
from streams.events import MAX_AMOUNT, build_event
from streams.offsets import find_recreated, store_positions


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


async def test_sums_that_would_leave_the_exact_range_are_refused_whole(store: Store) -> None:
    records = [order(n, amount=MAX_AMOUNT) for n in range(12)]
    result = await store.apply_batch(records)
    # 2^53 micros hold 9 orders of the largest amount; the rest are refused, none half-applied
    assert result.applied == 9
    assert [o for _, _, o in result.overflows] == [9, 10, 11]
    state = await store.read_customer("c")
    assert state is not None
    assert (state.orders, state.placed_micros) == (9, 9 * MAX_AMOUNT * 1_000_000)
    stats = await store.stats()
    assert stats.rejected == {("orders", "sum_overflow"): 3}


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
