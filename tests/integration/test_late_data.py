"""Late data, as a worker meets it: history loaded in several files with periods closed in
between, then events for months that ended long ago. Every reader follows the data."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from typing import Any

from redis.asyncio import Redis

from contract.events import Event, build_event
from processors.metrics import cohorts, period_rows
from processors.windows import PERIOD_LETTERS, PERIODS, period_start
from retention.config import Settings
from retention.queries import live_cohorts, live_periods
from retention.snapshot import read_snapshot
from store.store import Store
from streams.producer import EventProducer
from streams.topics import Topics, cluster_id, ensure_topics
from tests.eventgen import random_events
from tests.integration.conftest import Workers, wait_until


async def send(producer: EventProducer, events: list[dict[str, Any]], sent: dict[str, int]) -> None:
    for raw in events:
        event = build_event(raw)
        await producer.send(event)
        topic = producer.topics.source(event.type)
        sent[topic] = sent.get(topic, 0) + 1
    await producer.flush()


async def applied(store: Store, sent: dict[str, int], workers: Workers) -> None:
    async def done() -> bool:
        stats = await store.stats()
        return all(stats.seen(topic) >= n for topic, n in sent.items())

    await wait_until(done, 60, "the events to be applied", workers.logs)


def reference(
    events: list[Event], settings: Settings, now: datetime
) -> dict[str, list[dict[str, Any]]]:
    return {
        period: [
            r.as_dict()
            for r in period_rows(
                events,
                period=period,
                churn_after=timedelta(days=settings.churn_after_days),
                activity_kinds=set(settings.activity_kinds),
                until=now,
            )
        ]
        for period in PERIODS
    }


async def test_history_in_several_files_and_late_months_show_in_every_reader(
    settings: Settings,
    store: Store,
    redis: Redis,
    producer: EventProducer,
    workers: Workers,
    rng: random.Random,
) -> None:
    settings = settings.model_copy(update={"close_every_seconds": 0.5, "lateness_seconds": 0})
    workers.settings = settings
    events = random_events(rng, customers=80, count=2400)
    rng.shuffle(events)  # as an export is
    first, second, late = events[:1000], events[1000:2100], events[2100:]
    sent: dict[str, int] = {}
    workers.start()
    await send(producer, first, sent)
    await applied(store, sent, workers)

    packed = settings.key_prefix + "packed"

    async def closed() -> bool:
        marks = await redis.hgetall(packed)
        return all(PERIOD_LETTERS[p] in marks for p in PERIODS)

    # the leader has closed every period of the first file: they all ended long ago
    await wait_until(closed, 30, "the leader to close the first file's periods", workers.logs)
    now = datetime.now(UTC)
    want = reference([build_event(e) for e in first], settings, now)
    got, _ = await live_periods(settings, "month", settings.churn_after_days)
    assert [{k: v for k, v in r.items() if k != "open"} for r in got] == want["month"]

    await send(producer, second, sent)
    await applied(store, sent, workers)
    # events of months that ended long ago, sent a while after the rest
    await send(producer, late, sent)
    await applied(store, sent, workers)

    now = datetime.now(UTC)
    accepted = [build_event(e) for e in events]
    want = reference(accepted, settings, now)
    snapshot = await read_snapshot(settings, redis, None, now)
    for period in PERIODS:
        got, _ = await live_periods(settings, period, settings.churn_after_days)
        assert [{k: v for k, v in r.items() if k != "open"} for r in got] == want[period], period
        assert [r["period"] for r in got if r.get("open")] == [
            period_start(now, period).date().isoformat()
        ]
        # the exporter's rows of the two periods before the current one
        rows = {r["period"]: r for r in want[period]}
        for window in ("previous_closed", "last_closed"):
            row = snapshot.rows[(period, window)]
            assert row.as_dict() == rows[row.period], (period, window)
        want_cohorts = cohorts(
            accepted, period=period, activity_kinds=frozenset(settings.activity_kinds), until=now
        )
        got_cohorts = await live_cohorts(settings, period)
        assert got_cohorts == {k: c.as_dict() for k, c in want_cohorts.items()}, period


async def test_every_shard_is_evaluated_when_the_topics_have_fewer_partitions(
    settings: Settings, redis: Redis, workers: Workers, rng: random.Random
) -> None:
    """Topics made with 2 partitions while the workers are configured with 4: ownership
    of the store's shards follows the topics' real partitions, so none is left out."""
    made = settings.model_copy(update={"partitions": 2})
    assert made.kafka_bootstrap
    topics = Topics.from_settings(made)
    await ensure_topics(made.kafka_bootstrap, topics, 2)
    configured = settings.model_copy(update={"partitions": 4, "shards": 4})
    workers.settings = configured
    store = Store(redis, settings.key_prefix, offsets_scope=await cluster_id(made.kafka_bootstrap))
    events = [e for e in random_events(rng, customers=60, count=600) if e["type"] == "login"]
    sent: dict[str, int] = {}
    async with EventProducer(made.kafka_bootstrap, topics) as producer:
        workers.start()
        await send(producer, events, sent)
        await applied(store, sent, workers)
    customers = len({e["customer_id"] for e in events})

    async def all_evaluated() -> bool:
        counts = await store.counters("life:counts")
        return sum(counts.values()) == customers

    await wait_until(all_evaluated, 60, f"all {customers} customers evaluated", workers.logs)
    assert (await store.layout()).count == 4
