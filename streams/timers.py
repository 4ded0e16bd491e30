"""The worker's timers: its heartbeat, the leader's period closing and refit, and every
worker's evaluation of the shards that follow its partitions (unless evaluator processes
do that: ``RETENTION_EVALUATION=separate``, ``streams/evaluation.py``).

A timer body that raises costs one tick, never the timer (``surviving``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from datetime import timedelta
from typing import Any

import faust
from redis.exceptions import RedisError

from processors.alerts import Alert
from processors.forecast import model_options
from processors.windows import PERIODS
from store.evaluations import requeue_at_risk, update_high_value_threshold
from store.models import fit_age_seconds, refit
from store.outcomes import keep_outcomes
from store.periods import Periods
from streams.evaluation import build_evaluator, drain, period_clock, store_held
from streams.ingest_batch import WorkerCounters
from streams.risk_file import load_policy
from streams.worker_parts import WorkerParts
from streams.worker_settings import WorkerSettings

logger = logging.getLogger(__name__)


async def close_periods(settings: WorkerSettings, periods: Periods, scope: str) -> int:
    """Compact the bitmaps of periods the clock has passed, after the allowed lateness."""
    clock = await period_clock(settings, periods, scope)
    if clock is None:
        return 0
    cutoff = clock - timedelta(seconds=settings.lateness_seconds)
    written = 0
    for period in PERIODS:
        written += len(await periods.close(period, cutoff))
    return written


async def held(parts: WorkerParts, what: str) -> bool:
    """Whether ``what`` waits this tick: while a rebuild wipes the store, and while the
    store replays what it had lost (after a rebuild, a rollback or a restore), when
    customers whose newest events are not back yet would look silent and be alerted."""
    return await store_held(parts.store, what)


def surviving(
    name: str, counters: WorkerCounters
) -> Callable[[Callable[[], Awaitable[None]]], Callable[[], Awaitable[None]]]:
    """A timer body that logs and counts any exception and runs again next tick.

    Faust stops a timer whose body raises, silently; a Redis outage, a Kafka timeout while
    publishing alerts or a risk file broken by an edit must cost one tick, not the timer.
    """

    def wrap(body: Callable[[], Awaitable[None]]) -> Callable[[], Awaitable[None]]:
        async def guarded() -> None:
            try:
                await body()
            except asyncio.CancelledError:
                raise
            except RedisError as exc:
                counters.timer_errors += 1
                logger.warning(f"{name} failed", extra={"error": repr(exc)})
            except Exception:
                counters.timer_errors += 1
                logger.exception(f"{name} failed")

        guarded.__name__ = body.__name__
        guarded.__qualname__ = body.__qualname__
        return guarded

    return wrap


def heartbeat_timer(app: faust.App, parts: WorkerParts) -> None:
    store, me, ingest = parts.store, parts.worker_id, parts.ingest

    @app.timer(interval=parts.settings.worker_heartbeat_seconds)  # type: ignore[untyped-decorator]
    @surviving("heartbeat", ingest.counters)
    async def heartbeat() -> None:
        assigned = sorted(
            (tp.topic, tp.partition)
            for tp in app.consumer.assignment()
            if tp.topic in parts.topics.sources
        )
        c = ingest.counters
        info = {
            "pid": os.getpid(),
            "partitions": [f"{t}|{p}" for t, p in assigned],
            "applied": c.applied,
            "duplicates": c.duplicates,
            "redelivered": c.redelivered,
            "rejected": c.rejected,
            "internal_errors": c.internal_errors,
            "redis_errors": c.redis_errors,
            "rewinds": c.rewinds,
            "timer_errors": c.timer_errors,
            "started_at": c.started_at,
            "first_event_at": c.first_event_at,
            "last_applied_at": c.last_applied_at,
        }
        await store.heartbeat(me, info)
        # a store that went back in time while no message arrived is noticed here
        await ingest.check_store(assigned)

    @app.on_before_shutdown.connect
    async def forget(sender: Any, /, *args: Any, signal: Any, **kwargs: Any) -> None:
        with contextlib.suppress(RedisError):
            await store.forget_worker(me)
        await parts.redis.aclose()


#: How often the leader counts the alerts' outcomes for the exporter.
OUTCOMES_EVERY_SECONDS = 60.0


def clock_timers(app: faust.App, parts: WorkerParts) -> None:
    """The leader's periodic work: closing periods and refitting BG/NBD."""
    settings, periods = parts.settings, parts.periods

    counters = parts.ingest.counters

    @app.timer(interval=settings.close_every_seconds, on_leader=True)  # type: ignore[untyped-decorator]
    @surviving("closing periods", counters)
    async def close() -> None:
        if await parts.store.rebuilding():
            return
        written = await close_periods(settings, periods, parts.cluster_id)
        if written:
            logger.info("periods closed", extra={"periods": written})

    @app.timer(interval=OUTCOMES_EVERY_SECONDS, on_leader=True)  # type: ignore[untyped-decorator]
    @surviving("counting alert outcomes", counters)
    async def outcomes() -> None:
        if await held(parts, "outcomes"):
            return
        clock = await period_clock(settings, periods, parts.cluster_id)
        if clock is None:
            return
        window = load_policy(settings.risk_file).outcome_window_days
        await keep_outcomes(parts.store, int(clock.timestamp() * 1000), window)

    # Checked often, done rarely: a fresh worker (or a new leader) fits soon after it
    # starts instead of a whole interval later.
    @app.timer(interval=min(10.0, settings.refit_every_seconds), on_leader=True)  # type: ignore[untyped-decorator]
    @surviving("alive-model refit", counters)
    async def refit_model() -> None:
        if await held(parts, "refit"):
            return
        clock = await period_clock(settings, periods, parts.cluster_id)
        if clock is None:
            return
        age = await fit_age_seconds(parts.store)
        if age is not None and age < settings.refit_every_seconds:
            return
        model = await refit(parts.store, clock.date(), model_options(settings))
        quantile = load_policy(settings.risk_file).high_value_quantile
        await update_high_value_threshold(parts.store, quantile)
        if model is not None:
            # the at-risk list shows each customer's CLTV as last evaluated: evaluate
            # them again under the new fit now rather than at their next recheck
            queued = await requeue_at_risk(parts.store, int(clock.timestamp() * 1000))
            logger.info("alive model refitted", extra={**model.as_dict(), "requeued": queued})


