"""A peer for the throughput benchmark: the same orders consumed by a Quix Streams app.

Runs with the interpreter of its own virtual environment (``bench/.venv-quix``, made by
``bench/quix_env.py``), never the project's: Quix Streams is no dependency of the tracker.
``bench/throughput.py`` starts it with:

- ``QUIX_BOOTSTRAP``, ``QUIX_TOPIC``, ``QUIX_GROUP``: the broker, the orders' topic and a
  consumer group of its own;
- ``QUIX_REDIS_URL``, ``QUIX_KEY_PREFIX``: where the per-customer totals go;
- ``QUIX_STATE_DIR``: the folder Quix keeps its (here unused) state in;
- ``QUIX_SESSION_TIMEOUT_MS``, ``QUIX_HEARTBEAT_INTERVAL_MS``: the group timeouts, the
  embedded stack's as the workers have them (Tansu holds a joining member for half the
  session timeout);
- ``BENCH_EXPECTED_EVENTS``, ``BENCH_REPORT_FILE``, ``BENCH_BATCH_SIZE``: as for
  ``bench/floor_worker.py``, two JSON lines, when the first batch is written to Redis and
  when the expected number is.

The app decodes each order (JSON), keeps those with the fields an order needs, and its
sink writes, per batch of ``BENCH_BATCH_SIZE`` orders, one Redis pipeline: per customer of
the batch, an HINCRBY of its order count and one of its revenue (placed orders, in
micros), and one INCRBY of the orders seen.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections import Counter
from typing import Any

import redis
from quixstreams import Application
from quixstreams.models.topics.manager import TopicManager
from quixstreams.sinks import BaseSink

logger = logging.getLogger("bench.quix_peer")

STATUSES = frozenset({"placed", "cancelled", "refunded"})
#: A batch older than this is written at its next order, as the pipeline's window does.
BATCH_WITHIN_SECONDS = 0.2


def allow_missing_retention() -> None:
    """Tansu's topic configs carry no ``retention.ms``, which Quix's topic manager reads
    when it derives the config of its internal topics: read it as -1 (unlimited)."""
    derive = TopicManager.derive_topic_config.__func__  # type: ignore[attr-defined]

    def derive_topic_config(cls: type[TopicManager], topics: Any) -> Any:
        for topic in topics:
            topic.broker_config.extra_config.setdefault("retention.ms", "-1")
        return derive(cls, topics)

    TopicManager.derive_topic_config = classmethod(derive_topic_config)  # type: ignore[assignment]


def report(kind: str, **fields: Any) -> None:
    line = {"bench": kind, "at": time.time(), "cpu": time.process_time(), **fields}
    with open(os.environ["BENCH_REPORT_FILE"], "a") as out:
        out.write(json.dumps(line) + "\n")


def is_order(value: Any) -> bool:
    """The fields the totals need, of the right types."""
    return (
        isinstance(value, dict)
        and isinstance(value.get("customer_id"), str)
        and isinstance(value.get("amount"), int | float)
        and value.get("status") in STATUSES
    )


class CustomerTotals(BaseSink):
    """Orders and revenue per customer, one Redis pipeline per batch."""

    def __init__(self, client: redis.Redis, prefix: str, batch_size: int, expected: int) -> None:
        super().__init__()
        self.client = client
        self.prefix = prefix
        self.batch_size = batch_size
        self.expected = expected
        self.pending: list[dict[str, Any]] = []
        self.started = time.monotonic()
        self.written = 0

    def add(
        self,
        value: Any,
        key: Any,
        timestamp: int,
        headers: Any,
        topic: str,
        partition: int,
        offset: int,
    ) -> None:
        if not self.pending:
            self.started = time.monotonic()
        self.pending.append(value)
        if (
            len(self.pending) >= self.batch_size
            or self.written + len(self.pending) >= self.expected
            or time.monotonic() - self.started >= BATCH_WITHIN_SECONDS
        ):
            self.write()

    def flush(self) -> None:
        self.write()

    def write(self) -> None:
        if not self.pending:
            return
        orders: Counter[str] = Counter()
        revenue: Counter[str] = Counter()
        for event in self.pending:
            customer = event["customer_id"]
            orders[customer] += 1
            if event["status"] == "placed":
                revenue[customer] += round(event["amount"] * 1_000_000)
        pipe = self.client.pipeline(transaction=False)
        for customer, count in orders.items():
            key = self.prefix + "c:" + customer
            pipe.hincrby(key, "orders", count)
            pipe.hincrby(key, "revenue", revenue[customer])
        pipe.incrby(self.prefix + "seen", len(self.pending))
        pipe.execute()
        before = self.written
        self.written += len(self.pending)
        self.pending = []
        if before == 0:
            report("first")
        if before < self.expected <= self.written:
            report("done", count=self.written)


def main() -> None:
    allow_missing_retention()
    env = os.environ
    app = Application(
        broker_address=env["QUIX_BOOTSTRAP"],
        consumer_group=env["QUIX_GROUP"],
        auto_offset_reset="earliest",
        auto_create_topics=False,
        use_changelog_topics=False,
        loglevel=env.get("BENCH_LOG_LEVEL", "WARNING"),
        state_dir=env["QUIX_STATE_DIR"],
        consumer_extra_config={
            "session.timeout.ms": int(env.get("QUIX_SESSION_TIMEOUT_MS", "45000")),
            "heartbeat.interval.ms": int(env.get("QUIX_HEARTBEAT_INTERVAL_MS", "3000")),
        },
    )
    topic = app.topic(env["QUIX_TOPIC"], key_deserializer="str", value_deserializer="json")
    sink = CustomerTotals(
        redis.Redis.from_url(env["QUIX_REDIS_URL"]),
        env["QUIX_KEY_PREFIX"],
        int(env.get("BENCH_BATCH_SIZE", "1000")),
        int(env["BENCH_EXPECTED_EVENTS"]),
    )
    orders = app.dataframe(topic).filter(is_order)
    orders.sink(sink)
    app.run()


if __name__ == "__main__":
    main()
