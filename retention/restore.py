"""``retention restore-customer ID``: rebuild one customer set aside from the topics.

A customer whose stored state cannot be read (a piece of its hash lost, or changed by
hand) is set aside by the batch script: its events are dead-lettered as ``corrupt_state``
and recorded in ``corrupt:<customer>``, and nothing of them is counted, while every other
customer goes on. The totals over customers (period sums and bitmaps, cohorts, the fit
grid) still hold what its events before that brought, and they are right: only the
customer's own state is lost. So the restore

1. reads the customer's events from the source topics, up to the offsets the store holds;
2. folds those applied before it was set aside with the batch script itself, into a
   scratch prefix of its own, and puts the packed state and tickets it gets in place of
   the damaged ones (``store/restore_customer.lua``), keeping the customer's number and
   last evaluation; from then on its new events are applied as anyone's;
3. applies the events held back, through the batch script as the worker would (under an
   offsets scope of its own, since the store's offsets are past them), so they count
   everywhere once; then forgets them, and they leave the ``corrupt_state`` count.

A restore that stops halfway can be run again: step 2 is skipped once done, and step 3's
events already applied are recognised as duplicates. The topics must still hold the
customer's whole history (the tracker creates them with ``retention.ms=-1``).
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from importlib.resources import files
from typing import cast

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition

from contract.events import Rejection, parse_event
from processors.currency import Rates
from retention.config import Settings
from store.connect import connect
from store.store import Store, accepted_record
from streams.topics import Topics, cluster_id

_SWAP = files("store").joinpath("restore_customer.lua").read_text()
TP = tuple[str, int]
#: How long reading a partition may wait for its next message before taking it as read.
IDLE_SECONDS = 2.0


class RestoreError(RuntimeError):
    """The customer cannot be restored as asked."""


@dataclass(frozen=True, slots=True)
class Restored:
    customer_id: str
    #: events folded into the restored state (applied before the customer was set aside)
    folded: int
    #: events held back while it was set aside, now applied
    applied: int


async def restore_customer(
    settings: Settings, customer_id: str, write: Callable[[str], object] = print
) -> Restored:
    assert settings.kafka_bootstrap and settings.redis_url
    security = settings.kafka_security()
    scope = await cluster_id(settings.kafka_bootstrap, security)
    redis = connect(settings.redis_url, decode_responses=True)
    raw = connect(settings.redis_url, decode_responses=False)
    try:
        store = Store(redis, settings.key_prefix, settings.activity_kinds, offsets_scope=scope)
        home = (await store.layout()).prefix_of(customer_id)
        held = {_where(item) for item in await redis.smembers(home + "corrupt:" + customer_id)}
        set_aside = customer_id in await store.corrupt_customers()
        if not set_aside and not held:
            raise RestoreError(f"customer {customer_id!r} is not set aside: nothing to restore")
        rates = Rates(settings.reporting_currency, settings.default_currency, settings.rates_file)
        upto = await store.applied_offsets()
        sources = Topics.from_settings(settings).sources
        events = await _customer_messages(settings, customer_id, sources, upto)
        write(f"read {len(events)} events of {customer_id!r} from the topics")
        folded = 0
        if set_aside:
            before = [m for where, m in sorted(events.items()) if where not in held]
            binary = Store(raw, settings.key_prefix, settings.activity_kinds)
            folded = await _put_back(settings, binary, home, customer_id, before, rates)
            write(f"state rebuilt from {folded} events")
        # the events held back, those set aside since the topics were read included
        held = {_where(item) for item in await redis.smembers(home + "corrupt:" + customer_id)}
        missing = held - set(events)
        if missing:
            events.update(await _messages_at(settings, missing))
        records = [_record(events[where], rates) for where in sorted(held) if where in events]
        kept = [r for r in records if r is not None]
        applied = 0
        if kept:
            token = secrets.token_hex(4)
            replay = Store(
                redis,
                settings.key_prefix,
                settings.activity_kinds,
                offsets_scope=f"restore-{token}",
            )
            applied = (await replay.apply_batch(kept)).applied
            # every shard took note of the batch's offsets under the restore's own scope
            for shard in (await store.layout()).prefixes:
                for family in ("offsets", "stamps", "newest"):
                    await redis.delete(f"{shard}{family}:restore-{token}")
        await _forget_held(store, home, customer_id, held)
        write(f"applied {applied} events held back while it was set aside")
        return Restored(customer_id, folded, applied)
    finally:
        await redis.aclose()
        await raw.aclose()


def _where(item: str | bytes) -> tuple[str, int, int]:
    text = item.decode() if isinstance(item, bytes) else item
    topic, partition, offset = text.rsplit("|", 2)
    return topic, int(partition), int(offset)


def _record(message: ConsumerRecord[bytes, bytes], rates: Rates) -> list[str] | None:
    """The batch script's record of a message, as the worker builds it; None for one the
    contract refuses (it was dead-lettered for that when first read)."""
    parsed = parse_event(message.value or b"", key=message.key)
    if isinstance(parsed, Rejection):
        return None
    return accepted_record(
        parsed, message.topic, message.partition, message.offset, message.timestamp, rates
    )


async def _customer_messages(
    settings: Settings,
    customer_id: str,
    topics: Iterable[str],
    upto: dict[TP, int],
) -> dict[tuple[str, int, int], ConsumerRecord[bytes, bytes]]:
    """The customer's messages in every partition of ``topics``, up to the offsets the
    store holds. Messages are keyed by customer id; unkeyed ones are parsed to tell."""
    consumer = await _consumer(settings)
    found: dict[tuple[str, int, int], ConsumerRecord[bytes, bytes]] = {}
    try:
        await consumer.topics()
        tps = [
            TopicPartition(topic, p)
            for topic in topics
            for p in sorted(consumer.partitions_for_topic(topic) or ())
            if upto.get((topic, p), -1) >= 0
        ]
        if not tps:
            return found
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        wanted = customer_id.encode()
        reading = set(tps)
        while reading:
            batch = await consumer.getmany(*reading, timeout_ms=int(IDLE_SECONDS * 1000))
            if not batch:
                break  # nothing more within the idle time: every partition read
            for tp, messages in batch.items():
                last = upto[(tp.topic, tp.partition)]
                for m in messages:
                    if m.offset > last:
                        break
                    if m.key == wanted or (m.key is None and _is_of(m, customer_id)):
                        found[(m.topic, m.partition, m.offset)] = m
                if messages and messages[-1].offset >= last:
                    reading.discard(tp)
        return found
    finally:
        await consumer.stop()


async def _consumer(settings: Settings) -> AIOKafkaConsumer:
    """A started consumer of the tracker's broker that commits nothing."""
    assert settings.kafka_bootstrap
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap,
        enable_auto_commit=False,
        **settings.kafka_security().client_kwargs(),
    )
    await consumer.start()
    return consumer


