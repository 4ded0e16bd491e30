"""Topic names (with the configurable prefix) and their creation."""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from retention.config import Settings
from streams.events import EVENT_TYPES, EventType
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
    def from_settings(cls, settings: Settings) -> Topics:
        return cls(settings.topic_prefix)


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
