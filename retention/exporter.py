"""Prometheus exposition: business gauges read from Redis at scrape time, worker metrics.

Two kinds of numbers, two places:

- :class:`RetentionCollector` runs in ONE exporter process (``retention metrics-server``).
  Each scrape reads Redis once into a :class:`Snapshot` and turns it into metric families
  (:func:`families`, pure). Cluster-wide counts live in Redis already, so summing them over
  workers would count them several times; one reader reports them once.
- :class:`WorkerMetrics` lives in each worker process: what only that process can measure
  (batch latency and size, Redis errors, its own applied and rejected messages, the time
  of its last applied batch), exposed by :func:`serve_worker_metrics`.

Both listen on 127.0.0.1 unless told otherwise and take the same optional scrape
authentication (:mod:`retention.metrics_http`). A scrape of the exporter costs Redis some
work, so its result is reused for ``metrics_cache_seconds``: a storm of scrapes reads Redis
once per interval, not once per request.

Definitions of the period numbers are those of docs/metrics.md ("Activity and churn"). Labels
are closed sets (period, window, state, channel, outcome, topic, reason, cohort offset);
no label ever holds a customer id, so the series count does not grow with customers.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import signal
import threading
import time
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import FrameType
from typing import Any, Literal, TypeVar, cast
from wsgiref.simple_server import WSGIServer

from aiokafka import AIOKafkaConsumer, TopicPartition
from prometheus_client import CollectorRegistry, make_wsgi_app
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from redis.asyncio import Redis

from processors.lifecycle import STATUSES
from processors.metrics import Cohort, PeriodRow
from processors.windows import PERIODS, Period, period_start
from retention import logs
from retention.config import Settings
from retention.ingest_rules import ENDPOINTS as INGEST_ENDPOINTS
from retention.ingest_rules import STATUSES as INGEST_STATUSES
from retention.metrics_http import ScrapeAuth, guarded, serve
from retention.services import resolve
from retention.stalls import Progress, parse_heartbeat, stalled_workers
from retention.status import STALE_HEARTBEATS
from store.periods import Periods
from store.store import Stats, Store
from streams.events import EVENT_TYPES, MICROS, REJECT_REASONS
from streams.kafka_security import PLAINTEXT, KafkaSecurity
from streams.topics import Topics, cluster_id
from streams.worker_metrics import WorkerMetrics

logger = logging.getLogger(__name__)

EXPORTER_PORT = 9465
WORKER_METRICS_PORT = 9464
#: Loopback unless told otherwise: the numbers are the business's, and a scrape costs Redis.
DEFAULT_HOST = "127.0.0.1"

Window = Literal["current", "last_closed", "previous_closed"]
#: ``current`` is the open period holding now; ``last_closed`` the newest row the leader
#: wrote, ``previous_closed`` the one before it, so a spike is one comparison in PromQL.
WINDOWS: tuple[Window, ...] = ("current", "last_closed", "previous_closed")
CHANNELS = ("webhook", "slack", "email")
OUTCOMES = ("sent", "failed", "suppressed")
#: Monthly cohorts exported for the cohort table: at most 12 * 13 / 2 = 78 cells.
COHORT_MONTHS = 12


T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Everything one scrape reports, read from Redis (and Kafka for the lag) at once."""

    tracked_customers: int
    topics: tuple[str, ...]
    stats: Stats
    workers_alive: int
    lifecycle: dict[str, int] = field(default_factory=dict)
    active: dict[Period, int] = field(default_factory=dict)
    rows: dict[tuple[Period, Window], PeriodRow] = field(default_factory=dict)
    cohorts: dict[str, Cohort] = field(default_factory=dict)
    at_risk: dict[str, int] = field(default_factory=dict)
    high_value_at_risk: int = 0
    #: predicted CLTV summed over evaluated customers, and CLTV x risk score summed over
    #: at-risk customers by reason (the evaluator keeps both as it goes)
    predicted_cltv: float = 0.0
    cltv_at_risk: dict[str, float] = field(default_factory=dict)
    notifications: dict[tuple[str, str], int] = field(default_factory=dict)
    lag: dict[str, int] | None = None
    surveys: dict[str, int] = field(default_factory=dict)
    responses: tuple[list[tuple[float, int]], int, float] = ([], 0, 0.0)
    watermark_delay_seconds: float | None = None
    last_event_age_seconds: float | None = None
    collect_seconds: float = 0.0
    #: live workers' last applied batch (unix s), for those whose heartbeat says it
    worker_last_applied: dict[str, float] = field(default_factory=dict)
    #: live workers with lag and no progress for a while; None when the lag is unknown
    workers_stalled: int | None = None
    #: the HTTP ingest servers' counters (``request|endpoint|status``, ``accepted|type``,
    #: ``rejected|reason``), summed over servers in Redis
    ingest: dict[str, int] = field(default_factory=dict)


