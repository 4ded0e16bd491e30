"""The exporter's HTTP ingest counters, from a snapshot (no I/O), on a fresh registry."""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import CollectorRegistry
from prometheus_client.core import Metric

from contract.events import EVENT_TYPES, REJECT_REASONS
from retention.ingest_rules import ENDPOINTS, STATUSES
from retention.metric_families import Snapshot, families
from store.store import Stats


class _Fixed:
    def __init__(self, metrics: list[Metric]) -> None:
        self.metrics = metrics

    def collect(self) -> Iterable[Metric]:
        return self.metrics


def registry_of(ingest: dict[str, int]) -> CollectorRegistry:
    snap = Snapshot(
        tracked_customers=0,
        topics=("orders",),
        stats=Stats(accepted={}, duplicates={}, rejected={}),
        workers_alive=0,
        ingest=ingest,
    )
    registry = CollectorRegistry()
    registry.register(_Fixed(families(snap)))
    return registry


def test_ingest_counters_land_on_their_labels() -> None:
    get = registry_of(
        {
            "request|batch|202": 7,
            "request|events|429": 2,
            "accepted|order": 650,
            "rejected|naive_timestamp": 3,
        }
    ).get_sample_value
    assert get("retention_ingest_requests_total", {"endpoint": "batch", "status": "202"}) == 7
    assert get("retention_ingest_requests_total", {"endpoint": "events", "status": "429"}) == 2
    assert get("retention_ingest_requests_total", {"endpoint": "events", "status": "202"}) == 0
    assert get("retention_ingest_events_accepted_total", {"type": "order"}) == 650
    assert get("retention_ingest_events_rejected_total", {"reason": "naive_timestamp"}) == 3


def test_every_label_starts_at_zero_without_any_traffic() -> None:
    registry = registry_of({})
    get = registry.get_sample_value
    for endpoint in ENDPOINTS:
        for status in STATUSES:
            labels = {"endpoint": endpoint, "status": str(status)}
            assert get("retention_ingest_requests_total", labels) == 0
    for event_type in EVENT_TYPES:
        assert get("retention_ingest_events_accepted_total", {"type": event_type}) == 0
    for reason in REJECT_REASONS:
        assert get("retention_ingest_events_rejected_total", {"reason": reason}) == 0


def test_a_malformed_field_is_ignored() -> None:
    registry = registry_of({"request|batch": 1, "other": 5})
    samples = [
        s
        for m in registry.collect()
        if m.name.startswith("retention_ingest")
        for s in m.samples
        if s.name.endswith("_total")
    ]
    expected = len(ENDPOINTS) * len(STATUSES) + len(EVENT_TYPES) + len(REJECT_REASONS)
    assert len(samples) == expected
