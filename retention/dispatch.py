"""The notifier service: consume ``customer-alerts`` and deliver each alert to subscribers.

Each subscriber has a lane: its own queue and task, which delivers its alerts one after
another (so one customer's alerts stay in order). A subscriber that is down, or that
accepts connections and never answers, holds up only its own lane; the reader goes on
feeding the others. A lane whose breaker is open and whose queue holds ``queue_limit``
alerts sends new ones straight to the dead letters (``backlog``); a lane that is only slow
makes the reader wait for room instead.

A message's offset is committed once every lane has finished with it (delivered, skipped,
or dead-lettered), in offset order per partition. A restart repeats what was in flight,
and the delivered-key sets in Redis turn each repeat into a duplicate instead of a second
message. A message that is not an alert goes to the dead letters (``undecodable``) and is
committed: it never blocks its partition. Any other exception, per alert and per
subscriber, is logged, counted (``internal_error``) and dead-lettered, and the lane goes
on; only a Redis that cannot be reached makes a lane wait and try the same alert again.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiokafka import (
    AIOKafkaConsumer,
    AIOKafkaProducer,
    ConsumerRebalanceListener,
    ConsumerRecord,
    TopicPartition,
)
from aiokafka.errors import (
    CommitFailedError,
    IllegalStateError,
    KafkaError,
)
from redis import exceptions as redis_errors

from processors.alerts import Alert
from processors.notify_config import Outcome, Subscriber
from processors.notify_messages import BadAlert, decode_alert
from retention.config import Settings
from retention.delivery import Notifier
from retention.notify_file import load_config
from store.connect import connect
from store.deliveries import Deliveries
from streams.kafka_security import PLAINTEXT, KafkaSecurity
from streams.topics import Topics, create_missing

logger = logging.getLogger(__name__)

#: Pause before trying an alert again when Redis (not a subscriber) failed.
RETRY_PAUSE_SECONDS = 1.0
RETRY_PAUSE_MAX_SECONDS = 30.0
#: How often finished offsets are committed.
COMMIT_INTERVAL_SECONDS = 0.5
#: On shutdown, how long a lane may finish the alert in hand before it is cancelled (the
#: alert is then not committed, and comes again after the restart).
SHUTDOWN_GRACE_SECONDS = 5.0
#: Of a message that is not an alert, the dead letter keeps this many bytes; its topic,
#: partition and offset locate the whole message on the broker.
DEAD_VALUE_BYTES = 64 * 1024

#: Redis errors that pass: the alert is tried again after a pause, not dead-lettered.
TRANSIENT_REDIS_ERRORS = (
    redis_errors.ConnectionError,
    redis_errors.TimeoutError,
    redis_errors.ReadOnlyError,  # a failover under way
    redis_errors.TryAgainError,
)


def alerts_topic(settings: Settings) -> str:
    """``<prefix>customer-alerts``."""
    return Topics.from_settings(settings).alerts


def notifier_group(settings: Settings) -> str:
    return f"{settings.topic_prefix}retention-notifier"


async def ensure_alerts_topic(
    bootstrap: str, topic: str, partitions: int, security: KafkaSecurity = PLAINTEXT
) -> None:
    """Create the alerts topic when missing (a notifier may start before any worker)."""
    await create_missing(bootstrap, {topic: {}}, partitions, security)


async def publish_alerts(
    bootstrap: str, topic: str, alerts: Iterable[Alert], security: KafkaSecurity = PLAINTEXT
) -> int:
    """Send alerts keyed by customer id, so one customer's alerts stay in order; returns
    how many the broker stored."""
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, acks="all", linger_ms=5, **security.client_kwargs()
    )
    await producer.start()
    try:
        futures = [
            await producer.send(topic, value=a.encode(), key=a.customer_id.encode()) for a in alerts
        ]
        await asyncio.gather(*futures)
        return len(futures)
    finally:
        await producer.stop()


@dataclass(eq=False, slots=True)
class _InFlight:
    """A message read from the topic; ``waiting`` lanes have not finished with it yet."""

    tp: TopicPartition
    offset: int
    waiting: int
    cancelled: bool = False


class OffsetTracker:
    """Messages in flight per partition, in offset order: the position to commit is after
    the longest run of finished messages, so nothing unfinished is ever committed."""

    def __init__(self) -> None:
        self._partitions: dict[TopicPartition, deque[_InFlight]] = {}

    def add(self, tp: TopicPartition, offset: int, waiting: int) -> _InFlight:
        entry = _InFlight(tp, offset, waiting)
        self._partitions.setdefault(tp, deque()).append(entry)
        return entry

    @staticmethod
    def finish(entry: _InFlight) -> None:
        entry.waiting -= 1

    def committable(self) -> dict[TopicPartition, int]:
        """Positions to commit, and forget the finished messages they cover."""
        out: dict[TopicPartition, int] = {}
        for tp, entries in self._partitions.items():
            while entries and entries[0].waiting <= 0:
                out[tp] = entries.popleft().offset + 1
        return out

    def revoke(self, partitions: Iterable[TopicPartition]) -> None:
        """Another member owns these now: their queued alerts are dropped (it reads them
        again from the last commit)."""
        for tp in partitions:
            for entry in self._partitions.pop(tp, ()):
                entry.cancelled = True

    def in_flight(self) -> int:
        return sum(len(entries) for entries in self._partitions.values())


@dataclass(frozen=True, slots=True)
class _Item:
    alert: Alert
    entry: _InFlight


class Lane:
    """One subscriber's queue and the task that works through it."""

    def __init__(
        self,
        subscriber: Subscriber,
        notifier: Notifier,
        offsets: OffsetTracker,
        stop: asyncio.Event,
    ) -> None:
        self.subscriber = subscriber
        self.notifier = notifier
        self.offsets = offsets
        self.stop = stop
        self.queue: asyncio.Queue[_Item] = asyncio.Queue()
        self.busy = False
        self.task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.task = asyncio.create_task(self.run(), name=f"notify-lane-{self.subscriber.name}")

    async def offer(self, item: _Item) -> None:
        """Queue ``item``. A full queue makes the caller wait, unless the subscriber keeps
        failing: then the alert goes to the dead letters at once."""
        limit = self.notifier.config.queue_limit
        while self.queue.qsize() >= limit and not self.stop.is_set():
            if self.notifier.breaker_open(self.subscriber):
                try:
                    await self.notifier.push_dead_letter(
                        "backlog",
                        {
                            "subscriber": self.subscriber.name,
                            "alert": item.alert.as_dict(),
                            "error": f"{limit} alerts waiting for a subscriber that keeps failing",
                            "attempts": 0,
                        },
                        counters=(f"failed|{self.subscriber.type}",),
                    )
                except Exception:
                    # never drop it: queue it beyond the limit instead
                    logger.exception(
                        "cannot dead-letter a backlogged alert; queued",
                        extra={"subscriber": self.subscriber.name, "alert": item.alert.key},
                    )
                    break
                self.offsets.finish(item.entry)
                return
            await asyncio.sleep(0.05)
        if not self.stop.is_set():
            self.queue.put_nowait(item)

    async def run(self) -> None:
        while not self.stop.is_set():
            item = await self.queue.get()
            if item.entry.cancelled:
                continue
            self.busy = True
            try:
                if await self.handle(item.alert) is not None:
                    self.offsets.finish(item.entry)
            finally:
                self.busy = False

    async def handle(self, alert: Alert) -> Outcome | None:
        """Deliver, or dead-letter on any error but an unreachable Redis, which is waited
        out with a pause that doubles up to :data:`RETRY_PAUSE_MAX_SECONDS` (an alert sent
        already is not sent again: only its record is retried). None when stopped before
        the alert was done."""
        pause = RETRY_PAUSE_SECONDS
        while True:
            try:
                try:
                    outcome = await self.notifier.deliver_to(self.subscriber, alert)
                except TRANSIENT_REDIS_ERRORS:
                    raise
                except Exception as exc:
                    await self.notifier.internal_error(self.subscriber, alert, exc)
                    outcome = "failed"
            except Exception as exc:
                logger.warning(
                    "cannot reach Redis; will try the alert again",
                    extra={
                        "subscriber": self.subscriber.name,
                        "error": repr(exc),
                        "pause_s": pause,
                    },
                )
                if await _stopped_within(self.stop, pause):
                    return None
                pause = min(2 * pause, RETRY_PAUSE_MAX_SECONDS)
                continue
            logger.info(
                "alert handled",
                extra={"subscriber": self.subscriber.name, "alert": alert.key, "outcome": outcome},
            )
            return outcome