# --- pure: snapshot -> metric families -------------------------------------------------


def _gauge(name: str, doc: str, labels: tuple[str, ...] = ()) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, labels=list(labels))


def _customer_families(snap: Snapshot) -> Iterator[Metric]:
    states = _gauge("retention_customers", "Customers by lifecycle state.", ("state",))
    for state in STATUSES:
        states.add_metric([state], snap.lifecycle.get(state, 0))
    yield states
    tracked = _gauge("retention_tracked_customers", "Customers the tracker has ever seen.")
    tracked.add_metric([], snap.tracked_customers)
    yield tracked
    active = _gauge(
        "retention_active_customers",
        "Distinct customers with activity in the period holding now (DAU, WAU, MAU).",
        ("period",),
    )
    for period in PERIODS:
        active.add_metric([period], snap.active.get(period, 0))
    yield active


#: (metric name, help, PeriodRow attribute); a null value (divisor 0) is left out.
_ROW_METRICS: tuple[tuple[str, str, str], ...] = (
    ("retention_crr_ratio", "Customer retention rate (|E| - |N|) / |S|.", "crr"),
    ("retention_churn_ratio", "Churn rate |S \\ E| / |S|.", "churn_rate"),
    ("retention_period_start_customers", "Customers active at the start (S).", "start_customers"),
    ("retention_period_end_customers", "Customers active at the period end (E).", "end_customers"),
    ("retention_new_customers", "New customers still active at the end (N).", "new_customers"),
    ("retention_lost_customers", "Customers active at the start, not the end.", "lost_customers"),
    (
        "retention_reactivated_customers",
        "Customers active at the end, neither at the start nor new.",
        "reactivated_customers",
    ),
    ("retention_period_orders", "Placed orders in the period.", "orders"),
    ("retention_period_revenue", "Placed minus refunded amounts in the period.", "revenue"),
    ("retention_average_order_value", "Placed amount per placed order.", "aov"),
    ("retention_purchase_frequency", "Placed orders per distinct buyer.", "purchase_frequency"),
    (
        "retention_repeat_customer_ratio",
        "Share of buyers with two or more orders in the period.",
        "repeat_customer_rate",
    ),
)  # fmt: skip


def _period_families(snap: Snapshot) -> Iterator[Metric]:
    for name, doc, attr in _ROW_METRICS:
        family = _gauge(name, doc, ("period", "window"))
        for (period, window), row in sorted(snap.rows.items()):
            value = getattr(row, attr)
            if value is not None:
                family.add_metric([period, window], float(value))
        yield family


def _cohort_families(snap: Snapshot) -> Iterator[Metric]:
    labels = ("period", "cohort", "offset")
    active = _gauge(
        "retention_cohort_active_customers",
        f"Customers of a monthly cohort active k months later (last {COHORT_MONTHS} cohorts).",
        labels,
    )
    ratio = _gauge(
        "retention_cohort_retention_ratio", "Cohort active customers over cohort size.", labels
    )
    for cohort, cells in sorted(snap.cohorts.items()):
        for offset, n in enumerate(cells.active):
            key = ["month", cohort[:7], str(offset)]
            active.add_metric(key, n)
            ratio.add_metric(key, n / cells.size)
    yield active
    yield ratio


