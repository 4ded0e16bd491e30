"""The exporter's metric families from a snapshot: names, labels, cardinality.

Each test builds a fresh ``CollectorRegistry``; the snapshot stands in for one Redis read
(the collector over a real Redis is tested in tests/integration/test_ops.py).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import replace

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import Metric

from contract.events import REJECT_REASONS
from processors.lifecycle import STATUSES
from processors.metrics import Cohort, PeriodRow
from processors.windows import PERIODS
from retention.config import Settings
from retention.exporter import RetentionCollector, Served
from retention.metric_families import CHANNELS, OUTCOMES, WINDOWS, Snapshot, families
from retention.metrics_http import ScrapeAuth
from retention.snapshot import lag_per_topic
from store.store import Stats
from streams.worker_metrics import WorkerMetrics

TOPICS = ("orders", "logins", "support")
NAME = re.compile(r"^retention_[a-z][a-z0-9_]*$")
#: Gauge names end in a base unit or name what they count.
GAUGE_SUFFIXES = ("_customers", "_ratio", "_seconds", "_messages", "_up", "_alive", "_bytes")
GAUGE_NOUNS = {
    "retention_period_orders",
    "retention_period_revenue",
    "retention_breakdown_orders",
    "retention_breakdown_revenue",
    "retention_cohort_revenue",  # money per cohort and month since
    "retention_average_order_value",
    "retention_predicted_cltv",  # money, like revenue: no base unit
    "retention_cltv_at_risk",
    "retention_alert_outcomes",  # alerts, counted like orders
    "retention_purchase_frequency",
    "retention_survey_responses",
    "retention_nps_score",
    "retention_csat_average",
    "retention_ces_average",
    "retention_workers_stalled",
}


def row(customers: int) -> PeriodRow:
    start = customers
    return PeriodRow(
        "2024-03-01", start, start, 1, 2, 1, 0.9, 0.1, 30, 1200.5, 40.0, 1.5, 0.3, 1_200_500_000
    )


def snapshot(customers: int) -> Snapshot:
    """A snapshot of a tracker with ``customers`` customers, every optional part filled."""
    return Snapshot(
        tracked_customers=customers,
        topics=TOPICS,
        stats=Stats(
            accepted={t: customers * 3 for t in TOPICS},
            duplicates={"orders": customers // 10},
            rejected={("orders", "invalid_json"): 2, ("produce", "missing_field"): 1},
        ),
        workers_alive=2,
        lifecycle=dict.fromkeys(STATUSES, customers // 5),
        active={p: customers // 2 for p in PERIODS},
        rows={(p, w): row(customers) for p in PERIODS for w in WINDOWS},
        cohorts={
            "2024-01-01": Cohort(
                customers,
                [customers, customers // 2, customers // 3],
                [4_000_000, 5_000_000, -1_000_000],
            ),
            "2024-02-01": Cohort(customers, [customers, customers // 2], [0, 2_500_000]),
        },
        at_risk={"no_recent_order": customers // 7, "open_ticket": 3},
        high_value_at_risk=4,
        predicted_cltv=123_456.75,
        cltv_at_risk={"silence": 2_000.5, "low_p_alive": 750.25},
        notifications={("email", "sent"): 5},
        surveys={
            "nps|sum": 40,
            "nps|n": 5,
            "nps|promoters": 2,
            "nps|detractors": 1,
            "csat|sum": 18,
            "csat|n": 5,
            "ces|sum": 9,
            "ces|n": 3,
        },
        responses=([(300.0, 1), (3600.0, 3), (float("inf"), 4)], 4, 7200.0),
        lag={t: 10 for t in TOPICS},
        watermark_delay_seconds=12.5,
        last_event_age_seconds=3.0,
        worker_last_applied={"host-1": 1_700_000_000.25},
        workers_stalled=1,
        redis_memory={"10.0.0.1:6379": (customers * 300, 0), "10.0.0.2:6379": (900, 4096)},
        last_refit_at=1_700_000_100.5,
    )


class Fixed:
    """A collector that always reports one snapshot."""

    def __init__(self, snap: Snapshot) -> None:
        self.snap = snap

    def collect(self) -> Iterable[Metric]:
        return families(self.snap)


def registry_for(snap: Snapshot) -> CollectorRegistry:
    registry = CollectorRegistry()
    registry.register(Fixed(snap))
    return registry


def samples(registry: CollectorRegistry) -> list[tuple[str, dict[str, str]]]:
    return [(s.name, s.labels) for m in registry.collect() for s in m.samples]


def test_values_land_on_their_labels() -> None:
    registry = registry_for(snapshot(100))
    get = registry.get_sample_value
    assert get("retention_tracked_customers") == 100
    assert get("retention_customers", {"state": "at_risk"}) == 20
    assert get("retention_active_customers", {"period": "week"}) == 50
    assert get("retention_crr_ratio", {"period": "month", "window": "last_closed"}) == 0.9
    assert get("retention_churn_ratio", {"period": "day", "window": "current"}) == 0.1
    assert get("retention_period_revenue", {"period": "week", "window": "previous_closed"}) == (
        1200.5
    )
    assert get("retention_events_processed_total", {"topic": "orders"}) == 300
    assert get("retention_events_duplicate_total", {"topic": "logins"}) == 0
    assert (
        get("retention_events_rejected_total", {"topic": "orders", "reason": "invalid_json"}) == 2
    )
    assert get("retention_notifications_total", {"channel": "email", "outcome": "sent"}) == 5
    assert get("retention_notifications_total", {"channel": "slack", "outcome": "failed"}) == 0
    assert get("retention_at_risk_customers", {"reason": "open_ticket"}) == 3
    assert get("retention_high_value_at_risk_customers") == 4
    assert get("retention_predicted_cltv") == 123_456.75
    assert get("retention_cltv_at_risk", {"reason": "silence"}) == 2_000.5
    assert get("retention_cltv_at_risk", {"reason": "low_p_alive"}) == 750.25
    assert get("retention_consumer_lag_messages", {"topic": "support"}) == 10
    assert get("retention_watermark_delay_seconds") == 12.5
    assert get("retention_workers_alive") == 2
    assert get("retention_workers_stalled") == 1
    last = "retention_worker_last_applied_timestamp_seconds"
    assert get(last, {"worker": "host-1"}) == 1_700_000_000.25
    cell = {"period": "month", "cohort": "2024-01", "offset": "1"}
    assert get("retention_cohort_active_customers", cell) == 50
    assert get("retention_cohort_retention_ratio", cell) == 0.5
    assert get("retention_cohort_revenue", cell) == 5.0
    assert get("retention_cohort_revenue_retention_ratio", cell) == 1.25
    late = {"period": "month", "cohort": "2024-01", "offset": "2"}
    assert get("retention_cohort_revenue_retention_ratio", late) == -0.25
    # a cohort without first-month revenue has no share to show
    none = {"period": "month", "cohort": "2024-02", "offset": "1"}
    assert get("retention_cohort_revenue", none) == 2.5
    assert get("retention_cohort_revenue_retention_ratio", none) is None


def test_absent_inputs_give_zeros_or_no_sample() -> None:
    """Before the lifecycle, risk and notification stages write anything."""
    empty = Snapshot(tracked_customers=0, topics=TOPICS, stats=Stats({}, {}, {}), workers_alive=0)
    registry = registry_for(empty)
    get = registry.get_sample_value
    assert all(get("retention_customers", {"state": s}) == 0 for s in STATUSES)
    assert get("retention_high_value_at_risk_customers") == 0
    assert get("retention_predicted_cltv") == 0
    assert all(
        get("retention_notifications_total", {"channel": c, "outcome": o}) == 0
        for c in CHANNELS
        for o in OUTCOMES
    )
    assert get("retention_events_processed_total", {"topic": "orders"}) == 0
    names = {name for name, _ in samples(registry)}
    for missing in (
        "retention_crr_ratio",  # no row: |S| unknown
        "retention_at_risk_customers",
        "retention_cltv_at_risk",
        "retention_alert_outcomes",  # alerts, counted like orders
        "retention_consumer_lag_messages",
        "retention_watermark_delay_seconds",
        "retention_last_event_age_seconds",
        "retention_workers_stalled",  # unknown without the broker's offsets
        "retention_worker_last_applied_timestamp_seconds",
        "retention_model_last_refit_timestamp_seconds",  # no refit yet
        "retention_period_start_timestamp_seconds",
    ):
        assert missing not in names
    assert get("retention_exporter_kafka_up") == 0
    # every reason of every source topic starts at 0, so rate() sees the first rejection
    assert all(
        get("retention_events_rejected_total", {"topic": t, "reason": r}) == 0
        for t in TOPICS
        for r in REJECT_REASONS
    )


def test_refit_time_and_period_starts() -> None:
    """The rules judge a refit's age and speak of a closed period once, from these."""
    snap = snapshot(10)
    rows = {
        ("week", "current"): replace(row(10), period="2024-03-04"),
        ("week", "last_closed"): replace(row(10), period="2024-02-26"),
    }
    registry = registry_for(replace(snap, rows=rows))
    get = registry.get_sample_value
    assert get("retention_model_last_refit_timestamp_seconds") == 1_700_000_100.5
    start = "retention_period_start_timestamp_seconds"
    # 2024-03-04T00:00:00Z and a week before
    assert get(start, {"period": "week", "window": "current"}) == 1_709_510_400
    assert get(start, {"period": "week", "window": "last_closed"}) == 1_709_510_400 - 7 * 86_400


