"""One scrape's reading: everything the exporter reports, read from Redis (and the
broker's end offsets, for the lag) at once, into a :class:`Snapshot`."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any, cast

from aiokafka import AIOKafkaConsumer, TopicPartition
from redis.asyncio import Redis

from contract.events import ATTRIBUTES, MICROS
from processors.metrics import Cohort, PeriodRow
from processors.windows import PERIODS, Period, period_start
from retention.config import Settings
from retention.metric_families import COHORT_MONTHS, Snapshot, Window
from retention.stalls import Progress, parse_heartbeat, stalled_workers
from retention.status import STALE_HEARTBEATS
from store.evaluations import due_backlog, evaluation_totals
from store.models import fit_age_seconds
from store.outcomes import kept_outcomes
from store.periods import Periods
from store.store import Store
from streams.kafka_security import PLAINTEXT, KafkaSecurity
from streams.topics import Topics, cluster_id

logger = logging.getLogger(__name__)


class BrokerOffsets:
    """End offsets from one long-lived consumer, instead of a new client per scrape."""

    def __init__(self, bootstrap: str, timeout: float, security: KafkaSecurity = PLAINTEXT) -> None:
        self.bootstrap = bootstrap
        self.security = security
        self.timeout = timeout
        self.cluster: str | None = None
        self._consumer: AIOKafkaConsumer | None = None
        self._lock = asyncio.Lock()

    async def _start(self) -> AIOKafkaConsumer:
        if self.cluster is None:
            self.cluster = await cluster_id(self.bootstrap, self.security)
        if self._consumer is None:
            consumer = AIOKafkaConsumer(
                bootstrap_servers=self.bootstrap,
                enable_auto_commit=False,
                **self.security.client_kwargs(),
            )
            await consumer.start()
            self._consumer = consumer
        return self._consumer

    async def end_offsets(self, topics: tuple[str, ...]) -> dict[tuple[str, int], int]:
        async with self._lock:
            try:
                return await asyncio.wait_for(self._ends(topics), self.timeout)
            except Exception:
                await self.close()  # a fresh client next time, after a broker restart
                raise

    async def _ends(self, topics: tuple[str, ...]) -> dict[tuple[str, int], int]:
        consumer = await self._start()

        def partitions() -> list[TopicPartition]:
            return [
                TopicPartition(t, p) for t in topics for p in consumer.partitions_for_topic(t) or ()
            ]

        found = partitions()
        if len(found) < len(topics):
            await consumer.topics()  # topics created after start: refresh metadata
            found = partitions()
        ends = cast(dict[TopicPartition, int], await consumer.end_offsets(found))
        return {(tp.topic, tp.partition): end for tp, end in ends.items()}

    async def close(self) -> None:
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            with contextlib.suppress(Exception):
                await consumer.stop()


def lag_per_topic(
    ends: dict[tuple[str, int], int], applied: dict[tuple[str, int], int]
) -> dict[str, int]:
    """Per topic, the sum over partitions of end offset minus next offset to apply."""
    lag: dict[str, int] = {}
    for (topic, partition), end in ends.items():
        done = applied.get((topic, partition), -1) + 1
        lag[topic] = lag.get(topic, 0) + max(0, end - done)
    return lag


async def _closed_rows(
    periods: Periods, period: Period, churn_days: int, now: datetime
) -> dict[Window, PeriodRow]:
    """The rows of the two periods before the one holding ``now``, as their data stands
    (late data included), from the first event's period on. Their window unions are kept
    between scrapes, so a scrape ORs in only the days that changed."""
    span = await periods.span()
    if span is None:
        return {}
    first = period_start(span[0], period)
    starts: list[datetime] = []
    start = period_start(now, period)
    while len(starts) < 2:
        start = period_start(start - timedelta(milliseconds=1), period)
        if start < first:
            break
        starts.insert(0, start)
    rows = await periods.rows_of(period, starts, churn_days, cached=True)
    closed: tuple[Window, Window] = ("previous_closed", "last_closed")
    return dict(zip(closed[-len(rows) :], rows, strict=True)) if rows else {}


def _loads(value: str) -> dict[str, Any]:
    return cast(dict[str, Any], json.loads(value))


def _notification_counts(raw: dict[str, int]) -> dict[tuple[str, str], int]:
    """``outcome|channel`` fields as (channel, outcome) pairs."""
    out: dict[tuple[str, str], int] = {}
    for name, n in raw.items():
        outcome, sep, channel = name.partition("|")
        if sep:
            out[(channel, outcome)] = n
    return out


#: How often the exporter reads the recent cohorts' revenue again: it sums a year of daily
#: revenue hashes, far more than the counts cost, and moves slowly.
COHORT_REVENUE_EVERY_SECONDS = 300.0
_cohort_revenue: dict[str, tuple[float, dict[str, list[int]]]] = {}


async def _recent_cohorts(periods: Periods, now: datetime, limit: int) -> dict[str, Cohort]:
    """The last ``limit`` monthly cohorts: the cost stays bounded as history grows. Their
    revenue is read every :data:`COHORT_REVENUE_EVERY_SECONDS` at most, and again as soon
    as the months it covers no longer match (a new month, a new cohort)."""
    counts = await periods.cohorts("month", now, last=limit, revenue=False)
    read_at, money = _cohort_revenue.get(periods.prefix, (0.0, {}))
    stale = time.monotonic() - read_at > COHORT_REVENUE_EVERY_SECONDS
    if stale or any(len(money.get(k, ())) != len(c.active) for k, c in counts.items()):
        fresh = await periods.cohorts("month", now, last=limit)
        money = {k: c.revenue_micros or [] for k, c in fresh.items()}
        _cohort_revenue[periods.prefix] = (time.monotonic(), money)
    return {k: replace(c, revenue_micros=money.get(k)) for k, c in counts.items()}


#: How often the exporter counts the monthly breakdowns again: their sales come from every
#: customer's day of the two months (store/period_counts.lua), far more than the totals.
BREAKDOWN_EVERY_SECONDS = 300.0
Breakdowns = dict[tuple[str, str, Window], PeriodRow]


@dataclass
class _Counted:
    """The last breakdowns counted for a store, and the count under way."""

    at: float = 0.0
    month: datetime | None = None
    rows: Breakdowns | None = None
    task: asyncio.Task[Breakdowns] | None = None


_breakdowns: dict[str, _Counted] = {}


async def _monthly_breakdowns(
    periods: Periods, now: datetime, churn_days: int, top: int
) -> Breakdowns:
    """The current and the last closed month's rows per value of each customer attribute:
    its ``top`` values by customers, and ``other`` for every other customer.

    Counted at most every :data:`BREAKDOWN_EVERY_SECONDS`, and again when a month begins,
    in a task of its own: a scrape that finds the count under way, or too old, serves the
    last one and does not wait, so that a large store's count never holds a scrape past
    its timeout. Only the first count is waited for (shielded: a scrape that times out
    leaves it running, and the next one finds it done)."""
    month = period_start(now, "month")
    kept = _breakdowns.setdefault(periods.prefix, _Counted())
    if kept.task is not None and kept.task.get_loop() is not asyncio.get_running_loop():
        kept.task = None  # left by a loop that has ended (a reader that ran once)
    if kept.task is not None and kept.task.done():
        task, kept.task = kept.task, None
        error = "cancelled" if task.cancelled() else task.exception()
        if error is None:
            kept.at, kept.rows = time.monotonic(), task.result()
        else:
            logger.warning("breakdowns not counted", extra={"error": repr(error)})
    fresh = time.monotonic() - kept.at < BREAKDOWN_EVERY_SECONDS and kept.month == month
    if kept.rows is not None and fresh:
        return kept.rows
    if kept.task is None:
        kept.month = month
        kept.task = asyncio.ensure_future(_count_breakdowns(periods, month, churn_days, top))
    if kept.rows is not None:
        return kept.rows
    rows = await asyncio.shield(kept.task)
    kept.task, kept.at, kept.rows = None, time.monotonic(), rows
    return rows


async def _count_breakdowns(
    periods: Periods, month: datetime, churn_days: int, top: int
) -> Breakdowns:
    span = await periods.span()
    if span is None:
        return {}
    first = period_start(span[0], "month")
    previous = period_start(month - timedelta(days=1), "month")
    candidates: tuple[tuple[Window, datetime], ...] = (
        ("last_closed", previous),
        ("current", month),
    )
    months = [(window, start) for window, start in candidates if start >= first]
    starts = [start for _, start in months]
    out: Breakdowns = {}
    for attribute in ATTRIBUTES:
        by = await periods.breakdown(attribute, top)
        if not by.values:
            continue
        _, parts = await periods.breakdown_of("month", starts, churn_days, by)
        for value, rows in parts.items():
            for (window, _), row in zip(months, rows, strict=True):
                out[(attribute, "other" if value is None else value, window)] = row
    return out


async def read_snapshot(
    settings: Settings,
    redis: Redis,
    broker: BrokerOffsets | None,
    now: datetime,
    progress: Progress | None = None,
) -> Snapshot:
    """Read one scrape's numbers. Redis errors propagate; a broker error only drops lag.

    ``progress`` remembers workers' applied counts between reads, for heartbeats without
    ``last_applied_at`` (see :mod:`retention.stalls`).
    """
    started = time.monotonic()
    prefix = settings.key_prefix
    topics = Topics.from_settings(settings).sources
    periods = Periods(redis, prefix)
    ends: dict[tuple[str, int], int] | None = None
    if broker is not None:
        try:
            ends = await broker.end_offsets(topics)
        except Exception as exc:
            logger.warning("broker offsets unavailable", extra={"error": repr(exc)})
    scope = broker.cluster if broker is not None and broker.cluster else "default"
    store = Store(redis, prefix, settings.activity_kinds, offsets_scope=scope)

    await periods.homes()  # first: periods are cut in the store's calendar
    rows: dict[tuple[Period, Window], PeriodRow] = {}
    for period in PERIODS:
        current = await periods.row(
            period, period_start(now, period), settings.churn_after_days, cached=True
        )
        rows[(period, "current")] = current
        for window, row in (
            await _closed_rows(periods, period, settings.churn_after_days, now)
        ).items():
            rows[(period, window)] = row

    watermark = await periods.watermark(scope, dict.fromkeys(topics, settings.partitions))
    last_event = await periods.last_event()
    notify = await store.counters("notify:stats")
    alive = await store.workers(STALE_HEARTBEATS * settings.worker_heartbeat_seconds)
    beats = [parse_heartbeat(worker, info) for worker, info in alive.items()]
    applied = await store.applied_offsets()
    stalled = None
    if ends is not None:
        progress = progress or Progress()
        progress.keep_only(alive)
        stalled = stalled_workers(
            beats, ends, applied, now.timestamp(), settings.worker_stalled_after_seconds, progress
        )
    totals = await evaluation_totals(store)
    waiting, wait_seconds = await due_backlog(store, int(now.timestamp() * 1000))
    fit_age = await fit_age_seconds(store)
    return Snapshot(
        tracked_customers=await store.customer_count(),
        topics=topics,
        stats=await store.stats(),
        workers_alive=len(alive),
        lifecycle=totals.lifecycle,
        active={p: await periods.active(p, now) for p in PERIODS},
        rows=rows,
        cohorts=await _recent_cohorts(periods, now, COHORT_MONTHS),
        at_risk=totals.at_risk,
        risk_bands=totals.bands,
        alert_outcomes={key: n for key, n in (await kept_outcomes(store)).items()},
        high_value_at_risk=totals.high_value_at_risk,
        predicted_cltv=totals.predicted_cltv_micros / MICROS,
        cltv_at_risk={r: n / MICROS for r, n in totals.cltv_at_risk_micros.items() if n},
        notifications=_notification_counts(notify),
        surveys=await store.survey_totals(),
        responses=await store.response_histogram(),
        lag=None if ends is None else lag_per_topic(ends, applied),
        watermark_delay_seconds=None if watermark is None else (now - watermark).total_seconds(),
        last_event_age_seconds=None if last_event is None else (now - last_event).total_seconds(),
        collect_seconds=time.monotonic() - started,
        worker_last_applied={
            b.worker: b.last_applied_at for b in beats if b.last_applied_at is not None
        },
        workers_stalled=None if stalled is None else len(stalled),
        evaluation_waiting=waiting,
        evaluation_wait_seconds=wait_seconds,
        ingest=await store.counters("ingest:stats"),
        redis_memory=await store.memory(),
        attributes=await store.attribute_customers(),
        attribute_top=settings.attribute_top,
        breakdowns=await _monthly_breakdowns(
            periods, now, settings.churn_after_days, settings.attribute_top
        ),
        corrupt_customers=len(await store.corrupt_customers()),
        # to the millisecond: the age is read against the clock, the time itself is stored
        last_refit_at=None if fit_age is None else round(time.time() - fit_age, 3),
    )
