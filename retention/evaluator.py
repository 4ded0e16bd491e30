"""Run ``retention evaluator``: the evaluation of due customers in a process of its own.

With ``RETENTION_EVALUATION=separate`` the workers only ingest, and one or more of these
processes evaluate (lifecycle, risk, alerts to ``customer-alerts``) on cores of their own.
No Faust: an asyncio loop (uvloop by default, ``RETENTION_EVENT_LOOP``), the Redis edge,
and one Kafka producer for the alerts with the same SASL and TLS as every other client.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import Callable
from pathlib import Path

from retention.config import Settings
from store.connect import connect
from store.periods import Periods
from store.store import Store
from streams.evaluation import AlertPublisher, EvaluatorLoop, build_evaluator, shard_share
from streams.topics import Topics, cluster_id, create_missing

logger = logging.getLogger(__name__)


async def evaluate(
    settings: Settings, share: tuple[int, int] = (0, 1), alive_file: Path | None = None
) -> None:
    """Evaluate rounds until SIGTERM or SIGINT; the round under way finishes its step."""
    assert settings.kafka_bootstrap is not None
    assert settings.redis_url is not None
    shard_share(1, *share)  # refuses an index outside 0 .. of - 1 before anything starts
    security = settings.kafka_security()
    topics = Topics.from_settings(settings)
    # a first evaluator may start before any worker made the topics
    await create_missing(
        settings.kafka_bootstrap, {topics.alerts: {}}, settings.partitions, security
    )
    scope = await cluster_id(settings.kafka_bootstrap, security)
    redis = connect(settings.redis_url, decode_responses=True)
    publisher = AlertPublisher(settings.kafka_bootstrap, topics.alerts, security)
    try:
        store = Store(
            redis,
            settings.key_prefix,
            activity_kinds=settings.activity_kinds,
            offsets_scope=scope,
            shards=settings.shards,
        )
        # a store of another format or shard count is refused now, not every round
        await store.layout()
        loop = EvaluatorLoop(
            settings,
            store,
            Periods(redis, settings.key_prefix, settings.shards),
            build_evaluator(settings, store, publisher),
            scope,
            share,
            alive_file,
        )
        await publisher.start()
        _stop_on_signals(loop.stop.set)
        logger.info(
            "evaluator starting",
            extra={
                "pid": os.getpid(),
                "index": share[0],
                "of": share[1],
                "cluster_id": scope,
                # with "worker", the workers evaluate too: safe (leases), only not apart
                "evaluation": settings.evaluation,
            },
        )
        try:
            await loop.run()
        finally:
            await publisher.stop()
        logger.info("evaluator stopped", extra=loop.summary())
    finally:
        await redis.aclose()


def _stop_on_signals(stop: Callable[[], None]) -> None:
    running = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        running.add_signal_handler(signum, stop)


def run(
    settings: Settings, share: tuple[int, int] = (0, 1), alive_file: Path | None = None
) -> None:
    """Block until the evaluator is stopped (SIGTERM/SIGINT)."""
    if settings.event_loop == "uvloop":
        import uvloop

        factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    else:
        factory = asyncio.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(evaluate(settings, share, alive_file))
