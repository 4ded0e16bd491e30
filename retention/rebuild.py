"""``retention rebuild``: wipe the store and let the workers replay the topics into it.

Everything the tracker keeps in Redis is derived from the events, so Redis can be lost
and rebuilt from Kafka, as far back as the topics still hold messages. Workers find the
store's offsets gone and read every partition again from its earliest offset; the
notifier's delivery records are kept, so subscribers are not notified twice.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

from retention.config import Settings
from store.connect import connect
from store.store import Store
from streams.kafka_security import PLAINTEXT, KafkaSecurity
from streams.topics import Topics, cluster_id, end_offsets

BAR_WIDTH = 30
NO_WORKER_GRACE_SECONDS = 10.0


@dataclass(frozen=True)
class Progress:
    applied: int
    total: int

    @property
    def done(self) -> bool:
        return self.total > 0 and self.applied >= self.total

    def bar(self) -> str:
        share = 1.0 if self.total == 0 else min(1.0, self.applied / self.total)
        filled = int(share * BAR_WIDTH)
        bar = "#" * filled + "." * (BAR_WIDTH - filled)
        return f"[{bar}] {share:6.1%}  {self.applied}/{self.total}"


async def progress(
    store: Store, bootstrap: str, topics: Topics, security: KafkaSecurity = PLAINTEXT
) -> Progress:
    """Messages the store has taken account of, against what the topics hold."""
    ends = await end_offsets(bootstrap, list(topics.sources), security)
    applied = await store.applied_offsets()
    total = sum(ends.values())
    done = sum(min(applied.get((tp.topic, tp.partition), -1) + 1, end) for tp, end in ends.items())
    return Progress(done, total)


async def rebuild(
    settings: Settings,
    *,
    wait: bool = True,
    write: Callable[[str], object] = print,
    poll_seconds: float = 1.0,
    timeout: float | None = None,
    shards: int | None = None,
) -> int:
    """Wipe the key prefix, then (with ``wait``) show the replay until it has caught up.

    ``shards`` records a new shard count for the store the workers replay into."""
    assert settings.kafka_bootstrap and settings.redis_url
    topics = Topics.from_settings(settings)
    redis = connect(settings.redis_url, decode_responses=True)
    try:
        store = Store(
            redis,
            settings.key_prefix,
            offsets_scope=await cluster_id(settings.kafka_bootstrap, settings.kafka_security()),
        )
        deleted = await store.wipe(shards=shards)
        write(f"deleted {deleted} keys under {settings.key_prefix!r}")
        if shards is not None:
            write(f"the store now has {shards} shard(s)")
        if not wait:
            return 0
        started = time.monotonic()
        while True:
            now = await progress(store, settings.kafka_bootstrap, topics, settings.kafka_security())
            elapsed = time.monotonic() - started
            sys.stdout.write(f"\rreplaying {now.bar()}  {elapsed:5.0f} s")
            sys.stdout.flush()
            if now.done or now.total == 0:
                write("")
                return 0
            # heartbeats were wiped too: give live workers a few beats to show up
            if elapsed > NO_WORKER_GRACE_SECONDS and not await store.workers(max_age_seconds=10):
                write(
                    "\nno worker is running: start one (`retention worker` or `retention up`)"
                    " and it replays the topics into the store"
                )
                return 1
            if timeout is not None and elapsed > timeout:
                write("\ngave up waiting; the workers go on replaying")
                return 1
            await asyncio.sleep(poll_seconds)
    finally:
        await redis.aclose()