async def _stopped_within(stop: asyncio.Event, seconds: float) -> bool:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)
    return stop.is_set()


def _raw_value(value: bytes | None) -> dict[str, Any]:
    """A message's bytes for a dead letter: text when it is UTF-8, base64 otherwise."""
    data = value or b""
    out: dict[str, Any] = {"value_truncated": len(data) > DEAD_VALUE_BYTES}
    data = data[:DEAD_VALUE_BYTES]
    try:
        out["value"] = data.decode("utf-8")
    except UnicodeDecodeError:
        out["value_base64"] = base64.b64encode(data).decode("ascii")
    return out


class Dispatcher(ConsumerRebalanceListener):  # type: ignore[misc]
    """Reads messages, hands alerts to the lanes that want them, commits what is done."""

    def __init__(self, consumer: AIOKafkaConsumer, notifier: Notifier, stop: asyncio.Event) -> None:
        self.consumer = consumer
        self.notifier = notifier
        self.stop = stop
        self.offsets = OffsetTracker()
        self.lanes = [Lane(s, notifier, self.offsets, stop) for s in notifier.config.subscribers]

    async def dispatch(self, record: ConsumerRecord[bytes, bytes]) -> None:
        tp = TopicPartition(record.topic, record.partition)
        try:
            alert = decode_alert(record.value)
        except BadAlert as exc:
            try:
                await self.bad_alert(record, exc)
            except TRANSIENT_REDIS_ERRORS:
                raise
            except Exception:
                # Redis refuses the write (out of memory, a key of the wrong type): the
                # log keeps the message, and the partition goes on
                logger.exception(
                    "bad alert could not be dead-lettered",
                    extra={
                        "topic": record.topic,
                        "offset": record.offset,
                        **_raw_value(record.value),
                    },
                )
            self.offsets.add(tp, record.offset, 0)
            return
        lanes = [lane for lane in self.lanes if lane.subscriber.wants(alert)]
        entry = self.offsets.add(tp, record.offset, len(lanes))
        for lane in lanes:
            await lane.offer(_Item(alert, entry))

    async def bad_alert(self, record: ConsumerRecord[bytes, bytes], exc: BadAlert) -> None:
        logger.error(
            "bad alert dead-lettered",
            extra={"topic": record.topic, "offset": record.offset, "error": str(exc)},
        )
        await self.notifier.push_dead_letter(
            "undecodable",
            {
                "subscriber": None,
                "alert": None,
                "error": str(exc),
                "attempts": 0,
                "topic": record.topic,
                "partition": record.partition,
                "offset": record.offset,
                "key": (record.key or b"").decode("utf-8", "replace")[:256],
                **_raw_value(record.value),
            },
            counters=("bad",),
        )

    async def run_batch(
        self, batch: dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]]
    ) -> None:
        for tp, records in batch.items():
            for record in records:
                if self.stop.is_set():
                    return
                try:
                    await self.dispatch(record)
                except TRANSIENT_REDIS_ERRORS as exc:
                    logger.warning(
                        "cannot reach Redis; will read the alert again",
                        extra={"topic": tp.topic, "offset": record.offset, "error": repr(exc)},
                    )
                    self.consumer.seek(tp, record.offset)
                    await _stopped_within(self.stop, RETRY_PAUSE_SECONDS)
                    break

    async def commit(self) -> None:
        positions = self.offsets.committable()
        if not positions:
            return
        try:
            await self.consumer.commit(positions)
        except (CommitFailedError, IllegalStateError, KafkaError) as exc:
            # the partition moved to another member, which starts from the last commit;
            # what this one delivered is in Redis and will be skipped there
            logger.warning("commit failed", extra={"error": repr(exc)})

    async def commit_forever(self) -> None:
        while not await _stopped_within(self.stop, COMMIT_INTERVAL_SECONDS):
            await self.commit()

    def check_lanes(self) -> None:
        """A lane task that ended while running is a bug: stop the process, so that a
        supervisor restarts it, rather than leave that subscriber without alerts."""
        for lane in self.lanes:
            if lane.task is not None and lane.task.done() and not self.stop.is_set():
                raise RuntimeError(f"the lane of {lane.subscriber.name} ended") from (
                    None if lane.task.cancelled() else lane.task.exception()
                )

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        await self.commit()
        self.offsets.revoke(revoked)

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        return None

    async def shutdown(self) -> None:
        """Let lanes finish the alert in hand (briefly), then commit what is done."""
        self.stop.set()
        tasks = [lane.task for lane in self.lanes if lane.task is not None]
        for lane in self.lanes:
            if lane.task is not None and not lane.busy:
                lane.task.cancel()
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=SHUTDOWN_GRACE_SECONDS)
            for task in pending:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        await self.commit()