def _risk_families(snap: Snapshot) -> Iterator[Metric]:
    reasons = _gauge(
        "retention_at_risk_customers", "At-risk customers by risk reason.", ("reason",)
    )
    for reason, n in sorted(snap.at_risk.items()):
        reasons.add_metric([reason], n)
    yield reasons
    high = _gauge("retention_high_value_at_risk_customers", "High-value customers at risk.")
    high.add_metric([], snap.high_value_at_risk)
    yield high
    cltv = _gauge(
        "retention_predicted_cltv",
        "Predicted customer lifetime value summed over customers (reporting currency).",
    )
    cltv.add_metric([], snap.predicted_cltv)
    yield cltv
    exposed = _gauge(
        "retention_cltv_at_risk",
        "Predicted CLTV times risk score, summed over at-risk customers by risk reason "
        "(a customer counts under each of its reasons).",
        ("reason",),
    )
    for reason, amount in sorted(snap.cltv_at_risk.items()):
        exposed.add_metric([reason], amount)
    yield exposed
    sent = CounterMetricFamily(
        "retention_notifications",
        "Customer notifications by channel and outcome.",
        labels=["channel", "outcome"],
    )
    grid = {(c, o): 0 for c in CHANNELS for o in OUTCOMES} | snap.notifications
    for (channel, outcome), n in sorted(grid.items()):
        sent.add_metric([channel, outcome], n)
    yield sent


def _service_families(snap: Snapshot) -> Iterator[Metric]:
    """NPS, CSAT, CES over customers' latest scores, and first-response times."""
    totals = snap.surveys
    responses = _gauge(
        "retention_survey_responses", "Customers with a latest score, by survey.", ("survey",)
    )
    for survey in ("nps", "csat", "ces"):
        responses.add_metric([survey], totals.get(f"{survey}|n", 0))
    yield responses
    n = totals.get("nps|n", 0)
    if n:
        nps = _gauge("retention_nps_score", "Net promoter score: % promoters - % detractors.")
        promoters, detractors = totals.get("nps|promoters", 0), totals.get("nps|detractors", 0)
        nps.add_metric([], 100.0 * (promoters - detractors) / n)
        yield nps
    for survey, name, doc in (
        ("csat", "retention_csat_average", "Mean of customers' latest CSAT (1-5)."),
        ("ces", "retention_ces_average", "Mean of customers' latest CES (1-7)."),
    ):
        if totals.get(f"{survey}|n", 0):
            family = _gauge(name, doc)
            family.add_metric([], totals[f"{survey}|sum"] / totals[f"{survey}|n"])
            yield family
    buckets, _count, total = snap.responses
    histogram = HistogramMetricFamily(
        "retention_first_response_seconds",
        "Time from a ticket's opening to the first agent reply.",
    )
    histogram.add_metric(
        [],
        buckets=[("+Inf" if b == float("inf") else str(b), n) for b, n in buckets] or [("+Inf", 0)],
        sum_value=total,
    )
    yield histogram


