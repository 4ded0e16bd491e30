"""Topic names (with the configurable prefix) and their creation."""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from typing import Protocol

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from contract.events import EVENT_TYPES, EventType, Rejection
from streams.kafka_security import PLAINTEXT, KafkaSecurity

logger = logging.getLogger(__name__)

#: The event type each source topic carries; the topic's base name is the plural.
SOURCE_BASENAMES: dict[EventType, str] = {
    "order": "orders",
    "login": "logins",
    "support": "support",
}
#: Source topics keep every event: the store is derived from them and can be rebuilt from
#: them (``retention rebuild``) only as far back as they reach.
SOURCE_TOPIC_CONFIG = {"retention.ms": "-1"}
DLQ_BASENAME = "events-dlq"
ALERTS_BASENAME = "customer-alerts"


class _Prefixed(Protocol):
    @property
    def topic_prefix(self) -> str: ...


@dataclass(frozen=True, slots=True)
class Topics:
    prefix: str = ""

    def source(self, event_type: EventType) -> str:
        return f"{self.prefix}{SOURCE_BASENAMES[event_type]}"

    @property
    def sources(self) -> tuple[str, ...]:
        return tuple(self.source(t) for t in EVENT_TYPES)

    @property
    def dlq(self) -> str:
        return f"{self.prefix}{DLQ_BASENAME}"

    @property
    def alerts(self) -> str:
        return f"{self.prefix}{ALERTS_BASENAME}"

    def event_type_of(self, topic: str) -> EventType | None:
        for event_type in EVENT_TYPES:
            if self.source(event_type) == topic:
                return event_type
        return None

    @classmethod
    def from_settings(cls, settings: _Prefixed) -> Topics:
        return cls(settings.topic_prefix)


def dead_letter_headers(
    rejection: Rejection, source_topic: str, **source: object
) -> list[tuple[str, bytes]]:
    """The headers every dead letter carries: why, and where it came from (``source``
    adds ``x-source-<name>`` headers: a partition and offset, or a file and line)."""
    headers = [
        ("x-reason", rejection.reason.encode()),
        ("x-error", rejection.detail.encode(errors="replace")),
        ("x-source-topic", source_topic.encode()),
    ]
    for name, value in source.items():
        headers.append((f"x-source-{name}", str(value).encode("utf-8", "surrogateescape")))
    return headers


async def ensure_topics(
    bootstrap: str, topics: Topics, partitions: int, security: KafkaSecurity = PLAINTEXT
) -> None:
    """Create the source topics (kept forever), the DLQ and the alerts topic when missing;
    existing ones are left alone."""
    wanted = {name: SOURCE_TOPIC_CONFIG for name in topics.sources}
    wanted |= {topics.dlq: {}, topics.alerts: {}}
    await create_missing(bootstrap, wanted, partitions, security)


async def create_missing(
    bootstrap: str,
    wanted: dict[str, dict[str, str]],
    partitions: int,
    security: KafkaSecurity = PLAINTEXT,
) -> None:
    """Create the ``wanted`` topics (name -> topic config) that do not exist yet."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, **security.client_kwargs())
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        new = [
            NewTopic(name, num_partitions=partitions, replication_factor=1, topic_configs=config)
            for name, config in wanted.items()
            if name not in existing
        ]
        if new:
            with contextlib.suppress(TopicAlreadyExistsError):  # another process was first
                await admin.create_topics(new)
            logger.info("created topics", extra={"topics": [t.name for t in new]})
    finally:
        await admin.close()


async def cluster_id(bootstrap: str, security: KafkaSecurity = PLAINTEXT) -> str:
    """The broker's cluster id scopes stored offsets: a new cluster starts again at 0."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, **security.client_kwargs())
    await admin.start()
    try:
        described = await admin.describe_cluster()
        return str(described.get("cluster_id") or "default")
    finally:
        await admin.close()


async def end_offsets(
    bootstrap: str, topics: list[str], security: KafkaSecurity = PLAINTEXT
) -> dict[TopicPartition, int]:
    """Each partition's end offset (the next offset to be written), one short-lived
    consumer; some brokers report it short (Tansu by up to a batch)."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, **security.client_kwargs()
    )
    await consumer.start()
    try:
        partitions = [
            TopicPartition(topic, p)
            for topic in topics
            for p in sorted(consumer.partitions_for_topic(topic) or ())
        ]
        if not partitions:
            await consumer.topics()  # refresh metadata once
            partitions = [
                TopicPartition(topic, p)
                for topic in topics
                for p in sorted(consumer.partitions_for_topic(topic) or ())
            ]
        result: dict[TopicPartition, int] = await consumer.end_offsets(partitions)
        return result
    finally:
        await consumer.stop()
