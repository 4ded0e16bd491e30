"""The metrics one worker process measures about itself, served on its own port.

Named apart from the exporter's cluster-wide ``retention_events_*_total`` families (which
come from the store), so a sum over all targets does not count a message twice. The
registry is injected; the application layer serves it (``retention/exporter.py``).
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from contract.events import REJECT_REASONS

#: Batch latency buckets: a Redis round trip of a small batch up to a stalled store.
BATCH_SECONDS_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


BATCH_SIZE_BUCKETS = (1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000)


class WorkerMetrics:
    """What one worker process measures itself; the registry is injected.

    ``topics`` are the source topics: their applied and rejected counters (every reject
    reason) are exported from 0, so that the first increase is seen by ``rate()``.
    """

    def __init__(self, registry: CollectorRegistry, topics: Sequence[str] = ()) -> None:
        self.batch_duration = Histogram(
            "retention_batch_duration_seconds",
            "Time to apply one batch to Redis, retries included.",
            buckets=BATCH_SECONDS_BUCKETS,
            registry=registry,
        )
        self.batch_size = Histogram(
            "retention_batch_size_messages",
            "Messages per applied batch.",
            buckets=BATCH_SIZE_BUCKETS,
            registry=registry,
        )
        self.redis_errors = Counter(
            "retention_redis_errors", "Failed Redis calls (each one retried).", registry=registry
        )
        # named apart from the exporter's cluster-wide retention_events_*_total, so that a
        # sum over all targets does not count a message twice
        self.events_applied = Counter(
            "retention_worker_events_applied",
            "Messages this worker applied to the store, by source topic.",
            ["topic"],
            registry=registry,
        )
        self.events_rejected = Counter(
            "retention_worker_events_rejected",
            "Messages this worker sent to the dead-letter topic, by source topic and reason.",
            ["topic", "reason"],
            registry=registry,
        )
        self.internal_errors = Counter(
            "retention_worker_internal_errors",
            "Unexpected exceptions this worker caught, logged and went on after.",
            registry=registry,
        )
        self.last_batch = Gauge(
            "retention_worker_last_batch_timestamp_seconds",
            "Unix time of this worker's last applied batch; 0 until the first one.",
            registry=registry,
        )
        for topic in topics:
            self.events_applied.labels(topic)
            for reason in REJECT_REASONS:
                self.events_rejected.labels(topic, reason)

    def observe_batch(self, seconds: float, size: int) -> None:
        """A batch of ``size`` messages was applied in ``seconds`` (retries included)."""
        self.batch_duration.observe(seconds)
        self.batch_size.observe(size)
        self.last_batch.set(time.time())

    def redis_error(self) -> None:
        self.redis_errors.inc()

    def applied(self, topic: str, n: int = 1) -> None:
        self.events_applied.labels(topic).inc(n)

    def rejected(self, topic: str, reason: str, n: int = 1) -> None:
        self.events_rejected.labels(topic, reason).inc(n)

    def internal_error(self) -> None:
        self.internal_errors.inc()
