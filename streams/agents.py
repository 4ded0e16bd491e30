"""The Faust side of a worker: declare its topics, ingest agent and timers on the app.

The agent takes batches from the source topics, has ``Ingest`` (``streams/ingest_batch.py``)
decode and store each, and acks a batch only once it is stored; partitions start where the
store is (``streams/positioning.py``). If the agent dies, the process exits non-zero so
that a supervisor restarts it, rather than staying up and doing nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, cast

import faust
from faust.streams import Stream

from store.connect import connect
from store.periods import Periods
from store.store import Store
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
    _ingest_agent(app, parts)
    heartbeat_timer(app, parts)
    clock_timers(app, parts)
    if settings.evaluation != "separate":
        # otherwise `retention evaluator` processes evaluate, on cores of their own
        evaluator_timer(app, parts)
    return parts.ingest


async def exit_if_fails(work: Awaitable[None], exit: Callable[[int], Any] = os._exit) -> None:
    """Run the agent's work; if it raises, end the process with AGENT_DIED_EXIT.

    Faust logs a crashed agent and keeps the worker up, which would then look alive while
    doing nothing. Exiting hands the problem to the supervisor (``retention up``, compose,
    systemd), and the restarted worker resumes from the store's offsets, losing nothing.
    """
    try:
        await work
    except asyncio.CancelledError:
        raise
    except BaseException:
        logger.critical("the ingest agent died; exiting so the worker is restarted", exc_info=True)
        for handler in logging.getLogger().handlers:
            with contextlib.suppress(Exception):
                handler.flush()
        sys.stderr.flush()
        exit(AGENT_DIED_EXIT)


def _ingest_agent(app: faust.App, parts: WorkerParts) -> None:
    settings, ingest = parts.settings, parts.ingest
    source = app.topic(*parts.topics.sources, key_serializer="raw", value_serializer="raw")

    @app.agent(source, name="ingest")
    async def ingest_agent(stream: faust.StreamT[bytes]) -> None:
        await exit_if_fails(_consume(stream))

    async def _consume(stream: faust.StreamT[bytes]) -> None:
        # noack_take yields events (not values) and leaves acking to us
        raw_stream = cast(Stream[bytes], stream)
        batches: AsyncIterator[Sequence[Any]] = raw_stream.noack_take(
            settings.batch_size, within=settings.batch_within_seconds
        )
        # Two stages: while Redis applies one batch, the next is decoded. Writes stay in
        # order (one in flight at a time) and each batch is acked only once it is stored.
        in_flight: asyncio.Task[None] | None = None

        async def store_and_ack(batch: DecodedBatch, events: Sequence[Any]) -> None:
            await ingest.store_batch(batch)
            for event in events:
                await raw_stream.ack(event)

        async for events in batches:
            batch = await ingest.decode(events)
            if in_flight is not None:
                await in_flight
            in_flight = asyncio.create_task(store_and_ack(batch, events))
