"""Faust agents: decode a batch, hand it to the store in one call, then ack it.

Offsets are acknowledged (and so committed) only after the Redis script has applied the
batch. The script records each partition's last applied offset together with the state,
so messages Kafka delivers again after a crash or a rebalance change nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import faust
from faust.streams import Stream
from prometheus_client import CollectorRegistry
from redis.asyncio import Redis
from redis.exceptions import RedisError

from processors.alerts import Alert
from processors.alive import fit_age_seconds, refit
from processors.evaluator import Evaluator, update_high_value_threshold
from processors.lifecycle import LifecyclePolicy
from processors.periods import Periods
from processors.risk import load_policy
from processors.store import Store, accepted_record, rejected_record
from processors.windows import PERIODS
from retention.config import Settings
from retention.exporter import WorkerMetrics, serve_worker_metrics
from streams.events import Rejection, parse_event
from streams.topics import Topics

logger = logging.getLogger(__name__)

MAX_BACKOFF_SECONDS = 5.0


@dataclass
class WorkerCounters:
    """This process's own counts; the store holds the cluster-wide ones."""

    batches: int = 0
    applied: int = 0
    duplicates: int = 0
    redelivered: int = 0
    rejected: int = 0
    redis_errors: int = 0
    first_event_at: float | None = None
    started_at: float = field(default_factory=time.time)


def dlq_headers(message: Any, rejection: Rejection) -> list[tuple[str, bytes]]:
    return [
        ("x-reason", rejection.reason.encode()),
        ("x-error", rejection.detail.encode()),
        ("x-source-topic", message.topic.encode()),
        ("x-source-partition", str(message.partition).encode()),
        ("x-source-offset", str(message.offset).encode()),
    ]


@dataclass(frozen=True)
class Prepared:
    records: list[list[str]]
    dead_letters: list[Any]


class Ingest:
    """What the agent does with each batch; kept out of the agent body to stay testable."""

    def __init__(
        self,
        settings: Settings,
        topics: Topics,
        store: Store,
        dlq: Any,
        metrics: WorkerMetrics | None = None,
    ) -> None:
        self.metrics = metrics
        self.settings = settings
        self.topics = topics
        self.store = store
        self.dlq = dlq
        self.counters = WorkerCounters()

    async def prepare(self, events: Sequence[Any]) -> Prepared:
        """Validate a batch and start sending its rejects to the dead-letter topic."""
        records: list[list[str]] = []
        pending = []
        for event in events:
            message = event.message
            topic_type = self.topics.event_type_of(message.topic)
            parsed = parse_event(message.value or b"", topic_type=topic_type, key=message.key)
            if isinstance(parsed, Rejection):
                fut = await self.dlq.send(
                    key=message.key, value=message.value, headers=dlq_headers(message, parsed)
                )
                pending.append(fut)
                records.append(
                    rejected_record(message.topic, message.partition, message.offset, parsed.reason)
                )
            else:
                records.append(
                    accepted_record(parsed, message.topic, message.partition, message.offset)
                )
        return Prepared(records, pending)

    async def store_batch(self, batch: Prepared) -> None:
        # The dead letters must be stored by Kafka before their offsets may be committed.
        if batch.dead_letters:
            await asyncio.gather(*batch.dead_letters)
        await self._write(batch.records)

    async def handle(self, events: Sequence[Any]) -> None:
        await self.store_batch(await self.prepare(events))

    async def _write(self, records: list[list[str]]) -> None:
        backoff = 0.1
        started = time.monotonic()
        while True:
            try:
                result = await self.store.apply_batch(records)
                break
            except RedisError as exc:
                # Never ack what is not stored: wait for Redis rather than drop the batch.
                self.counters.redis_errors += 1
                if self.metrics is not None:
                    self.metrics.redis_error()
                logger.warning("redis write failed, retrying", extra={"error": repr(exc)})
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF_SECONDS)
        if self.metrics is not None:
            self.metrics.observe_batch(time.monotonic() - started, len(records))
        c = self.counters
        c.batches += 1
        c.applied += result.applied
        c.duplicates += result.duplicates
        c.redelivered += result.redelivered
        c.rejected += result.rejected
        if c.first_event_at is None:
            c.first_event_at = time.time()


async def period_clock(settings: Settings, periods: Periods, scope: str) -> datetime | None:
    """Wall time in live mode; the event-time watermark in backtests (METRICS.md, Time)."""
    if settings.clock == "wall":
        return datetime.now(UTC)
    sources = Topics.from_settings(settings).sources
    return await periods.watermark(scope, {topic: settings.partitions for topic in sources})


async def close_periods(settings: Settings, periods: Periods, scope: str) -> int:
    """Write the rows of periods the clock has passed, after the allowed lateness."""
    clock = await period_clock(settings, periods, scope)
    if clock is None:
        return 0
    cutoff = clock - timedelta(seconds=settings.lateness_seconds)
    written = 0
    for period in PERIODS:
        written += len(await periods.close(period, settings.churn_after_days, cutoff))
    return written


def worker_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


@dataclass(frozen=True)
class Parts:
    """What the agent and the timers of one worker share."""

    settings: Settings
    topics: Topics
    redis: Redis
    store: Store
    periods: Periods
    ingest: Ingest
    cluster_id: str
    worker_id: str


