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
