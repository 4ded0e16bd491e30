"""Faust agents: decode a batch, hand it to the store in one call, then ack it.

The store's offsets are the truth (see ``streams/offsets.py``): the batch script records
each partition's last applied offset together with the state, a worker starts each
assigned partition right after it, and a batch that does not follow it (the store went
back in time) is refused and read again from where the store is. Kafka's committed
offsets are a hint for monitoring.

No message can stop the agent: whatever fails between decoding a message and building its
record sends that message to the dead-letter topic as ``internal_error``. If the agent
dies anyway, the process exits non-zero so that a supervisor restarts it, rather than
staying up and doing nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import faust
from faust.streams import Stream
from faust.types import TP as FaustTP
from redis.asyncio import Redis
from redis.exceptions import RedisError

from processors.alerts import Alert
from processors.alive import model_options
from processors.currency import Rates, UnknownCurrency
from processors.lifecycle import LifecyclePolicy
from processors.risk import load_policy
from processors.windows import PERIODS
from store.connect import connect
from store.evaluations import Evaluator, update_high_value_threshold
from store.models import fit_age_seconds, refit
from store.periods import Periods
from store.store import BatchResult, Store, accepted_record, rejected_record
from streams.events import Rejection, parse_event
from streams.kafka_security import PLAINTEXT, KafkaSecurity
from streams.offsets import TP, store_positions, wait_for_store
from streams.topics import Topics, dead_letter_headers
from streams.worker_metrics import WorkerMetrics
from streams.worker_settings import WorkerSettings

logger = logging.getLogger(__name__)

MAX_BACKOFF_SECONDS = 5.0
#: Exit status of a worker whose agent died: a supervisor restarts it.
AGENT_DIED_EXIT = 70
#: A gap seen this many times at the same offsets after seeking back is a real hole in
#: the log (compaction, transaction markers), not lost state: it is stepped over.
GAP_REPEATS_TO_SKIP = 3


@dataclass
class WorkerCounters:
    """This process's own counts; the store holds the cluster-wide ones."""

    batches: int = 0
    applied: int = 0
    duplicates: int = 0
    redelivered: int = 0
    rejected: int = 0
    internal_errors: int = 0
    redis_errors: int = 0
    rewinds: int = 0
    timer_errors: int = 0
    first_event_at: float | None = None
    last_applied_at: float | None = None
    started_at: float = field(default_factory=time.time)


def dlq_headers(message: Any, rejection: Rejection) -> list[tuple[str, bytes]]:
    return dead_letter_headers(
        rejection, message.topic, partition=message.partition, offset=message.offset
    )


def _stamp_ms(message: Any) -> int | None:
    stamp = getattr(message, "timestamp", None)
    return None if stamp is None else round(stamp * 1000)


def _tp(message: Any) -> TP:
    return (message.topic, message.partition)


@dataclass(frozen=True)
class DecodedBatch:
    records: list[list[str]]
    dead_letters: list[Any]
    messages: list[Any]


Seek = Callable[[TP, int], Awaitable[None]]