def test_null_ratios_are_left_out() -> None:
    """|S| = 0 makes CRR and churn null (docs/metrics.md); a null is no sample, not a 0."""
    snap = snapshot(10)
    empty = PeriodRow("2024-03-01", 0, 3, 3, 0, 0, None, None, 0, 0.0, None, None, None, 0)
    registry = registry_for(replace(snap, rows={("day", "current"): empty}))
    labels = {"period": "day", "window": "current"}
    assert registry.get_sample_value("retention_crr_ratio", labels) is None
    assert registry.get_sample_value("retention_average_order_value", labels) is None
    assert registry.get_sample_value("retention_period_end_customers", labels) == 3


def test_redis_memory_is_given_per_node() -> None:
    registry = registry_for(snapshot(10))
    for node, used, limit in (("10.0.0.1:6379", 3000, 0), ("10.0.0.2:6379", 900, 4096)):
        labels = {"node": node}
        assert registry.get_sample_value("retention_redis_used_memory_bytes", labels) == used
        assert registry.get_sample_value("retention_redis_maxmemory_bytes", labels) == limit


def test_names_follow_the_conventions() -> None:
    registry = registry_for(snapshot(50))
    for metric in registry.collect():
        assert NAME.match(metric.name), metric.name
        assert metric.documentation, f"{metric.name} needs a help text"
        if metric.type == "counter":
            assert all(s.name == metric.name + "_total" for s in metric.samples), metric.name
        elif metric.type == "histogram":
            assert metric.name.endswith("_seconds"), metric.name
        else:
            assert metric.type == "gauge", metric.name
            assert not metric.name.endswith("_total"), metric.name
            assert metric.name.endswith(GAUGE_SUFFIXES) or metric.name in GAUGE_NOUNS, metric.name
        for sample in metric.samples:
            assert not {"customer", "customer_id", "id"} & set(sample.labels), sample