def _pipeline_families(snap: Snapshot) -> Iterator[Metric]:
    processed = CounterMetricFamily(
        "retention_events_processed", "Events accepted and applied.", labels=["topic"]
    )
    duplicate = CounterMetricFamily(
        "retention_events_duplicate", "Events dropped as duplicates.", labels=["topic"]
    )
    for topic in sorted(set(snap.topics) | set(snap.stats.accepted)):
        processed.add_metric([topic], snap.stats.accepted.get(topic, 0))
    for topic in sorted(set(snap.topics) | set(snap.stats.duplicates)):
        duplicate.add_metric([topic], snap.stats.duplicates.get(topic, 0))
    rejected = CounterMetricFamily(
        "retention_events_rejected",
        "Events sent to the dead-letter topic, by reason.",
        labels=["topic", "reason"],
    )
    # every reason of every source topic from 0: a first rejection is then an increase
    # that rate() sees, not a series appearing at 1
    grid = {(t, r): 0 for t in snap.topics for r in REJECT_REASONS} | snap.stats.rejected
    for (topic, reason), n in sorted(grid.items()):
        rejected.add_metric([topic, reason], n)
    yield from (processed, duplicate, rejected)

    lag = _gauge(
        "retention_consumer_lag_messages",
        "Broker end offsets minus offsets the store applied.",
        ("topic",),
    )
    for topic, n in sorted((snap.lag or {}).items()):
        lag.add_metric([topic], n)
    yield lag
    for name, doc, value in (
        (
            "retention_watermark_delay_seconds",
            "Now minus the event-time watermark (oldest of the partitions' newest events).",
            snap.watermark_delay_seconds,
        ),
        (
            "retention_last_event_age_seconds",
            "Now minus the newest event time applied.",
            snap.last_event_age_seconds,
        ),
    ):
        family = _gauge(name, doc)
        if value is not None:
            family.add_metric([], value)
        yield family
    workers = _gauge("retention_workers_alive", "Workers with a recent heartbeat.")
    workers.add_metric([], snap.workers_alive)
    yield workers
    last = _gauge(
        "retention_worker_last_applied_timestamp_seconds",
        "Unix time of a live worker's last applied batch, from its heartbeat.",
        ("worker",),
    )
    for worker, at in sorted(snap.worker_last_applied.items()):
        last.add_metric([worker], at)
    yield last
    stalled = _gauge(
        "retention_workers_stalled",
        "Live workers whose partitions have lag but that applied nothing for a while.",
    )
    if snap.workers_stalled is not None:
        stalled.add_metric([], snap.workers_stalled)
    yield stalled


def _ingest_families(snap: Snapshot) -> Iterator[Metric]:
    """HTTP ingest, every known label from 0 so that a first increase is seen by rate()."""
    requests = CounterMetricFamily(
        "retention_ingest_requests",
        "HTTP ingest requests by endpoint and response status.",
        labels=["endpoint", "status"],
    )
    accepted = CounterMetricFamily(
        "retention_ingest_events_accepted",
        "Events taken over HTTP and acknowledged by the broker, by type.",
        labels=["type"],
    )
    rejected = CounterMetricFamily(
        "retention_ingest_events_rejected",
        "Events refused over HTTP (told to the client, not sent), by reason.",
        labels=["reason"],
    )
    grid = {f"request|{e}|{s}": 0 for e in INGEST_ENDPOINTS for s in INGEST_STATUSES}
    grid |= {f"accepted|{t}": 0 for t in EVENT_TYPES}
    grid |= {f"rejected|{r}": 0 for r in REJECT_REASONS}
    for name, n in sorted((grid | snap.ingest).items()):
        kind, _, rest = name.partition("|")
        if kind == "request" and "|" in rest:
            requests.add_metric(rest.split("|", 1), n)
        elif kind == "accepted":
            accepted.add_metric([rest], n)
        elif kind == "rejected":
            rejected.add_metric([rest], n)
    yield from (requests, accepted, rejected)


def _exporter_families(redis_up: bool, kafka_up: bool, seconds: float) -> Iterator[Metric]:
    for name, doc, value in (
        ("retention_exporter_redis_up", "Whether the last scrape read Redis.", redis_up),
        ("retention_exporter_kafka_up", "Whether the last scrape read broker offsets.", kafka_up),
        ("retention_exporter_collect_duration_seconds", "Time the last scrape took.", seconds),
    ):
        family = _gauge(name, doc)
        family.add_metric([], float(value))
        yield family


def families(snap: Snapshot) -> list[Metric]:
    """Every metric family of one scrape; a pure function of the snapshot."""
    return [
        *_customer_families(snap),
        *_period_families(snap),
        *_cohort_families(snap),
        *_risk_families(snap),
        *_service_families(snap),
        *_pipeline_families(snap),
        *_ingest_families(snap),
        *_exporter_families(True, snap.lag is not None, snap.collect_seconds),
    ]


# --- I/O: Redis and Kafka -> snapshot ---------------------------------------------------


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