class Ingest:
    """What the agent does with each batch; kept out of the agent body to stay testable."""

    def __init__(
        self,
        settings: WorkerSettings,
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
        self.rates = Rates(
            settings.reporting_currency, settings.default_currency, settings.rates_file
        )
        #: per partition, the last offset this worker knows the store holds
        self.applied_upto: dict[TP, int] = {}
        #: per partition, the lowest offset the broker still holds (or a gap stepped over)
        self.floors: dict[TP, int] = {}
        self._gaps_seen: dict[TP, tuple[int, int, int]] = {}
        self.seek: Seek | None = None
        self.earliest: Callable[[Sequence[TP]], Awaitable[dict[TP, int]]] | None = None

    def positioned(self, positions: dict[TP, int], earliest: dict[TP, int]) -> None:
        """Partitions (re)assigned and sought: ``positions`` is where each is read from."""
        for tp, position in positions.items():
            self.applied_upto[tp] = position - 1
            self.floors[tp] = earliest.get(tp, 0)
            self._gaps_seen.pop(tp, None)

    async def _dead_letter(self, message: Any, rejection: Rejection) -> Any:
        if self.metrics is not None:
            self.metrics.rejected(message.topic, rejection.reason)
        return await self.dlq.send(
            key=message.key, value=message.value, headers=dlq_headers(message, rejection)
        )

    def latest_ms(self) -> int | None:
        """The latest event time accepted now: the wall clock plus the allowed margin, live;
        none in a backtest, whose history judges its own times."""
        if self.settings.clock != "wall":
            return None
        return int((time.time() + self.settings.max_future_seconds) * 1000)

    def _record(self, message: Any, latest_ms: int | None) -> tuple[list[str], Rejection | None]:
        topic_type = self.topics.event_type_of(message.topic)
        parsed = parse_event(
            message.value or b"", topic_type=topic_type, key=message.key, latest_ms=latest_ms
        )
        stamp = _stamp_ms(message)
        if isinstance(parsed, Rejection):
            record = rejected_record(
                message.topic, message.partition, message.offset, parsed.reason, stamp
            )
            return record, parsed
        try:
            record = accepted_record(
                parsed, message.topic, message.partition, message.offset, stamp, self.rates
            )
        except UnknownCurrency as exc:
            rejection = Rejection("unknown_currency", str(exc))
            return rejected_record(
                message.topic, message.partition, message.offset, rejection.reason, stamp
            ), rejection
        return record, None

    async def decode(self, events: Sequence[Any]) -> DecodedBatch:
        """Validate a batch and start sending its rejects to the dead-letter topic."""
        records: list[list[str]] = []
        pending = []
        messages = []
        latest_ms = self.latest_ms()
        for event in events:
            message = event.message
            try:
                record, rejection = self._record(message, latest_ms)
            except Exception as exc:  # whatever the bytes, the batch goes on
                self.counters.internal_errors += 1
                if self.metrics is not None:
                    self.metrics.internal_error()
                logger.exception(
                    "message failed before the store", extra={"offset": message.offset}
                )
                rejection = Rejection("internal_error", f"{type(exc).__name__}: {exc}"[:300])
                record = rejected_record(
                    message.topic, message.partition, message.offset, rejection.reason
                )
            # a message the store already holds was dead-lettered when it was first read
            if rejection is not None and message.offset > self.applied_upto.get(_tp(message), -1):
                pending.append(await self._dead_letter(message, rejection))
            records.append(record)
            messages.append(message)
        return DecodedBatch(records, pending, messages)

    async def store_batch(self, batch: DecodedBatch) -> None:
        # The dead letters must be stored by Kafka before their offsets may be committed.
        if batch.dead_letters:
            await asyncio.gather(*batch.dead_letters)
        result = await self._write(batch.records)
        await self._after(batch, result)

    async def handle(self, events: Sequence[Any]) -> None:
        await self.store_batch(await self.decode(events))

    async def _after(self, batch: DecodedBatch, result: BatchResult) -> None:
        by_offset = {(*_tp(m), m.offset): m for m in batch.messages}
        sent = []
        for topic, partition, offset in result.overflows:
            message = by_offset[(topic, partition, offset)]
            detail = "a money sum would leave the range kept exactly (2^53 micros)"
            sent.append(await self._dead_letter(message, Rejection("sum_overflow", detail)))
        if sent:
            await asyncio.gather(*sent)
        for message in batch.messages:
            tp = _tp(message)
            if tp not in result.gaps and message.offset > self.applied_upto.get(tp, -1):
                self.applied_upto[tp] = message.offset
                if self.metrics is not None:
                    self.metrics.applied(message.topic)
        for tp, wanted in result.gaps.items():
            refused = min(m.offset for m in batch.messages if _tp(m) == tp and m.offset > wanted)
            await self.rewind(tp, wanted, refused)

    async def rewind(self, tp: TP, wanted: int, refused: int | None = None) -> None:
        """Read ``tp`` again from ``wanted``: the store does not hold what came before."""
        seen = (wanted, refused or -1)
        previous = self._gaps_seen.get(tp)
        repeats = previous[2] + 1 if previous is not None and previous[:2] == seen else 1
        self._gaps_seen[tp] = (*seen, repeats)
        if refused is not None and repeats >= GAP_REPEATS_TO_SKIP:
            logger.warning(
                "offsets missing from the log, stepping over them",
                extra={"partition": f"{tp[0]}|{tp[1]}", "from": wanted, "to": refused},
            )
            self.floors[tp] = refused
        elif self.earliest is not None:
            # the broker may have aged data out since the floor was read
            self.floors[tp] = (await self.earliest([tp])).get(tp, self.floors.get(tp, 0))
        self.counters.rewinds += 1
        self.applied_upto[tp] = wanted - 1
        position = max(wanted, self.floors.get(tp, 0))
        logger.warning(
            "store is behind this partition, reading it again",
            extra={"partition": f"{tp[0]}|{tp[1]}", "offset": position},
        )
        if self.seek is not None:
            await self.seek(tp, position)

    async def check_store(self, assigned: Sequence[TP]) -> None:
        """Seek back any partition the store has lost (rollback, failover, flush)."""
        mine = {tp: self.applied_upto[tp] for tp in assigned if tp in self.applied_upto}
        if not mine:
            return
        stored = await self.store.applied_offsets()
        for tp, upto in mine.items():
            held = stored.get(tp, -1)
            if held < upto:
                await self.rewind(tp, held + 1)

    async def _write(self, records: list[list[str]]) -> BatchResult:
        backoff = 0.1
        started = time.monotonic()
        while True:
            try:
                result = await self.store.apply_batch(records, floors=self._floors(records))
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
        now = time.time()
        if c.first_event_at is None:
            c.first_event_at = now
        if result.applied:
            c.last_applied_at = now
        return result

    def _floors(self, records: list[list[str]]) -> dict[TP, int]:
        tps = {(r[1], int(r[2])) for r in records}
        return {tp: self.floors.get(tp, 0) for tp in tps}


async def period_clock(settings: WorkerSettings, periods: Periods, scope: str) -> datetime | None:
    """Wall time in live mode; the event-time watermark in backtests (docs/metrics.md, Time)."""
    if settings.clock == "wall":
        return datetime.now(UTC)
    sources = Topics.from_settings(settings).sources
    return await periods.watermark(scope, {topic: settings.partitions for topic in sources})


async def close_periods(settings: WorkerSettings, periods: Periods, scope: str) -> int:
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
class WorkerParts:
    """What the agent and the timers of one worker share."""

    settings: WorkerSettings
    topics: Topics
    redis: Redis
    store: Store
    periods: Periods
    ingest: Ingest
    cluster_id: str
    worker_id: str


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
    )
    parts = WorkerParts(
        settings,
        topics,
        redis,
        store,
        Periods(redis, settings.key_prefix),
        Ingest(settings, topics, store, dlq, metrics),
        cluster_id,
        worker_id(),
    )
    _position_partitions(app, parts, security)
    _ingest_agent(app, parts)
    _heartbeat(app, parts)
    _clock_timers(app, parts)
    _evaluator(app, parts)
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