def test_exposition_parses() -> None:
    text = generate_latest(registry_for(snapshot(5))).decode()
    assert "# TYPE retention_events_processed_total counter" in text
    assert "# TYPE retention_crr_ratio gauge" in text


@pytest.mark.parametrize("customers", [10, 1_000, 100_000])
def test_series_count_does_not_depend_on_customers(customers: int) -> None:
    assert len(samples(registry_for(snapshot(customers)))) == len(
        samples(registry_for(snapshot(1)))
    )


@pytest.mark.parametrize(
    ("ends", "applied", "expected"),
    [
        # nothing applied yet: the whole partition is lag
        ({("orders", 0): 5}, {}, {"orders": 5}),
        # offset 4 applied: the next one is 5, the end, so no lag
        ({("orders", 0): 5}, {("orders", 0): 4}, {"orders": 0}),
        # partitions add up; an applied offset beyond a reported end floors at 0
        (
            {("orders", 0): 10, ("orders", 1): 3, ("logins", 0): 2},
            {("orders", 0): 7, ("orders", 1): 9},
            {"orders": 2, "logins": 2},
        ),
    ],
)
def test_lag_per_topic(
    ends: dict[tuple[str, int], int], applied: dict[tuple[str, int], int], expected: dict[str, int]
) -> None:
    assert lag_per_topic(ends, applied) == expected