def owned_shards(
    assigned: Iterable[tuple[str, int]], topic: str, partitions: int, shards: int
) -> list[int]:
    """The store shards a worker evaluates: those whose number, modulo the partition count,
    is one of its partitions of ``topic``. Every worker in the group evaluates its own
    share, each shard has one owner once the group is balanced, and a shard moves with
    its partition; in the moment two workers both hold it, leases keep them apart."""
    mine = {partition for name, partition in assigned if name == topic}
    return [shard for shard in range(shards) if shard % max(1, partitions) in mine]


def partition_count(app: faust.App, topic: str, configured: int) -> int:
    """The topic's real partition count, as the consumer's metadata has it: a topic made
    with another count than ``RETENTION_PARTITIONS`` (or given partitions since) would
    otherwise leave shards that no worker evaluates. The configured count until the
    metadata is known."""
    try:
        known = app.consumer.topic_partitions(topic)
    except Exception:  # no consumer yet, or metadata not fetched
        known = None
    return int(known) if known else configured


def evaluator_timer(app: faust.App, parts: WorkerParts) -> None:
    """Every worker evaluates the due customers of the shards it owns: lifecycle, risk,
    alerts to ``customer-alerts``."""
    settings = parts.settings
    alerts_topic = app.topic(parts.topics.alerts, key_serializer="raw", value_serializer="raw")

    async def publish(alerts: Sequence[Alert]) -> None:
        sent = [
            await alerts_topic.send(key=a.customer_id.encode(), value=a.encode()) for a in alerts
        ]
        await asyncio.gather(*sent)

    evaluator = build_evaluator(settings, parts.store, publish)

    topic = parts.topics.source("order")

    @app.timer(interval=settings.evaluate_every_seconds)  # type: ignore[untyped-decorator]
    @surviving("evaluating customers", parts.ingest.counters)
    async def evaluate_due() -> None:
        if await held(parts, "evaluation"):
            return
        clock = await period_clock(settings, parts.periods, parts.cluster_id)
        if clock is None:
            return
        layout = await parts.store.layout()
        assigned = [(tp.topic, tp.partition) for tp in app.consumer.assignment()]
        partitions = partition_count(app, topic, settings.partitions)
        shards = owned_shards(assigned, topic, partitions, layout.count)
        # evaluation shares the worker's core and Redis with ingestion, a bounded step at
        # a time: while a backlog is read it takes up to half of each tick, else nearly
        # all of it (a tick that outlasts its interval is only logged as overlapping)
        share = 0.9 if parts.ingest.caught_up() else 0.5
        budget = time.monotonic() + settings.evaluate_every_seconds * share
        await drain(
            evaluator,
            clock,
            settings.evaluate_batch,
            shards,
            keep_going=lambda: time.monotonic() < budget,
        )