def register(app: faust.App, settings: Settings, cluster_id: str) -> Ingest:
    """Declare the topics, the ingest agent and the timers on ``app``."""
    topics = Topics.from_settings(settings)
    dlq = app.topic(topics.dlq, key_serializer="raw", value_serializer="raw")
    assert settings.redis_url is not None
    redis = Redis.from_url(settings.redis_url, decode_responses=True)
    store = Store(
        redis,
        settings.key_prefix,
        activity_kinds=settings.activity_kinds,
        dedupe_horizon_seconds=settings.dedupe_horizon_seconds,
        offsets_scope=cluster_id,
    )
    metrics = None
    if settings.worker_metrics_port is not None:
        registry = CollectorRegistry()
        metrics = WorkerMetrics(registry)
        serve_worker_metrics(settings.worker_metrics_port, registry)
    parts = Parts(
        settings,
        topics,
        redis,
        store,
        Periods(redis, settings.key_prefix),
        Ingest(settings, topics, store, dlq, metrics),
        cluster_id,
        worker_id(),
    )
    _ingest_agent(app, parts)
    _heartbeat(app, parts)
    _clock_timers(app, parts)
    _evaluator(app, parts)
    return parts.ingest


def _ingest_agent(app: faust.App, parts: Parts) -> None:
    settings, ingest = parts.settings, parts.ingest
    source = app.topic(*parts.topics.sources, key_serializer="raw", value_serializer="raw")

    @app.agent(source, name="ingest")
    async def ingest_agent(stream: faust.StreamT[bytes]) -> None:
        # noack_take yields events (not values) and leaves acking to us
        raw_stream = cast(Stream[bytes], stream)
        batches: AsyncIterator[Sequence[Any]] = raw_stream.noack_take(
            settings.batch_size, within=settings.batch_within_seconds
        )
        # Two stages: while Redis applies one batch, the next is decoded. Writes stay in
        # order (one in flight at a time) and each batch is acked only once it is stored.
        in_flight: asyncio.Task[None] | None = None

        async def store_and_ack(batch: Prepared, events: Sequence[Any]) -> None:
            await ingest.store_batch(batch)
            for event in events:
                await raw_stream.ack(event)

        async for events in batches:
            batch = await ingest.prepare(events)
            if in_flight is not None:
                await in_flight
            in_flight = asyncio.create_task(store_and_ack(batch, events))


def _heartbeat(app: faust.App, parts: Parts) -> None:
    store, me = parts.store, parts.worker_id

    @app.timer(interval=parts.settings.worker_heartbeat_seconds)  # type: ignore[untyped-decorator]
    async def heartbeat() -> None:
        assigned = sorted(
            f"{tp.topic}|{tp.partition}"
            for tp in app.consumer.assignment()
            if tp.topic in parts.topics.sources
        )
        c = parts.ingest.counters
        info = {
            "pid": os.getpid(),
            "partitions": assigned,
            "applied": c.applied,
            "duplicates": c.duplicates,
            "redelivered": c.redelivered,
            "rejected": c.rejected,
            "redis_errors": c.redis_errors,
            "started_at": c.started_at,
            "first_event_at": c.first_event_at,
        }
        try:
            await store.heartbeat(me, info)
        except RedisError as exc:
            logger.warning("heartbeat failed", extra={"error": repr(exc)})

    @app.on_before_shutdown.connect
    async def forget(sender: Any, /, *args: Any, signal: Any, **kwargs: Any) -> None:
        with contextlib.suppress(RedisError):
            await store.forget_worker(me)
        await parts.redis.aclose()


def _clock_timers(app: faust.App, parts: Parts) -> None:
    """The leader's periodic work: closing periods and refitting BG/NBD."""
    settings, periods = parts.settings, parts.periods

    @app.timer(interval=settings.close_every_seconds, on_leader=True)  # type: ignore[untyped-decorator]
    async def close() -> None:
        try:
            written = await close_periods(settings, periods, parts.cluster_id)
        except RedisError as exc:
            logger.warning("closing periods failed", extra={"error": repr(exc)})
            return
        if written:
            logger.info("periods closed", extra={"rows": written})

    # Checked often, done rarely: a fresh worker (or a new leader) fits soon after it
    # starts instead of a whole interval later.
    @app.timer(interval=min(10.0, settings.refit_every_seconds), on_leader=True)  # type: ignore[untyped-decorator]
    async def refit_model() -> None:
        clock = await period_clock(settings, periods, parts.cluster_id)
        if clock is None:
            return
        try:
            age = await fit_age_seconds(parts.store)
            if age is not None and age < settings.refit_every_seconds:
                return
            model = await refit(parts.store, clock.date())
            quantile = load_policy(settings.risk_file).high_value_quantile
            await update_high_value_threshold(parts.store, quantile)
        except RedisError as exc:
            logger.warning("BG/NBD refit failed", extra={"error": repr(exc)})
            return
        if model is not None:
            logger.info("BG/NBD refitted", extra=model.as_dict())


def _evaluator(app: faust.App, parts: Parts) -> None:
    """The leader evaluates due customers: lifecycle, risk, alerts to ``customer-alerts``."""
    settings = parts.settings
    alerts_topic = app.topic(parts.topics.alerts, key_serializer="raw", value_serializer="raw")

    async def publish(alerts: Sequence[Alert]) -> None:
        sent = [
            await alerts_topic.send(key=a.customer_id.encode(), value=a.encode()) for a in alerts
        ]
        await asyncio.gather(*sent)

    evaluator = Evaluator(
        parts.store,
        load_policy(settings.risk_file),
        LifecyclePolicy(churn_after_days=settings.churn_after_days),
        publish,
    )

    @app.timer(interval=settings.evaluate_every_seconds, on_leader=True)  # type: ignore[untyped-decorator]
    async def evaluate_due() -> None:
        clock = await period_clock(settings, parts.periods, parts.cluster_id)
        if clock is None:
            return
        try:
            # a bounded share per tick: evaluation shares the worker's core with ingestion
            await evaluator.run_once(clock, settings.evaluate_batch)
        except RedisError as exc:
            logger.warning("evaluating customers failed", extra={"error": repr(exc)})