def test_worker_metrics_on_an_injected_registry() -> None:
    registry = CollectorRegistry()
    metrics = WorkerMetrics(registry)
    metrics.observe_batch(0.02, 250)
    metrics.observe_batch(0.3, 1000)
    metrics.redis_error()
    get = registry.get_sample_value
    assert get("retention_batch_duration_seconds_count") == 2
    assert get("retention_batch_duration_seconds_sum") == pytest.approx(0.32)
    assert get("retention_batch_duration_seconds_bucket", {"le": "0.025"}) == 1
    assert get("retention_batch_size_messages_sum") == 1250
    assert get("retention_redis_errors_total") == 1
    # a second registry starts from zero: nothing is global
    other = CollectorRegistry()
    WorkerMetrics(other)
    assert other.get_sample_value("retention_redis_errors_total") == 0


def test_worker_counters_start_at_zero_for_every_topic_and_reason() -> None:
    registry = CollectorRegistry()
    WorkerMetrics(registry, TOPICS)
    get = registry.get_sample_value
    for topic in TOPICS:
        assert get("retention_worker_events_applied_total", {"topic": topic}) == 0
        for reason in REJECT_REASONS:
            labels = {"topic": topic, "reason": reason}
            assert get("retention_worker_events_rejected_total", labels) == 0
    assert get("retention_worker_internal_errors_total") == 0
    # 0 = no batch applied yet
    assert get("retention_worker_last_batch_timestamp_seconds") == 0


def test_worker_counts_and_last_batch_time(monkeypatch: pytest.MonkeyPatch) -> None:
    registry = CollectorRegistry()
    metrics = WorkerMetrics(registry, TOPICS)
    metrics.applied("orders", 40)
    metrics.applied("orders")
    metrics.rejected("logins", "invalid_json")
    metrics.rejected("logins", "internal_error", 3)  # a reason outside the list still counts
    metrics.internal_error()
    monkeypatch.setattr("streams.worker_metrics.time.time", lambda: 1_700_000_000.5)
    metrics.observe_batch(0.01, 45)
    get = registry.get_sample_value
    assert get("retention_worker_events_applied_total", {"topic": "orders"}) == 41
    rejected = "retention_worker_events_rejected_total"
    assert get(rejected, {"topic": "logins", "reason": "invalid_json"}) == 1
    assert get(rejected, {"topic": "logins", "reason": "internal_error"}) == 3
    assert get("retention_worker_internal_errors_total") == 1
    assert get("retention_worker_last_batch_timestamp_seconds") == 1_700_000_000.5


def test_worker_metric_names_follow_the_conventions() -> None:
    registry = CollectorRegistry()
    WorkerMetrics(registry, TOPICS)
    for metric in registry.collect():
        assert NAME.match(metric.name), metric.name
        if metric.type == "gauge":
            assert metric.name.endswith(GAUGE_SUFFIXES), metric.name


def b64(text: str) -> str:
    import base64

    return base64.b64encode(text.encode()).decode()


