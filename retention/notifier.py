"""The notifier service: consume ``customer-alerts`` and deliver each alert to subscribers.

Offsets are committed one alert at a time, after :meth:`Notifier.deliver` returned (the
alert was delivered, skipped, or dead-lettered for every subscriber). A restart therefore
repeats at most the alert in hand, and the delivered-key set in Redis turns that repeat
into a duplicate instead of a second message.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable
from pathlib import Path

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import CommitFailedError, IllegalStateError, TopicAlreadyExistsError
from redis.asyncio import Redis

from processors.alerts import Alert
from processors.notify import Notifier, load_config
from retention.config import Settings
from streams.topics import Topics

logger = logging.getLogger(__name__)

#: Pause before trying an alert again when Redis (not a subscriber) failed.
RETRY_PAUSE_SECONDS = 1.0


def alerts_topic(settings: Settings) -> str:
    """``<prefix>customer-alerts``."""
    return Topics.from_settings(settings).alerts


def notifier_group(settings: Settings) -> str:
    return f"{settings.topic_prefix}retention-notifier"


async def ensure_alerts_topic(bootstrap: str, topic: str, partitions: int) -> None:
    """Create the alerts topic when missing, as ``streams.topics.ensure_topics`` does."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        if topic not in set(await admin.list_topics()):
            with contextlib.suppress(TopicAlreadyExistsError):  # another process was first
                await admin.create_topics(
                    [NewTopic(topic, num_partitions=partitions, replication_factor=1)]
                )
            logger.info("created topic", extra={"topic": topic})
    finally:
        await admin.close()


async def publish_alerts(bootstrap: str, topic: str, alerts: Iterable[Alert]) -> int:
    """Send alerts keyed by customer id, so one customer's alerts stay in order; returns
    how many the broker stored."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    await producer.start()
    try:
        futures = [
            await producer.send(topic, value=a.encode(), key=a.customer_id.encode()) for a in alerts
        ]
        await asyncio.gather(*futures)
        return len(futures)
    finally:
        await producer.stop()


class _Loop:
    def __init__(self, consumer: AIOKafkaConsumer, notifier: Notifier, stop: asyncio.Event) -> None:
        self.consumer = consumer
        self.notifier = notifier
        self.stop = stop

    async def handle(self, record: ConsumerRecord[bytes, bytes]) -> None:
        try:
            alert = Alert.decode(record.value or b"")
        except (ValueError, KeyError, TypeError) as exc:
            # UnicodeDecodeError and JSONDecodeError are ValueErrors
            logger.error(
                "bad alert skipped",
                extra={"topic": record.topic, "offset": record.offset, "error": repr(exc)},
            )
            await self.notifier.redis.hincrby(self.notifier.stats_key, "bad", 1)
            return
        outcomes = await self.notifier.deliver(alert)
        logger.info("alert handled", extra={"alert": alert.key, "outcomes": outcomes})

    async def commit(self, record: ConsumerRecord[bytes, bytes]) -> None:
        tp = TopicPartition(record.topic, record.partition)
        try:
            await self.consumer.commit({tp: record.offset + 1})
        except (CommitFailedError, IllegalStateError) as exc:
            # the partition moved to another member, which starts from the last commit;
            # what this one delivered is in Redis and will be skipped there
            logger.warning("commit failed", extra={"partition": str(tp), "error": repr(exc)})

    async def pause(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.stop.wait(), seconds)

    async def run_batch(
        self, batch: dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]]
    ) -> None:
        for tp, records in batch.items():
            for record in records:
                if self.stop.is_set():
                    return
                try:
                    await self.handle(record)
                except Exception:
                    logger.exception(
                        "alert not handled; will try again",
                        extra={"topic": tp.topic, "offset": record.offset},
                    )
                    self.consumer.seek(tp, record.offset)
                    await self.pause(RETRY_PAUSE_SECONDS)
                    break
                await self.commit(record)


async def run_notifier(
    settings: Settings, config_path: Path, stop: asyncio.Event | None = None
) -> None:
    """Deliver alerts until ``stop`` is set (forever without one); config errors raise
    :class:`processors.notify.NotifyConfigError` before anything connects."""
    config = load_config(config_path)
    if not settings.kafka_bootstrap or not settings.redis_url:
        raise ValueError("the notifier needs KAFKA_BOOTSTRAP and REDIS_URL")
    stop = stop or asyncio.Event()
    topic = alerts_topic(settings)
    await ensure_alerts_topic(settings.kafka_bootstrap, topic, settings.partitions)
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=settings.kafka_bootstrap,
        group_id=notifier_group(settings),
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        session_timeout_ms=int(settings.session_timeout_seconds * 1000),
        heartbeat_interval_ms=int(settings.heartbeat_interval_seconds * 1000),
        rebalance_timeout_ms=int(max(settings.session_timeout_seconds, 10.0) * 1000),
    )
    redis = Redis.from_url(settings.redis_url, decode_responses=True)
    try:
        async with Notifier(config, redis, settings.key_prefix) as notifier:
            await consumer.start()
            try:
                loop = _Loop(consumer, notifier, stop)
                logger.info(
                    "notifier started",
                    extra={"topic": topic, "subscribers": [s.name for s in config.subscribers]},
                )
                while not stop.is_set():
                    batch = await consumer.getmany(timeout_ms=200, max_records=100)
                    await loop.run_batch(batch)
            finally:
                await consumer.stop()
    finally:
        await redis.aclose()
    logger.info("notifier stopped", extra={"topic": topic})