#: How often the notifier looks whether a subscriber's digest has come due.
DIGEST_CHECK_SECONDS = 15.0


async def send_digests_forever(
    notifier: Notifier, stop: asyncio.Event, every: float = DIGEST_CHECK_SECONDS
) -> None:
    """Send the digests that come due until ``stop`` is set; a failure is logged and the
    next check tries again (the digest keeps its alerts until it is sent)."""
    while not stop.is_set():
        try:
            await notifier.send_digests()
        except Exception:
            logger.exception("digest check failed; trying again at the next one")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=every)


async def run_notifier(
    settings: Settings,
    config_path: Path,
    stop: asyncio.Event | None = None,
    digest_check_seconds: float = DIGEST_CHECK_SECONDS,
) -> None:
    """Deliver alerts until ``stop`` is set (forever without one); config errors raise
    :class:`retention.delivery.NotifyConfigError` before anything connects."""
    config = load_config(config_path)
    if not settings.kafka_bootstrap or not settings.redis_url:
        raise ValueError("the notifier needs KAFKA_BOOTSTRAP and REDIS_URL")
    stop = stop or asyncio.Event()
    topic = alerts_topic(settings)
    security = settings.kafka_security()
    await ensure_alerts_topic(settings.kafka_bootstrap, topic, settings.partitions, security)
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap,
        group_id=notifier_group(settings),
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        session_timeout_ms=int(settings.session_timeout_seconds * 1000),
        heartbeat_interval_ms=int(settings.heartbeat_interval_seconds * 1000),
        rebalance_timeout_ms=int(max(settings.session_timeout_seconds, 10.0) * 1000),
        **security.client_kwargs(),
    )
    redis = connect(settings.redis_url, decode_responses=True)
    try:
        deliveries = Deliveries(redis, settings.key_prefix)
        await deliveries.move_untagged()
        async with Notifier(config, deliveries) as notifier:
            dispatcher = Dispatcher(consumer, notifier, stop)
            consumer.subscribe([topic], listener=dispatcher)
            await consumer.start()
            committer: asyncio.Task[None] | None = None
            digests: asyncio.Task[None] | None = None
            try:
                for lane in dispatcher.lanes:
                    lane.start()
                committer = asyncio.create_task(dispatcher.commit_forever())
                if any(s.digest is not None for s in config.subscribers):
                    digests = asyncio.create_task(
                        send_digests_forever(notifier, stop, digest_check_seconds)
                    )
                logger.info(
                    "notifier started",
                    extra={"topic": topic, "subscribers": [s.name for s in config.subscribers]},
                )
                while not stop.is_set():
                    dispatcher.check_lanes()
                    batch = await consumer.getmany(timeout_ms=200, max_records=100)
                    await dispatcher.run_batch(batch)
            finally:
                await dispatcher.shutdown()
                if committer is not None:
                    await asyncio.gather(committer, return_exceptions=True)
                if digests is not None:
                    digests.cancel()
                    await asyncio.gather(digests, return_exceptions=True)
                await consumer.stop()
    finally:
        await redis.aclose()
    logger.info("notifier stopped", extra={"topic": topic})
