"""The Faust application, built from settings (never from module globals)."""

from __future__ import annotations

from typing import Any

import faust
from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread

from streams.batch_reader import BatchConsumer
from streams.kafka_security import PLAINTEXT, KafkaSecurity
from streams.worker_settings import WorkerSettings

_FAUST_CONSUMER = AIOKafkaConsumerThread._create_worker_consumer


def fetch_wait(wait_ms: int) -> None:
    """How long the worker's consumer lets the broker hold a fetch that finds no new
    message (aiokafka's ``fetch_max_wait_ms``). Faust fixes it at 1.5 s. Kafka answers as
    soon as a message arrives, but a broker that answers only when the wait ends (Tansu,
    the embedded one) delays every event by up to that long: 100 ms by default
    (``RETENTION_FETCH_MAX_WAIT_MS``) keeps that delay small and an idle consumer's polls
    few."""

    def create(self: AIOKafkaConsumerThread, transport: Any) -> Any:
        consumer = _FAUST_CONSUMER(self, transport)
        # read when the consumer starts, which is after this
        consumer._fetch_max_wait_ms = wait_ms
        return consumer

    AIOKafkaConsumerThread._create_worker_consumer = create  # type: ignore[method-assign]


def group_id(settings: WorkerSettings) -> str:
    return f"{settings.topic_prefix}{settings.app_id}"


def create_app(settings: WorkerSettings, security: KafkaSecurity = PLAINTEXT) -> faust.App:
    """One Faust app per worker process.

    State lives in Redis, so the app declares no tables: a worker is ready as soon as it
    has joined the group, with no changelog to recover. Messages stay raw bytes so that a
    malformed one reaches the dead-letter topic unchanged.
    """
    if not settings.kafka_bootstrap:
        raise ValueError("KAFKA_BOOTSTRAP is not set and no embedded broker was found")
    fetch_wait(settings.fetch_max_wait_ms)
    app = faust.App(
        group_id(settings),
        broker=f"kafka://{settings.kafka_bootstrap}",
        key_serializer="raw",
        value_serializer="raw",
        store="memory://",
        # Faust keeps a small directory of its own; put it with the tracker's data.
        datadir=str(settings.data_dir / "faust"),
        web_enabled=False,
        topic_partitions=settings.partitions,
        topic_allow_declare=True,
        consumer_auto_offset_reset="earliest",
        broker_session_timeout=settings.session_timeout_seconds,
        broker_heartbeat_interval=settings.heartbeat_interval_seconds,
        broker_rebalance_timeout=max(settings.session_timeout_seconds, 10.0),
        # one fetch is at most one batch of the ingest
        broker_max_poll_records=settings.batch_size,
        **security.faust_options(),
    )
    # Faust's consumer, able to hand the source topics' fetches over whole
    transport: Any = app.transport
    transport.Consumer = BatchConsumer
    return app
