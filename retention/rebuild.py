"""``retention rebuild``: wipe the store and let the workers replay the topics into it.

What the tracker derives from the events can be lost and rebuilt from Kafka, as far back
as the topics still hold messages. Workers find the store's offsets gone and read every
partition again from its earliest offset. What is not derived from the events is kept
(``store.store.KEEP_ON_REBUILD``): the notifier's delivery records and dead letters, so
subscribers are not notified twice; the HTTP write keys, so clients go on sending.

Until the wipe has finished nothing writes to the store, and a wipe that stops halfway
leaves it so until ``rebuild`` runs again; evaluations (and so alerts) wait until the
replay has reached the offsets the topics had when the wipe began.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

from retention.config import Settings
from store.connect import connect
from store.shards import stored_calendar
from store.store import Store
from streams.kafka_security import PLAINTEXT, KafkaSecurity
from streams.topics import Topics, cluster_id, end_offsets

BAR_WIDTH = 30
NO_WORKER_GRACE_SECONDS = 10.0
#: A worker whose heartbeat is this recent counts as running.
WORKER_ALIVE_SECONDS = 10.0


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

    ``shards`` records a new shard count for the store the workers replay into; it is
    refused while workers run, since they would go on writing in the old layout."""
    assert settings.kafka_bootstrap and settings.redis_url
    topics = Topics.from_settings(settings)
    redis = connect(settings.redis_url, decode_responses=True)
    try:
        security = settings.kafka_security()
        store = Store(
            redis,
            settings.key_prefix,
            offsets_scope=await cluster_id(settings.kafka_bootstrap, security),
            # a store in another format is rebuilt in this version's: the upgrade path
            check_format=False,
        )
        if shards is not None and await store.workers(max_age_seconds=WORKER_ALIVE_SECONDS):
            write(
                "workers are running: stop them first (`retention up` or every `retention"
                " worker`), then rebuild with --shards and start them again"
            )
            return 2
        ends = await end_offsets(settings.kafka_bootstrap, list(topics.sources), security)
        replay_to = {(tp.topic, tp.partition): end for tp, end in ends.items() if end > 0}
        # the replay counts in this command's calendar (RETENTION_TIMEZONE, ...) when no
        # worker runs; running workers go on in the store's, which it then keeps
        before = await stored_calendar(redis, settings.key_prefix)
        running = await store.workers(max_age_seconds=WORKER_ALIVE_SECONDS)
        calendar = before if running else settings.calendar()
        deleted = await store.wipe(shards=shards, replay_to=replay_to, calendar=calendar)
        write(f"deleted {deleted} keys under {settings.key_prefix!r}")
        if calendar != before:
            write(f"periods are now counted in {calendar.describe()}")
        if shards is not None:
            write(f"the store now has {shards} shard(s)")
        if not wait:
            return 0
        started = moved = time.monotonic()
        applied = -1
        while True:
            now = await progress(store, settings.kafka_bootstrap, topics, settings.kafka_security())
            elapsed = time.monotonic() - started
            sys.stdout.write(f"\rreplaying {now.bar()}  {elapsed:5.0f} s")
            sys.stdout.flush()
            if now.done or now.total == 0:
                write("")
                return 0
            if now.applied > applied:
                applied, moved = now.applied, time.monotonic()
            # the replay moving shows workers at work, whatever their heartbeats say (a
            # loaded worker's can be late); a worker that stopped just now may still show
            if time.monotonic() - moved > NO_WORKER_GRACE_SECONDS and not await store.workers(
                max_age_seconds=WORKER_ALIVE_SECONDS
            ):
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