def _position_partitions(app: faust.App, parts: WorkerParts, security: KafkaSecurity) -> None:
    """Make Faust start each source partition where the store is, not where Kafka says."""
    settings, ingest, sources = parts.settings, parts.ingest, set(parts.topics.sources)
    assert settings.kafka_bootstrap is not None
    bootstrap = settings.kafka_bootstrap
    installed = False

    async def earliest(tps: Sequence[TP]) -> dict[TP, int]:
        found = await app.consumer.earliest_offsets(*(FaustTP(t, p) for t, p in tps))
        return {(tp.topic, tp.partition): int(offset) for tp, offset in found.items()}

    async def seek(tp: TP, offset: int) -> None:
        # seek_wait runs in the consumer's own thread; Faust's plain seek touches the
        # aiokafka consumer from this one and can race its fetcher
        await app.consumer.seek_wait({FaustTP(*tp): offset})

    ingest.seek, ingest.earliest = seek, earliest

    @app.on_partitions_assigned.connect
    async def install(sender: Any, /, *args: Any, **kwargs: Any) -> None:
        # Faust seeks to Kafka's committed offsets once an assignment is ready, and on a
        # few other occasions; every one of them goes through seek_to_committed.
        nonlocal installed
        if installed:
            return
        consumer: Any = app.consumer  # the aiokafka-backed consumer; its type omits seeks
        committed_seek = consumer.seek_to_committed

        async def seek_to_store() -> dict[Any, int]:
            committed = dict(await committed_seek())
            tps = [(tp.topic, tp.partition) for tp in consumer.assignment() if tp.topic in sources]
            if not tps:
                return committed
            floors = await earliest(tps)
            positions = await wait_for_store(
                lambda: store_positions(parts.store, bootstrap, tps, floors, security)
            )
            await consumer.seek_wait({FaustTP(*tp): o for tp, o in positions.items()})
            ingest.positioned(positions, floors)
            moved = {
                f"{t}|{p}": o
                for (t, p), o in positions.items()
                if committed.get(FaustTP(t, p)) not in (None, o)
            }
            if moved:
                logger.info("reading from the store's offsets, not Kafka's", extra={"moved": moved})
            committed.update({FaustTP(*tp): o for tp, o in positions.items()})
            return committed

        consumer.seek_to_committed = seek_to_store
        installed = True


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


def _heartbeat(app: faust.App, parts: WorkerParts) -> None:
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


def _clock_timers(app: faust.App, parts: WorkerParts) -> None:
    """The leader's periodic work: closing periods and refitting BG/NBD."""
    settings, periods = parts.settings, parts.periods

    counters = parts.ingest.counters

    @app.timer(interval=settings.close_every_seconds, on_leader=True)  # type: ignore[untyped-decorator]
    @surviving("closing periods", counters)
    async def close() -> None:
        written = await close_periods(settings, periods, parts.cluster_id)
        if written:
            logger.info("periods closed", extra={"rows": written})

    # Checked often, done rarely: a fresh worker (or a new leader) fits soon after it
    # starts instead of a whole interval later.
    @app.timer(interval=min(10.0, settings.refit_every_seconds), on_leader=True)  # type: ignore[untyped-decorator]
    @surviving("BG/NBD refit", counters)
    async def refit_model() -> None:
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
            logger.info("BG/NBD refitted", extra=model.as_dict())


def _evaluator(app: faust.App, parts: WorkerParts) -> None:
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
    @surviving("evaluating customers", parts.ingest.counters)
    async def evaluate_due() -> None:
        clock = await period_clock(settings, parts.periods, parts.cluster_id)
        if clock is None:
            return
        # a bounded share per tick: evaluation shares the worker's core with ingestion
        await evaluator.run_once(clock, settings.evaluate_batch)
