"""The Faust side of a worker: declare its topics, batch ingest and timers on the app.

The consumer hands each fetch from the source topics to ``Ingest``
(``streams/ingest_batch.py``) as one batch (``streams/batch_reader.py``); each batch is
decoded, stored, and acked only once it is stored; partitions start where the store is
(``streams/positioning.py``). If the ingest dies, the process exits non-zero so that a
supervisor restarts it, rather than staying up and doing nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import sys
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import faust

from store.connect import connect
from store.periods import Periods
from store.store import Store
from streams.batch_reader import BatchConsumer
from streams.ingest_batch import DecodedBatch, Ingest
from streams.kafka_security import PLAINTEXT, KafkaSecurity
from streams.positioning import position_partitions
from streams.timers import clock_timers, evaluator_timer, heartbeat_timer
from streams.topics import Topics
from streams.worker_metrics import WorkerMetrics
from streams.worker_parts import WorkerParts
from streams.worker_settings import WorkerSettings

logger = logging.getLogger(__name__)

#: Exit status of a worker whose agent died: a supervisor restarts it.
AGENT_DIED_EXIT = 70


def worker_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


def register(
    app: faust.App,
    settings: WorkerSettings,
    cluster_id: str,
    metrics: WorkerMetrics | None = None,
    security: KafkaSecurity = PLAINTEXT,
) -> Ingest:
    """Declare the topics, the ingest agent and the timers on ``app``."""
    topics = Topics.from_settings(settings)
    dlq = app.topic(topics.dlq, key_serializer="raw", value_serializer="raw")
    assert settings.redis_url is not None
    redis = connect(settings.redis_url, decode_responses=True)
    store = Store(
        redis,
        settings.key_prefix,
        activity_kinds=settings.activity_kinds,
        dedupe_horizon_seconds=settings.dedupe_horizon_seconds,
        offsets_scope=cluster_id,
        shards=settings.shards,
        writer=True,
    )
    parts = WorkerParts(
        settings,
        topics,
        redis,
        store,
        Periods(redis, settings.key_prefix, settings.shards),
        Ingest(settings, topics, store, dlq, metrics),
        cluster_id,
        worker_id(),
    )
    position_partitions(app, parts, security)
    _ingest_reader(app, parts)
    heartbeat_timer(app, parts)
    clock_timers(app, parts)
    if settings.evaluation != "separate":
        # otherwise `retention evaluator` processes evaluate, on cores of their own
        evaluator_timer(app, parts)
    return parts.ingest


async def exit_if_fails(work: Awaitable[None], exit: Callable[[int], Any] = os._exit) -> None:
    """Run the ingest's work; if it raises, end the process with AGENT_DIED_EXIT.

    Faust logs a crashed agent or fetcher and keeps the worker up, which would then look
    alive while doing nothing. Exiting hands the problem to the supervisor (``retention
    up``, compose, systemd), and the restarted worker resumes from the store's offsets,
    losing nothing.
    """
    try:
        await work
    except asyncio.CancelledError:
        raise
    except BaseException:
        logger.critical("the ingest died; exiting so the worker is restarted", exc_info=True)
        for handler in logging.getLogger().handlers:
            with contextlib.suppress(Exception):
                handler.flush()
        sys.stderr.flush()
        exit(AGENT_DIED_EXIT)


class _BatchPipeline:
    """Two stages: while Redis applies one batch, the next is decoded. Writes stay in order
    (one in flight at a time) and a batch's offsets are acked only once it is stored."""

    def __init__(self, ingest: Ingest, consumer: BatchConsumer, topics: Sequence[str]) -> None:
        self.ingest = ingest
        self.consumer = consumer
        self.topics = frozenset(topics)
        self.batch_size = ingest.settings.batch_size
        self.in_flight: asyncio.Task[None] | None = None

    async def take(self, records: list[Any]) -> None:
        await exit_if_fails(self._take(records))

    async def _take(self, records: list[Any]) -> None:
        batch = await self.ingest.decode(records)
        await self.settle()
        self.in_flight = asyncio.create_task(exit_if_fails(self._store(batch)))

    async def _store(self, batch: DecodedBatch) -> None:
        await self.ingest.store_batch(batch)
        self.consumer.ack_records(batch.messages)

    async def settle(self) -> None:
        if self.in_flight is not None:
            await asyncio.shield(self.in_flight)


def _ingest_reader(app: faust.App, parts: WorkerParts) -> None:
    """Subscribe to the source topics and have the consumer hand their fetches to the
    ingest in batches (``streams/batch_reader.py``)."""
    sources = parts.topics.sources
    app.topics.add(app.topic(*sources, key_serializer="raw", value_serializer="raw"))
    consumer = app.consumer
    if not isinstance(consumer, BatchConsumer):
        raise TypeError("the worker's app must be made by streams.app.create_app")
    consumer.sink = _BatchPipeline(parts.ingest, consumer, sources)