async def _int_hash(redis: Redis, key: str) -> dict[str, int]:
    raw = cast(dict[str, str], await redis.hgetall(key))
    out: dict[str, int] = {}
    for name, value in raw.items():
        with contextlib.suppress(ValueError):
            out[name] = int(float(value))
    return out


async def _closed_rows(
    periods: Periods, period: Period, churn_days: int, now: datetime
) -> dict[Window, PeriodRow]:
    """The two newest closed rows; only their keys are listed, two values read."""
    rows = await periods.latest_closed(period, churn_days, 2, now)
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


async def _recent_cohorts(periods: Periods, now: datetime, limit: int) -> dict[str, Cohort]:
    """The last ``limit`` monthly cohorts: the cost stays bounded as history grows."""
    return await periods.cohorts("month", now, last=limit)


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

    rows: dict[tuple[Period, Window], PeriodRow] = {}
    for period in PERIODS:
        current = await periods.row(period, period_start(now, period), settings.churn_after_days)
        rows[(period, "current")] = current
        for window, row in (
            await _closed_rows(periods, period, settings.churn_after_days, now)
        ).items():
            rows[(period, window)] = row

    watermark = await periods.watermark(scope, dict.fromkeys(topics, settings.partitions))
    last_event = await periods.last_event()
    notify = await _int_hash(redis, prefix + "notify:stats")
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
    high_value = cast(str | None, await redis.get(prefix + "risk:high_value"))
    cltv_total = cast(str | None, await redis.get(prefix + "cltv:total"))
    cltv_at_risk = await _int_hash(redis, prefix + "cltv:at_risk")
    return Snapshot(
        tracked_customers=await store.customer_count(),
        topics=topics,
        stats=await store.stats(),
        workers_alive=len(alive),
        lifecycle=await _int_hash(redis, prefix + "life:counts"),
        active={p: await periods.active(p, now) for p in PERIODS},
        rows=rows,
        cohorts=await _recent_cohorts(periods, now, COHORT_MONTHS),
        at_risk=await _int_hash(redis, prefix + "risk:reasons"),
        high_value_at_risk=int(float(high_value)) if high_value else 0,
        # kept in micros by the evaluator, so that its additions and take-backs are exact
        predicted_cltv=int(cltv_total) / MICROS if cltv_total else 0.0,
        cltv_at_risk={r: n / MICROS for r, n in cltv_at_risk.items() if n},
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
        ingest=await _int_hash(redis, prefix + "ingest:stats"),
    )