@pytest.mark.parametrize(
    ("header", "allowed"),
    [
        ("Bearer tok-1", True),
        ("bearer   tok-1 ", True),  # the scheme is case-insensitive
        ("Bearer tok-2", False),
        ("Bearer tok-1x", False),  # a longer token is not a match
        ("Bearer", False),
        (f"Basic {b64('prom:p:w')}", True),  # the password may hold a colon
        (f"Basic {b64('prom:p:')}", False),
        (f"Basic {b64('prom')}", False),  # no colon at all
        (f"Basic {b64('Prom:p:w')}", False),
        ("Basic %%%", False),  # not base64
        ("Digest prom", False),
        ("", False),
        (None, False),
    ],
)
def test_scrape_auth_accepts_only_the_configured_credentials(
    header: str | None, allowed: bool
) -> None:
    auth = ScrapeAuth.from_settings(
        Settings(metrics_bearer_token="tok-1", metrics_basic_auth="prom:p:w")
    )
    assert auth is not None
    assert auth.allows(header) is allowed


def test_no_credentials_configured_means_no_auth() -> None:
    assert ScrapeAuth.from_settings(Settings()) is None
    only_token = ScrapeAuth.from_settings(Settings(metrics_bearer_token="t"))
    assert only_token is not None
    assert only_token.allows(f"Basic {b64('t:t')}") is False
    assert only_token.challenges() == ['Bearer realm="retention"']


def test_service_numbers() -> None:
    registry = registry_for(snapshot(5))
    assert registry.get_sample_value("retention_nps_score") == 100.0 * (2 - 1) / 5
    assert registry.get_sample_value("retention_csat_average") == 18 / 5
    assert registry.get_sample_value("retention_ces_average") == 3.0
    assert registry.get_sample_value("retention_survey_responses", {"survey": "csat"}) == 5
    bucket = "retention_first_response_seconds_bucket"
    assert registry.get_sample_value(bucket, {"le": "3600.0"}) == 3
    assert registry.get_sample_value(bucket, {"le": "+Inf"}) == 4
    assert registry.get_sample_value("retention_first_response_seconds_count") == 4
    assert registry.get_sample_value("retention_first_response_seconds_sum") == 7200.0


# --- what a scrape serves when a read fails ------------------------------------------------


def served_samples(found: Iterable[Metric]) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value for m in found for s in m.samples}


def source(name: str, value: str) -> tuple[str, tuple[tuple[str, str], ...]]:
    return (name, (("source", value),))


UP = "retention_exporter_source_up"
LAST = "retention_exporter_source_last_success_timestamp_seconds"


def test_a_failed_read_keeps_the_last_good_numbers_marked_stale() -> None:
    served = Served(("redis", "kafka"))
    good = served_samples(served.read(snapshot(100), at=1_700_000_000.0))
    assert good[source(UP, "redis")] == 1 and good[source(UP, "kafka")] == 1
    assert good[source(LAST, "redis")] == 1_700_000_000.0
    assert good[("retention_exporter_redis_up", ())] == 1

    stale = served_samples(served.failed(seconds=2.5))
    assert stale[source(UP, "redis")] == 0 and stale[source(UP, "kafka")] == 0
    assert stale[source(LAST, "redis")] == 1_700_000_000.0  # how old the numbers are
    assert stale[("retention_exporter_redis_up", ())] == 0
    assert stale[("retention_exporter_kafka_up", ())] == 0
    assert stale[("retention_exporter_collect_duration_seconds", ())] == 2.5
    # every other series is still there, with the last good value
    kept = {k: v for k, v in good.items() if not k[0].startswith("retention_exporter_")}
    assert kept and all(stale[k] == v for k, v in kept.items())
    assert stale[("retention_tracked_customers", ())] == 100


