"""What a shard's evaluation queues hold, read key by key for tests, with their invariants
checked on the way (``store/sched_chunks.lua`` describes the layout)."""

from __future__ import annotations

from typing import Any

CHUNK = 128


async def changed_queue(redis: Any, home: str) -> list[str]:
    """The changed customers waiting, oldest first (entries no longer marked dropped)."""
    waiting = []
    for cid in await redis.lrange(home + "dueq", 0, -1):
        if await redis.hget(home + "c:" + cid, "q") is not None:
            waiting.append(cid)
    assert len(set(waiting)) == len(waiting), "a customer waits twice"
    return waiting


async def rechecks(redis: Any, home: str) -> dict[str, int]:
    """Customer -> scheduled recheck (ms), after checking the chunks: each at most CHUNK
    entries, none below its bound, in time order along the index, each customer once and
    where its hash's ``r`` says."""
    found: dict[str, int] = {}
    previous_last: float | None = None
    for chunk, bound in await redis.zrange(home + "sched:at", 0, -1, withscores=True):
        entries = await redis.zrange(home + "sched:" + chunk, 0, -1, withscores=True)
        assert entries, f"chunk {chunk} is empty but indexed"
        assert len(entries) <= CHUNK
        assert entries[0][1] >= bound, f"chunk {chunk} holds an entry before its bound"
        if previous_last is not None:
            assert entries[0][1] >= previous_last, "chunks out of time order"
        previous_last = entries[-1][1]
        for cid, score in entries:
            assert cid not in found, f"{cid} is scheduled twice"
            found[cid] = int(score)
    for cid, at in found.items():
        assert await redis.hget(home + "c:" + cid, "r") == str(at), cid
    return found


async def queue_bytes(redis: Any, home: str) -> tuple[int, int]:
    """MEMORY USAGE of the changed queue, and of the rechecks' chunks and index."""
    changed = await redis.memory_usage(home + "dueq") or 0
    keys = [home + "sched:at"]
    keys += [home + "sched:" + c for c in await redis.zrange(home + "sched:at", 0, -1)]
    scheduled = 0
    for key in keys:
        scheduled += await redis.memory_usage(key) or 0
    return changed, scheduled