def _is_of(message: ConsumerRecord[bytes, bytes], customer_id: str) -> bool:
    parsed = parse_event(message.value or b"")
    return not isinstance(parsed, Rejection) and parsed.customer_id == customer_id


async def _messages_at(
    settings: Settings, where: Iterable[tuple[str, int, int]]
) -> dict[tuple[str, int, int], ConsumerRecord[bytes, bytes]]:
    """The messages at the given offsets."""
    consumer = await _consumer(settings)
    out: dict[tuple[str, int, int], ConsumerRecord[bytes, bytes]] = {}
    try:
        for topic, partition, offset in sorted(where):
            tp = TopicPartition(topic, partition)
            consumer.assign([tp])
            consumer.seek(tp, offset)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                batch = await consumer.getmany(tp, timeout_ms=1000, max_records=1)
                got = [m for m in batch.get(tp, []) if m.offset == offset]
                if got:
                    out[(topic, partition, offset)] = got[0]
                    break
        return out
    finally:
        await consumer.stop()


async def _put_back(
    settings: Settings,
    binary: Store,
    home: str,
    customer_id: str,
    messages: list[ConsumerRecord[bytes, bytes]],
    rates: Rates,
) -> int:
    """Fold the messages with the batch script into a scratch prefix, and put the state it
    gets in place of the damaged one (``binary`` reads replies as bytes: a packed state is
    not text). Returns the events folded."""
    client = binary.redis
    records = [r for r in (_record(m, rates) for m in messages) if r is not None]
    scratch = f"{settings.key_prefix}restore-{secrets.token_hex(4)}:"
    fold = Store(client, scratch, settings.activity_kinds, shards=1, writer=True)
    try:
        for i in range(0, len(records), 1000):
            await fold.apply_batch(records[i : i + 1000])
        # the scratch store's one shard (on a cluster, under a hash tag of its own)
        shard = (await fold.layout()).prefix_of(customer_id)
        fields = cast(dict[bytes, bytes], await client.hgetall(shard + "c:" + customer_id))
        pieces = [
            part
            for name, value in sorted(fields.items())
            if name.startswith(b"s") and name[1:].isdigit()
            for part in (name, value)
        ]
        tickets = cast(dict[bytes, bytes], await client.hgetall(shard + "tk:" + customer_id))
        args: list[bytes | str | int] = [home, customer_id, int(time.time() * 1000)]
        args += [len(pieces) // 2, *pieces]
        args += [part for pair in tickets.items() for part in pair]
        swap = client.register_script(_SWAP)
        await swap(keys=[home + "c:" + customer_id], args=args)
    finally:
        doomed = [k async for k in client.scan_iter(match=_glob(scratch) + "*", count=1000)]
        for i in range(0, len(doomed), 500):
            await client.unlink(*doomed[i : i + 500])
    return len(records)


def _glob(prefix: str) -> str:
    return "".join("\\" + c if c in "*?[]\\" else c for c in prefix)


async def _forget_held(
    store: Store, home: str, customer_id: str, held: set[tuple[str, int, int]]
) -> None:
    """The held events are applied: they leave the set and the corrupt_state count."""
    client = store.redis
    by_topic: dict[str, int] = {}
    for topic, _, _ in held:
        by_topic[topic] = by_topic.get(topic, 0) + 1
    for topic, n in by_topic.items():
        name = f"rejected|{topic}|corrupt_state"
        if int(await client.hincrby(home + "stats", name, -n)) <= 0:
            await client.hdel(home + "stats", name)
    await client.delete(home + "corrupt:" + customer_id)
