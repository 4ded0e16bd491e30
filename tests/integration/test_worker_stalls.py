"""The exporter tells stalled workers apart, from real heartbeats and a real broker's lag.

Heartbeats are written as workers write them (``Store.heartbeat``): one of a current
worker that carries ``last_applied_at``, one of an older worker that does not. Messages
wait on the broker and no worker applies them, so every partition has lag.
"""

from __future__ import annotations

import asyncio
import time

from prometheus_client import CollectorRegistry

from retention.config import Settings
from retention.exporter import RetentionCollector
from store.store import Store
from streams.producer import EventProducer

AFTER = 1.5


def scrape(collector: RetentionCollector) -> CollectorRegistry:
    registry = CollectorRegistry()
    registry.register(collector)
    return registry


async def test_stalled_workers_with_and_without_last_applied_at(
    settings: Settings, store: Store, producer: EventProducer
) -> None:
    orders = producer.topics.source("order")
    logins = producer.topics.source("login")
    for n in range(8):
        await producer.send(
            {"type": "order", "customer_id": "c", "event_id": f"o{n}", "ts": 1.7e9, "amount": 1}
        )
    await producer.flush()
    every_order_partition = [f"{orders}|{p}" for p in range(settings.partitions)]
    now = time.time()
    beats = {
        # current workers: one that applied 10 minutes ago, one that just did
        "stuck": {"partitions": every_order_partition, "applied": 5, "last_applied_at": now - 600},
        "busy": {"partitions": every_order_partition, "applied": 9, "last_applied_at": now},
        # idle for long, but its partitions carry nothing
        "idle": {"partitions": [f"{logins}|0"], "applied": 0, "last_applied_at": now - 600},
        # an older worker: no last_applied_at, only its count
        "old": {"partitions": every_order_partition, "applied": 3},
    }

    async def heartbeat() -> None:
        beats["busy"]["last_applied_at"] = time.time()  # it keeps applying
        for worker, info in beats.items():
            await store.heartbeat(worker, info)

    chosen = Settings(**{**settings.model_dump(), "worker_stalled_after_seconds": AFTER})
    collector = RetentionCollector(chosen, cache_seconds=0)
    try:
        await heartbeat()
        registry = await asyncio.to_thread(scrape, collector)
        get = registry.get_sample_value
        assert get("retention_workers_alive") == 4
        assert get("retention_workers_stalled") == 1  # "stuck"; "old" is seen for the first time
        last = "retention_worker_last_applied_timestamp_seconds"
        assert get(last, {"worker": "stuck"}) == now - 600
        assert get(last, {"worker": "old"}) is None
        await asyncio.sleep(AFTER + 0.5)
        await heartbeat()
        registry = await asyncio.to_thread(scrape, collector)
        # the older worker's count has not moved while it had lag: stalled as well
        assert registry.get_sample_value("retention_workers_stalled") == 2
    finally:
        collector.close()