def test_the_next_good_read_replaces_the_stale_numbers() -> None:
    served = Served(("redis",))
    served.read(snapshot(100), at=1_700_000_000.0)
    served.failed(seconds=1.0)
    fresh = served_samples(served.read(snapshot(7), at=1_700_000_060.0))
    assert fresh[("retention_tracked_customers", ())] == 7
    assert fresh[source(UP, "redis")] == 1 and fresh[source(LAST, "redis")] == 1_700_000_060.0
    assert not any(k[0] in (UP, LAST) and k[1] == (("source", "kafka"),) for k in fresh)


def test_a_broker_that_cannot_be_read_is_its_own_source() -> None:
    served = Served(("redis", "kafka"))
    served.read(snapshot(10), at=1_700_000_000.0)
    found = served_samples(served.read(replace(snapshot(10), lag=None), at=1_700_000_030.0))
    assert found[source(UP, "redis")] == 1 and found[source(UP, "kafka")] == 0
    assert found[source(LAST, "redis")] == 1_700_000_030.0
    assert found[source(LAST, "kafka")] == 1_700_000_000.0


def test_a_failed_first_read_serves_only_the_exporter_series() -> None:
    found = served_samples(Served(("redis",)).failed(seconds=0.1))
    assert {name for name, _ in found} == {
        UP,
        "retention_exporter_redis_up",
        "retention_exporter_kafka_up",
        "retention_exporter_collect_duration_seconds",
    }
    assert found[source(UP, "redis")] == 0


class Scripted(RetentionCollector):
    """The collector with its reads scripted: a snapshot, or an error, per scrape."""

    def __init__(self, reads: list[Snapshot | Exception]) -> None:
        super().__init__(Settings(redis_url="redis://unused:6379/0"), cache_seconds=0)
        self.reads = reads

    async def _read(self) -> Snapshot:
        found = self.reads.pop(0)
        if isinstance(found, Exception):
            raise found
        return found


def test_the_collector_serves_the_last_good_read_while_redis_fails() -> None:
    collector = Scripted([snapshot(40), ConnectionError("redis down"), snapshot(41)])
    try:
        first = served_samples(collector.collect())
        assert first[("retention_tracked_customers", ())] == 40
        assert first[source(UP, "redis")] == 1
        failed = served_samples(collector.collect())
        assert failed[("retention_tracked_customers", ())] == 40  # kept, marked stale
        assert failed[source(UP, "redis")] == 0
        assert failed[source(LAST, "redis")] == first[source(LAST, "redis")]
        assert failed[("retention_exporter_redis_up", ())] == 0
        again = served_samples(collector.collect())
        assert again[("retention_tracked_customers", ())] == 41
        assert again[source(UP, "redis")] == 1
    finally:
        collector.close()


def test_source_series_follow_the_conventions() -> None:
    served = Served(("redis", "kafka"))
    for metric in [*served.read(snapshot(3), at=1.0), *served.failed(seconds=1.0)]:
        assert NAME.match(metric.name) and metric.documentation, metric.name
        if metric.type == "gauge":
            assert metric.name.endswith(GAUGE_SUFFIXES) or metric.name in GAUGE_NOUNS, metric.name


def test_attribute_labels_are_bounded_with_the_rest_as_other() -> None:
    from retention.metric_families import top_values

    counts = {"DE": 50, "FR": 20, "JP": 20, "US": 5, "AT": 1}
    assert top_values(counts, 3) == {"DE": 50, "FR": 20, "JP": 20, "other": 6}
    assert top_values(counts, 10) == counts
    assert top_values({"a": 1, "b": 1}, 1) == {"a": 1, "other": 1}  # ties by value
    snap = snapshot(8)
    snap = replace(snap, attributes={"country": counts, "shop": {"eu": 3}}, attribute_top=2)
    got = {
        (s.labels["attribute"], s.labels["value"]): s.value
        for m in families(snap)
        if m.name == "retention_attribute_customers"
        for s in m.samples
    }
    assert got == {("country", "DE"): 50, ("country", "FR"): 20, ("country", "other"): 26,
                   ("shop", "eu"): 3}  # fmt: skip
