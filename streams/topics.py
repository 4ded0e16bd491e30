"""Topic names (with the configurable prefix) and their creation."""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from typing import Protocol

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from streams.events import EVENT_TYPES, EventType, Rejection
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
    """Create the source topics (kept forever) and the DLQ when missing; existing ones are
    left alone."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, **security.client_kwargs())
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        wanted = [*topics.sources, topics.dlq, topics.alerts]
        new = [
            NewTopic(
                name,
                num_partitions=partitions,
                replication_factor=1,
                topic_configs=SOURCE_TOPIC_CONFIG if name in topics.sources else {},
            )
            for name in wanted
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
