"""Crashes and scale-out: state stays exact when workers die mid-stream."""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from typing import Any

from retention.config import Settings
from store.store import Store
from streams.producer import EventProducer
from tests.eventgen import fold, random_events, with_duplicates, worker_rates
from tests.integration.conftest import Workers, wait_until
from tests.integration.test_pipeline import send_all, wait_all_seen

EVENTS = 30_000


async def seen_total(store: Store) -> int:
    stats = await store.stats()
    return sum(stats.accepted.values()) + sum(stats.duplicates.values())


async def send_paced(producer: EventProducer, events: list[dict[str, Any]]) -> Counter[str]:
    """Send in chunks with pauses between them: a stream still arriving while the test acts,
    however fast the workers read."""
    sent: Counter[str] = Counter()
    for start in range(0, len(events), 1000):
        sent += await send_all(producer, events[start : start + 1000])
        await asyncio.sleep(0.05)
    await producer.flush()
    return sent


async def assert_exact(store: Store, settings: Settings, events: list[dict[str, object]]) -> None:
    expected = fold(events, frozenset(settings.activity_kinds), worker_rates(settings))  # type: ignore[arg-type]
    assert await store.customer_ids() == sorted(expected)
    for customer_id, state in expected.items():
        assert await store.read_customer(customer_id) == state, customer_id


async def test_sigkill_mid_stream_then_restart_loses_and_doubles_nothing(
    settings: Settings, store: Store, producer: EventProducer, workers: Workers
) -> None:
    rng = random.Random(7)
    events = with_duplicates(rng, random_events(rng, customers=300, count=EVENTS), share=0.05)
    sent = await send_all(producer, events)
    await producer.flush()

    first = workers.start()

    async def some_progress() -> bool:
        return await seen_total(store) >= len(events) // 10

    # polled often: a worker reads the whole backlog in a few seconds
    await wait_until(
        some_progress, 60, "the first worker to make progress", workers.logs, every=0.01
    )
    workers.kill(first)
    at_kill = await seen_total(store)
    assert at_kill < len(events), "the worker finished before it could be killed"

    workers.start()
    await wait_all_seen(store, sent, workers)
    await assert_exact(store, settings, events)


async def test_two_workers_share_partitions_and_survive_losing_one(
    settings: Settings, store: Store, producer: EventProducer, workers: Workers
) -> None:
    first, second = workers.start(), workers.start()

    async def both_assigned() -> bool:
        alive = await store.workers(max_age_seconds=5)
        return len(alive) == 2 and all(w["partitions"] for w in alive.values())

    await wait_until(both_assigned, 60, "two workers sharing partitions", workers.logs)
    alive = await store.workers(max_age_seconds=5)
    shared = [set(w["partitions"]) for w in alive.values()]
    assert not shared[0] & shared[1], "a partition is owned by both workers"
    assert len(shared[0] | shared[1]) == 3 * settings.partitions

    rng = random.Random(11)
    events = with_duplicates(rng, random_events(rng, customers=300, count=EVENTS), share=0.05)
    sending = asyncio.create_task(send_paced(producer, events))

    async def some_progress() -> bool:
        return await seen_total(store) >= len(events) // 10

    await wait_until(some_progress, 60, "progress before the kill", workers.logs, every=0.01)
    workers.kill(second)
    assert not sending.done(), "the stream ended before the kill"
    sent = await sending

    await wait_all_seen(store, sent, workers, timeout=120)
    await assert_exact(store, settings, events)
    assert first.poll() is None
