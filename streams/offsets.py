"""Where a worker starts reading: the offsets the store applied, not Kafka's.

The batch script records each partition's last applied offset together with the state it
produced, so those offsets are the truth. Kafka's committed offsets are only a hint: after
a Redis restore, failover or flush the store is behind them, and reading from Kafka's
would skip the events the store lost. So on every assignment the worker seeks each source
partition to the offset after the one the store holds (or to the earliest offset the
broker still has when the store holds none), and while running it seeks back whenever the
store falls behind what this worker applied.

A partition whose topic was deleted and created again starts at offset 0 again; its stored
offset then belongs to the old topic. The store keeps the Kafka timestamp of the message
at each stored offset, and a worker that finds a different message there, or reads the
log's last messages and finds it ends before the stored offset, forgets the stale offset
instead of skipping the new messages. Nothing else forgets an offset: not a silence (a
slow broker), nor an end offset alone (some brokers report it short), since a full replay
of a live topic would count twice whatever is older than the dedupe horizon.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from redis.exceptions import RedisError

from store.store import Store
from streams.kafka_security import PLAINTEXT, KafkaSecurity

logger = logging.getLogger(__name__)

TP = tuple[str, int]
#: How long an assignment waits for Redis before giving up (Faust then restarts the
#: rebalance): long enough for a restart, short of Kafka's rebalance deadlines.
STORE_WAIT_SECONDS = 60.0
#: How long reading back the messages at the stored offsets may take, and then reading
#: the last messages of the partitions where nothing came back.
READ_BACK_SECONDS = 3.0
LAST_READ_SECONDS = 3.0


async def find_recreated(
    bootstrap: str,
    expected: Mapping[TP, tuple[int, int]],
    security: KafkaSecurity = PLAINTEXT,
) -> set[TP]:
    """Partitions where the message at the stored offset is not the one the store saw.

    ``expected`` maps a partition to (stored offset, Kafka timestamp of that message).
    """
    if not expected:
        return set()
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        enable_auto_commit=False,
        auto_offset_reset="none",
        **security.client_kwargs(),
    )
    await consumer.start()
    try:
        tps = [TopicPartition(t, p) for t, p in expected]
        consumer.assign(tps)
        begins = await consumer.beginning_offsets(tps)
        pending: dict[TopicPartition, tuple[int, int]] = {}
        for tp in tps:
            offset, stamp = expected[(tp.topic, tp.partition)]
            if offset >= begins[tp]:  # below it the message aged out: nothing to compare
                consumer.seek(tp, offset)
                pending[tp] = (offset, stamp)
        recreated: set[TP] = set()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + READ_BACK_SECONDS
        while pending and loop.time() < deadline:
            found = await consumer.getmany(*pending, timeout_ms=500, max_records=len(pending))
            for tp, records in found.items():
                if tp not in pending or not records:
                    continue
                offset, stamp = pending.pop(tp)
                if records[0].offset != offset or records[0].timestamp != stamp:
                    recreated.add((tp.topic, tp.partition))
        if pending:
            recreated |= await _ending_before(consumer, pending)
        return recreated
    finally:
        await consumer.stop()


async def _ending_before(
    consumer: AIOKafkaConsumer, pending: dict[TopicPartition, tuple[int, int]]
) -> set[TP]:
    """Of partitions where nothing came back at the stored offset, those whose log is seen
    to end before it: read from just before the reported end offset (which may be short)
    onwards, the last message found lies below the stored offset. A partition where the
    stored message turns up after all is compared as above; one where nothing at all
    can be read keeps its offset (with a warning): a silence proves nothing."""
    tps = list(pending)
    begins = await consumer.beginning_offsets(tps)
    ends = await consumer.end_offsets(tps)
    last: dict[TopicPartition, int] = {}
    recreated: set[TP] = set()
    reading = []
    for tp in tps:
        if ends[tp] > begins[tp]:
            consumer.seek(tp, max(begins[tp], ends[tp] - 1))
            reading.append(tp)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + LAST_READ_SECONDS
    while reading and loop.time() < deadline:
        found = await consumer.getmany(*reading, timeout_ms=500)
        if all(tp in last and not found.get(tp) for tp in reading):
            break  # every log read to its end
        for tp, records in found.items():
            if tp not in reading or not records:
                continue
            offset, stamp = pending[tp]
            last[tp] = max(last.get(tp, -1), records[-1].offset)
            at = [r for r in records if r.offset == offset]
            if at or last[tp] > offset:
                reading.remove(tp)
                if at and at[0].timestamp != stamp:
                    recreated.add((tp.topic, tp.partition))
    for tp in reading:
        if tp in last:  # its log ends before the stored offset
            recreated.add((tp.topic, tp.partition))
    unread = [f"{tp.topic}|{tp.partition}" for tp in tps if tp not in last]
    if unread:
        logger.warning(
            "could not read back the messages at the stored offsets; keeping them",
            extra={"partitions": unread},
        )
    return recreated


async def store_positions(
    store: Store,
    bootstrap: str,
    partitions: Iterable[TP],
    earliest: Mapping[TP, int],
    security: KafkaSecurity = PLAINTEXT,
) -> dict[TP, int]:
    """The offset each partition should be read from, after the store's own."""
    wanted = list(partitions)
    stored = await store.applied_offsets()
    stamps = await store.applied_stamps()
    check = {tp: (stored[tp], stamps[tp]) for tp in wanted if tp in stored and tp in stamps}
    stale = await find_recreated(bootstrap, check, security)
    if stale:
        logger.warning(
            "stored offsets belong to an earlier topic of the same name; reading these "
            "partitions from their earliest offset",
            extra={"partitions": sorted(f"{t}|{p}" for t, p in stale)},
        )
        await store.forget_offsets(stale)
        stored = {tp: o for tp, o in stored.items() if tp not in stale}
    return {tp: max(stored.get(tp, -1) + 1, earliest.get(tp, 0)) for tp in wanted}


async def wait_for_store(what: Callable[[], Awaitable[Any]]) -> Any:
    """Retry ``what`` while Redis is unreachable, for up to STORE_WAIT_SECONDS."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + STORE_WAIT_SECONDS
    delay = 0.2
    while True:
        try:
            return await what()
        except RedisError as exc:
            if loop.time() > deadline:
                raise
            logger.warning(
                "store unreachable while positioning partitions, retrying",
                extra={"error": repr(exc)},
            )
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)
