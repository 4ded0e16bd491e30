"""The exporter's numbers as Prometheus metric families, built from one snapshot.

Pure: a :class:`Snapshot` in, families out, so the exporter's naming and labels are
tested without Redis (``tests/unit/test_exporter.py``). Definitions of the period numbers
are those of docs/metrics.md ("Activity and churn"); no label carries a customer id.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Literal, TypeVar

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from contract.events import EVENT_TYPES, MICROS, REJECT_REASONS
from processors.lifecycle import STATUSES
from processors.metrics import Cohort, PeriodRow
from processors.risk import BANDS
from processors.windows import PERIODS, Period
from retention.ingest_rules import ENDPOINTS as INGEST_ENDPOINTS
from retention.ingest_rules import STATUSES as INGEST_STATUSES
from store.store import Stats

Window = Literal["current", "last_closed", "previous_closed"]


#: ``current`` is the open period holding now; ``last_closed`` the period before it and
#: ``previous_closed`` the one before that, counted at each scrape from what the store holds
#: (late data included), so a spike is one comparison in PromQL.
WINDOWS: tuple[Window, ...] = ("current", "last_closed", "previous_closed")


CHANNELS = ("webhook", "slack", "email")


OUTCOMES = ("sent", "failed", "suppressed")


#: Monthly cohorts exported for the cohort table: at most 12 * 13 / 2 = 78 cells.
COHORT_MONTHS = 12


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
    #: evaluated customers by risk band
    risk_bands: dict[str, int] = field(default_factory=dict)
    #: alerts by (kind, band, outcome), as the leader counted them last
    alert_outcomes: dict[tuple[str, str, str], int] = field(default_factory=dict)
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
    #: customers waiting for an evaluation (changed, or with a recheck due), and how long
    #: the one waiting longest has waited
    evaluation_waiting: int = 0
    evaluation_wait_seconds: float = 0.0
    #: the HTTP ingest servers' counters (``request|endpoint|status``, ``accepted|type``,
    #: ``rejected|reason``), summed over servers in Redis
    ingest: dict[str, int] = field(default_factory=dict)
    #: per customer attribute (country, channel, shop), customers by latest value
    attributes: dict[str, dict[str, int]] = field(default_factory=dict)
    #: how many values of each attribute get their own label; the rest are ``other``
    attribute_top: int = 10
    #: monthly rows per (attribute, value, window): the top values of each attribute, and
    #: ``other`` for every other customer (another value, or none)
    breakdowns: dict[tuple[str, str, Window], PeriodRow] = field(default_factory=dict)
    #: per Redis node: used memory and the maxmemory limit (0: none), bytes
    redis_memory: dict[str, tuple[int, int]] = field(default_factory=dict)
    #: customers set aside because their stored state cannot be read
    corrupt_customers: int = 0
    #: unix time of the last successful refit of the models (``store/models.py``), None
    #: before the first
    last_refit_at: float | None = None


def _gauge(name: str, doc: str, labels: tuple[str, ...] = ()) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, labels=list(labels))


K = TypeVar("K", bound=str)


def _each(
    name: str, doc: str, label: str, values: Sequence[K], found: Mapping[K, float]
) -> GaugeMetricFamily:
    """A gauge with one series per value of ``label``, 0 where ``found`` has none."""
    family = _gauge(name, doc, (label,))
    for value in values:
        family.add_metric([value], found.get(value, 0))
    return family


def _scalar(name: str, doc: str, value: float | None) -> GaugeMetricFamily:
    """A gauge without labels; without a sample when the value is unknown."""
    family = _gauge(name, doc)
    if value is not None:
        family.add_metric([], value)
    return family


def _customer_families(snap: Snapshot) -> Iterator[Metric]:
    states = _gauge("retention_customers", "Customers by lifecycle state.", ("state",))
    for state in STATUSES:
        states.add_metric([state], snap.lifecycle.get(state, 0))
    yield states
    yield _scalar(
        "retention_tracked_customers",
        "Customers the tracker has ever seen.",
        snap.tracked_customers,
    )
    yield _scalar(
        "retention_corrupt_customers",
        "Customers set aside because their stored state cannot be read; their events wait "
        "in the dead-letter topic until `retention restore-customer`.",
        snap.corrupt_customers,
    )
    yield _each(
        "retention_active_customers",
        "Distinct customers with activity in the period holding now (DAU, WAU, MAU).",
        "period",
        PERIODS,
        snap.active,
    )


def _period_families(snap: Snapshot) -> Iterator[Metric]:
    for name, doc, attr in _ROW_METRICS:
        family = _gauge(name, doc, ("period", "window"))
        for (period, window), row in sorted(snap.rows.items()):
            value = getattr(row, attr)
            if value is not None:
                family.add_metric([period, window], float(value))
        yield family


#: (metric name, help, PeriodRow attribute) of the monthly breakdowns by customer attribute
_BREAKDOWN_METRICS: tuple[tuple[str, str, str], ...] = (
    ("retention_breakdown_churn_ratio", "Churn rate |S \\ E| / |S|", "churn_rate"),
    ("retention_breakdown_crr_ratio", "Customer retention rate (|E| - |N|) / |S|", "crr"),
    ("retention_breakdown_end_customers", "Customers active at the end (E)", "end_customers"),
    ("retention_breakdown_new_customers", "New customers active at the end (N)", "new_customers"),
    ("retention_breakdown_lost_customers", "Active at the start, not the end", "lost_customers"),
    ("retention_breakdown_orders", "Placed orders in the period", "orders"),
    ("retention_breakdown_revenue", "Placed minus refunded amounts in the period", "revenue"),
    (
        "retention_breakdown_repeat_customer_ratio",
        "Share of buyers with two or more orders in the period",
        "repeat_customer_rate",
    ),
)  # fmt: skip


def _breakdown_families(snap: Snapshot) -> Iterator[Metric]:
    for name, doc, attr in _BREAKDOWN_METRICS:
        family = _gauge(
            name,
            f"{doc}, of the month, for the customers whose latest country, channel or shop is "
            f"the value (the {snap.attribute_top} values with the most customers, every other "
            "customer as other).",
            ("attribute", "value", "window"),
        )
        for (attribute, value, window), row in sorted(snap.breakdowns.items()):
            number = getattr(row, attr)
            if number is not None:
                family.add_metric([attribute, value, window], float(number))
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
    revenue = _gauge(
        "retention_cohort_revenue",
        "Revenue of a monthly cohort's customers k months later, in the reporting currency "
        "(placed minus refunded).",
        labels,
    )
    kept = _gauge(
        "retention_cohort_revenue_retention_ratio",
        "Cohort revenue k months later over its first month's revenue (absent when that "
        "was 0 or less).",
        labels,
    )
    for cohort, cells in sorted(snap.cohorts.items()):
        for offset, n in enumerate(cells.active):
            key = ["month", cohort[:7], str(offset)]
            active.add_metric(key, n)
            ratio.add_metric(key, n / cells.size)
        money = cells.revenue_micros or []
        for offset, micros in enumerate(money):
            key = ["month", cohort[:7], str(offset)]
            revenue.add_metric(key, micros / MICROS)
            if money[0] > 0:
                kept.add_metric(key, micros / money[0])
    yield active
    yield ratio
    yield revenue
    yield kept


def top_values(counts: Mapping[str, int], top: int) -> dict[str, int]:
    """The ``top`` values with the most customers (ties by value), the rest summed as
    ``other``: a label set of bounded size, whatever shops send."""
    ranked = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    kept = dict(ranked[:top])
    rest = sum(n for _, n in ranked[top:])
    if rest:
        kept["other"] = kept.get("other", 0) + rest
    return kept


def _attribute_families(snap: Snapshot) -> Iterator[Metric]:
    family = _gauge(
        "retention_attribute_customers",
        f"Customers by their latest country, channel or shop (the {snap.attribute_top} "
        "values with the most customers per attribute, the rest as other).",
        ("attribute", "value"),
    )
    for name, counts in sorted(snap.attributes.items()):
        for value, n in sorted(top_values(counts, snap.attribute_top).items()):
            family.add_metric([name, value], n)
    yield family


def _risk_families(snap: Snapshot) -> Iterator[Metric]:
    reasons = _gauge(
        "retention_at_risk_customers", "At-risk customers by risk reason.", ("reason",)
    )
    for reason, n in sorted(snap.at_risk.items()):
        reasons.add_metric([reason], n)
    yield reasons
    yield _each(
        "retention_risk_band_customers",
        "Evaluated customers by the band of their risk score (low, medium, high).",
        "band",
        BANDS,
        snap.risk_bands,
    )
    outcomes = _gauge(
        "retention_alert_outcomes",
        "Alerts by kind, risk band and outcome: returned (the customer ordered within the "
        "outcome window after the alert), not_returned, pending.",
        ("kind", "band", "outcome"),
    )
    for (kind, alert_band, result), n in sorted(snap.alert_outcomes.items()):
        outcomes.add_metric([kind, alert_band or "none", result], n)
    yield outcomes
    yield _scalar(
        "retention_high_value_at_risk_customers",
        "High-value customers at risk.",
        snap.high_value_at_risk,
    )
    yield _scalar(
        "retention_predicted_cltv",
        "Predicted customer lifetime value summed over customers (reporting currency).",
        snap.predicted_cltv,
    )
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
    yield _scalar(
        "retention_watermark_delay_seconds",
        "Now minus the event-time watermark (oldest of the partitions' newest events).",
        snap.watermark_delay_seconds,
    )
    yield _scalar(
        "retention_last_event_age_seconds",
        "Now minus the newest event time applied.",
        snap.last_event_age_seconds,
    )
    yield _scalar("retention_workers_alive", "Workers with a recent heartbeat.", snap.workers_alive)
    last = _gauge(
        "retention_worker_last_applied_timestamp_seconds",
        "Unix time of a live worker's last applied batch, from its heartbeat.",
        ("worker",),
    )
    for worker, at in sorted(snap.worker_last_applied.items()):
        last.add_metric([worker], at)
    yield last
    yield _scalar(
        "retention_workers_stalled",
        "Live workers whose partitions have lag but that applied nothing for a while.",
        snap.workers_stalled,
    )
    yield _scalar(
        "retention_evaluation_waiting_customers",
        "Customers waiting for an evaluation: changed since their last one, or due a recheck.",
        snap.evaluation_waiting,
    )
    yield _scalar(
        "retention_evaluation_wait_seconds",
        "How long the customer waiting longest for an evaluation has waited.",
        snap.evaluation_wait_seconds,
    )


def _redis_families(snap: Snapshot) -> Iterator[Metric]:
    """Memory per Redis node, and the limit it may grow to (docs/guarantees.md, "Customer
    memory")."""
    used = _gauge("retention_redis_used_memory_bytes", "Memory a Redis node uses.", ("node",))
    limit = _gauge(
        "retention_redis_maxmemory_bytes",
        "A Redis node's maxmemory limit, 0 when it has none.",
        ("node",),
    )
    for node, (used_bytes, max_bytes) in sorted(snap.redis_memory.items()):
        used.add_metric([node], used_bytes)
        limit.add_metric([node], max_bytes)
    yield from (used, limit)


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


def _model_families(snap: Snapshot) -> Iterator[Metric]:
    yield _scalar(
        "retention_model_last_refit_timestamp_seconds",
        "Unix time of the last successful refit of the P(alive) and spend models.",
        snap.last_refit_at,
    )


def _period_start_families(snap: Snapshot) -> Iterator[Metric]:
    """When each window's period began: the current one's start is the moment the period
    before it closed, so an alert on a closed period can speak once per period."""
    family = _gauge(
        "retention_period_start_timestamp_seconds",
        "Unix time at which the period of a window began (UTC).",
        ("period", "window"),
    )
    for (period, window), row in sorted(snap.rows.items()):
        start = datetime.fromisoformat(row.period).replace(tzinfo=UTC)
        family.add_metric([period, window], start.timestamp())
    yield family


#: What the exporter reads: Redis always, the broker's end offsets when one is configured.
Source = Literal["redis", "kafka"]


def source_families(
    up: Mapping[Source, bool], last_success: Mapping[Source, float]
) -> Iterator[Metric]:
    """Per source read by the exporter: whether the latest read reached it, and when one
    last did (no sample before the first)."""
    reached = _gauge(
        "retention_exporter_source_up",
        "Whether the exporter's latest read reached the source; at 0 the other series are "
        "those of its last good read.",
        ("source",),
    )
    last = _gauge(
        "retention_exporter_source_last_success_timestamp_seconds",
        "Unix time of the exporter's last successful read of the source.",
        ("source",),
    )
    for source, ok in sorted(up.items()):
        reached.add_metric([source], float(ok))
        if source in last_success:
            last.add_metric([source], last_success[source])
    yield from (reached, last)


def exporter_families(redis_up: bool, kafka_up: bool, seconds: float) -> Iterator[Metric]:
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
        *_attribute_families(snap),
        *_breakdown_families(snap),
        *_risk_families(snap),
        *_service_families(snap),
        *_pipeline_families(snap),
        *_ingest_families(snap),
        *_redis_families(snap),
        *_model_families(snap),
        *_period_start_families(snap),
        *exporter_families(True, snap.lag is not None, snap.collect_seconds),
    ]


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
