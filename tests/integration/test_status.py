"""`status` against the real broker and Redis: stalled workers, with and without the field."""

from __future__ import annotations

import time

from retention import status
from retention.config import Settings
from store.store import Store
from streams.producer import EventProducer
from streams.topics import Topics


async def test_a_worker_with_lag_and_nothing_applied_lately_is_stalled(
    settings: Settings, store: Store, producer: EventProducer
) -> None:
    orders = Topics.from_settings(settings).source("order")
    for n in range(20):  # keys spread them over the partitions
        await producer.send_and_wait(
            {
                "event_id": f"o{n}",
                "customer_id": f"C{n}",
                "ts": "2024-05-01T09:00:00Z",
                "type": "order",
                "amount": 1,
            }
        )
    everything = [f"{orders}|{p}" for p in range(settings.partitions)]
    now = time.time()
    await store.heartbeat("stuck", {"partitions": everything, "last_applied_at": now - 120})
    await store.heartbeat("fresh", {"partitions": everything, "last_applied_at": now - 5})
    # a worker that never applied anything, started long ago
    await store.heartbeat(
        "never", {"partitions": everything, "last_applied_at": None, "started_at": now - 300}
    )
    # a heartbeat without the field: nothing can be told, never stalled
    await store.heartbeat("older", {"partitions": everything, "applied": 0})
    # no partitions with lag: idle, not stalled
    await store.heartbeat("idle", {"partitions": [], "last_applied_at": now - 3600})

    strict = settings.model_copy(update={"worker_stalled_after_seconds": 60.0})
    st = await status.gather(strict)
    assert st.lag is not None and st.lag[orders] == 20, st.errors
    assert st.stalled == ["never", "stuck"]
    assert {w: i["stalled"] for w, i in st.workers.items()} == {
        "stuck": True,
        "fresh": False,
        "never": True,
        "older": False,
        "idle": False,
    }
    assert not st.ok and st.as_dict()["stalled"] == ["never", "stuck"]
    assert "stuck: " in status.render(st) and "STALLED" in status.render(st)

    lenient = settings.model_copy(update={"worker_stalled_after_seconds": 600.0})
    relaxed = await status.gather(lenient)
    assert relaxed.stalled == [] and relaxed.ok


async def test_status_gives_redis_memory_per_node_and_per_customer(
    settings: Settings, store: Store
) -> None:
    await store.heartbeat("w", {"partitions": [], "last_applied_at": time.time()})
    st = await status.gather(settings)
    ((node, (used, limit)),) = st.redis_memory.items()
    assert used > 0 and limit >= 0, st.errors
    assert f"memory   {node}" in status.render(st)
    assert st.as_dict()["redis_memory"] == {node: (used, limit)}
    shown = status.StackStatus(
        "k:9092", "redis://r:6379/0", customers=1000,
        redis_memory={"r1:6379": (300_000, 1 << 30), "r2:6379": (212_000, 0)},
    )  # fmt: skip
    lines = status.render(shown).splitlines()
    assert "memory   r1:6379                      293.0 KB used, of 1.0 GB maxmemory (0%)" in lines
    assert "memory   r2:6379                      207.0 KB used, no maxmemory" in lines
    assert "         512 B per customer (all nodes)" in lines