class _LoopThread:
    """An event loop of our own: prometheus_client calls ``collect`` from its HTTP
    threads, and the Redis and Kafka clients must stay on one loop between scrapes."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(
            target=self.loop.run_forever, name="retention-exporter-loop", daemon=True
        )
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


class RetentionCollector:
    """Reads Redis once per scrape and yields the business and pipeline gauges.

    A result is reused for ``cache_seconds`` (default: the settings'); concurrent scrapes
    wait for the one read in progress instead of starting their own.
    """

    def __init__(
        self, settings: Settings, timeout: float = 10.0, cache_seconds: float | None = None
    ) -> None:
        assert settings.redis_url, "the exporter needs REDIS_URL (or a running `retention up`)"
        self.settings = settings
        self.timeout = timeout
        self.cache_seconds = (
            settings.metrics_cache_seconds if cache_seconds is None else cache_seconds
        )
        self._progress = Progress()
        self._cache_lock = threading.Lock()
        self._cached: list[Metric] = []
        self._cached_at: float | None = None
        self._loop = _LoopThread()
        self._redis: Redis | None = None
        self._broker = (
            BrokerOffsets(settings.kafka_bootstrap, timeout / 2, settings.kafka_security())
            if settings.kafka_bootstrap
            else None
        )

    async def _read(self) -> Snapshot:
        if self._redis is None:
            self._redis = Redis.from_url(
                self.settings.redis_url or "", decode_responses=True, socket_timeout=self.timeout
            )
        return await read_snapshot(
            self.settings, self._redis, self._broker, datetime.now(UTC), self._progress
        )

    def collect(self) -> Iterator[Metric]:
        with self._cache_lock:
            now = time.monotonic()
            if self._cached_at is None or now - self._cached_at >= self.cache_seconds:
                self._cached = self._scrape()
                self._cached_at = time.monotonic()
            return iter(self._cached)

    def _scrape(self) -> list[Metric]:
        started = time.monotonic()
        try:
            snap = self._loop.run(self._read(), self.timeout)
        except Exception as exc:
            logger.warning("scrape failed", extra={"error": repr(exc)})
            return list(_exporter_families(False, False, time.monotonic() - started))
        return families(snap)

    async def _aclose(self) -> None:
        if self._broker is not None:
            await self._broker.close()
        if self._redis is not None:
            await self._redis.aclose()

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._loop.run(self._aclose(), self.timeout)
        self._loop.stop()


# --- per-worker process metrics ---------------------------------------------------------


def serve_worker_metrics(
    port: int,
    registry: CollectorRegistry,
    host: str = DEFAULT_HOST,
    auth: ScrapeAuth | None = None,
) -> tuple[WSGIServer, threading.Thread]:
    """Serve ``registry`` on ``host:port`` from a daemon thread; port 0 picks a free one.

    ``auth`` is the exporter's (:meth:`ScrapeAuth.from_settings`): one credential for
    every target of the tracker.
    """
    server, thread = serve(guarded(make_wsgi_app(registry), auth), host, port)
    logger.info(
        "worker metrics listening",
        extra={"host": host, "port": server.server_port, "auth": auth is not None},
    )
    return server, thread


def start_worker_metrics(settings: Settings) -> WorkerMetrics | None:
    """A worker's metrics as the settings ask: served on ``worker_metrics_host`` and
    ``worker_metrics_port`` with the scrape auth, or None when no port is set."""
    if settings.worker_metrics_port is None:
        return None
    registry = CollectorRegistry()
    metrics = WorkerMetrics(registry, Topics.from_settings(settings).sources)
    serve_worker_metrics(
        settings.worker_metrics_port,
        registry,
        settings.worker_metrics_host,
        ScrapeAuth.from_settings(settings),
    )
    return metrics


# --- the exporter process -----------------------------------------------------------------


@dataclass
class Exporter:
    server: WSGIServer
    thread: threading.Thread
    collector: RetentionCollector

    @property
    def port(self) -> int:
        return int(self.server.server_port)

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.collector.close()


def start_exporter(
    settings: Settings, host: str = DEFAULT_HOST, port: int = EXPORTER_PORT
) -> Exporter:
    auth = ScrapeAuth.from_settings(settings)  # a bad credential setting fails here, early
    registry = CollectorRegistry()
    collector = RetentionCollector(settings)
    registry.register(collector)
    server, thread = serve(guarded(make_wsgi_app(registry), auth), host, port)
    return Exporter(server, thread, collector)


def run_exporter(settings: Settings, host: str = DEFAULT_HOST, port: int = EXPORTER_PORT) -> int:
    """Serve ``/metrics`` until SIGINT or SIGTERM."""
    stopping = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stopping.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    exporter = start_exporter(settings, host, port)
    logger.info(
        "exporter listening",
        extra={
            "host": host,
            "port": exporter.port,
            "auth": ScrapeAuth.from_settings(settings) is not None,
            "cache_seconds": settings.metrics_cache_seconds,
        },
    )
    try:
        stopping.wait()
    finally:
        exporter.stop()
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m retention.exporter``: the same as ``retention metrics-server``."""
    parser = argparse.ArgumentParser(prog="retention-exporter", description=__doc__)
    parser.add_argument("--host", default=DEFAULT_HOST, help="bind address (compose: 0.0.0.0)")
    parser.add_argument("--port", type=int, default=EXPORTER_PORT)
    parser.add_argument("--log-level", default="warn", choices=["debug", "info", "warn", "error"])
    args = parser.parse_args(argv)
    logs.setup("WARNING" if args.log_level == "warn" else args.log_level.upper())
    return run_exporter(resolve(Settings()), args.host, args.port)


if __name__ == "__main__":
    raise SystemExit(main())
