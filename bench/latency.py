"""How long an event takes to show: from its production to the customer's state, and to the
alert it raises, under a steady load.

    .venv/bin/python bench/latency.py [--rate 5000] [--seconds 60] [--customers 20000]
                                      [--partitions 4] [--evaluation worker|separate]
                                      [--seed 7] [--json] [--keep-logs]

Starts a Tansu broker, a Redis and one worker (``python -m retention.cli worker``, the tuned
settings of ``bench/common.py``), then produces orders at ``--rate`` events per second for
``--seconds``, spread over ``--customers`` customers, as an app would: in small batches every
10 ms. Among them, twenty times a second, a probe: an order of a customer never seen
before. The bench reads the probes' customers from the store (one call for all those still
awaited, every 10 ms) and takes, for each, the time from handing the order to the producer
to the first read that shows it. Twice a second, an alert probe: the fifth order of a
customer given four orders before the load began, which reaches the five-orders milestone;
the time runs from handing that order to the producer to the ``milestone`` alert arriving
on the alerts topic (an evaluation follows each change, ``RETENTION_EVALUATE_EVERY_SECONDS``
apart at most). Reports p50, p99 and max of each, and the rate the producer and the worker
kept. With ``--evaluation separate`` the worker leaves evaluation to one ``retention
evaluator`` started beside it (``RETENTION_EVALUATION``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import time
import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import common

from retention import runtime
from store.connect import connect
from store.store import Store
from streams.producer import EventProducer
from streams.topics import Topics, ensure_topics

#: probes of each kind per second
STATE_PROBES_PER_SECOND = 20
ALERT_PROBES_PER_SECOND = 2
TICK_SECONDS = 0.01
POLL_SECONDS = 0.01
#: the order count the risk file's default milestones start at
MILESTONE = 5


@dataclass(frozen=True)
class Options(common.RunOptions):
    rate: float
    seconds: float
    customers: int
    partitions: int
    evaluation: str = "worker"


@dataclass
class Latencies:
    """Seconds, one per probe seen, and how many were never seen."""

    seen: list[float] = field(default_factory=list)
    missing: int = 0

    def summary(self) -> dict[str, float | int | None]:
        ordered = sorted(self.seen)

        def at(q: float) -> float | None:
            if not ordered:
                return None
            return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

        return {
            "probes": len(ordered),
            "missing": self.missing,
            "p50_ms": None if not ordered else round(1000 * (at(0.5) or 0.0), 1),
            "p99_ms": None if not ordered else round(1000 * (at(0.99) or 0.0), 1),
            "max_ms": None if not ordered else round(1000 * ordered[-1], 1),
        }


@dataclass
class Result:
    rate: float
    seconds: float
    sent: int
    applied_per_second: float
    state: dict[str, float | int | None]
    alert: dict[str, float | int | None]


def order(customer: str, event_id: str, rng: random.Random) -> bytes:
    return json.dumps(
        {
            "type": "order",
            "event_id": event_id,
            "customer_id": customer,
            "ts": time.time(),
            "amount": round(rng.uniform(5, 250), 2),
        }
    ).encode()


async def warm_up(
    producer: EventProducer, topic: str, store: Store, customers: int, rng: random.Random
) -> int:
    """Four orders of each alert-probe customer, and a first order of many others, until
    the worker has taken them all: the group has joined and the caches are warm."""
    futures = []
    for n in range(customers):
        for k in range(MILESTONE - 1):
            cid = f"milestone-{n}"
            futures.append(
                await producer.send_raw(topic, order(cid, f"w{n}-{k}", rng), cid.encode())
            )
    await asyncio.gather(*futures)
    deadline = time.monotonic() + 120
    while (await store.stats()).seen(topic) < len(futures):
        if time.monotonic() > deadline:
            raise common.BenchError("the worker did not take the warm-up orders in 120 s")
        await asyncio.sleep(0.1)
    return len(futures)


async def watch_alerts(
    consumer: AIOKafkaConsumer, waiting: dict[str, float], latencies: Latencies
) -> None:
    async for message in consumer:
        alert = json.loads(message.value)
        sent = waiting.pop(alert.get("customer_id", ""), None)
        if alert.get("kind") == "milestone" and sent is not None:
            latencies.seen.append(time.monotonic() - sent)


async def watch_states(store: Store, waiting: dict[str, float], latencies: Latencies) -> None:
    while True:
        if waiting:
            ids = list(waiting)
            for state in await store.read_customers(ids):
                sent = waiting.pop(state.customer_id, None)
                if sent is not None and state.orders > 0:
                    latencies.seen.append(time.monotonic() - sent)
        await asyncio.sleep(POLL_SECONDS)


async def run(options: Options, bootstrap: str, redis_url: str, log_dir: Path) -> Result:
    tag = f"lat-{uuid.uuid4().hex[:6]}"
    settings = common.run_settings(
        tag, bootstrap, redis_url, log_dir, options.partitions, evaluation=options.evaluation
    )
    topics = Topics.from_settings(settings)
    await ensure_topics(bootstrap, topics, options.partitions)
    worker, evaluator = common.start_tracker(settings, log_dir, tag)
    processes = [worker] if evaluator is None else [worker, evaluator]
    redis = connect(redis_url, decode_responses=True)
    store = Store(redis, settings.key_prefix, settings.activity_kinds)
    rng = random.Random(options.seed)
    topic = topics.source("order")
    alert_probes = int(options.seconds * ALERT_PROBES_PER_SECOND) + 1
    consumer = AIOKafkaConsumer(
        topics.alerts, bootstrap_servers=bootstrap, auto_offset_reset="latest"
    )
    state_wait: dict[str, float] = {}
    alert_wait: dict[str, float] = {}
    states, alerts = Latencies(), Latencies()
    try:
        async with EventProducer(
            bootstrap, topics, linger_ms=5, max_future_seconds=None
        ) as producer:
            await warm_up(producer, topic, store, alert_probes, rng)
            await consumer.start()
            while not consumer.assignment():
                await asyncio.sleep(0.05)
            await consumer.seek_to_end()
            watchers = [
                asyncio.create_task(watch_states(store, state_wait, states)),
                asyncio.create_task(watch_alerts(consumer, alert_wait, alerts)),
            ]
            ids = [f"c-{n:06d}" for n in range(options.customers)]
            sent, started = 0, time.monotonic()
            before = (await store.stats()).seen(topic)
            next_state = next_alert = started
            state_n = alert_n = 0
            while (now := time.monotonic()) < started + options.seconds:
                due = int((now - started) * options.rate) - sent
                for _ in range(due):
                    cid = rng.choice(ids)
                    await producer.send_raw(topic, order(cid, f"e{sent}", rng), cid.encode())
                    sent += 1
                if now >= next_state:
                    cid = f"probe-{state_n}"
                    state_wait[cid] = time.monotonic()
                    await producer.send_raw(topic, order(cid, f"p{state_n}", rng), cid.encode())
                    state_n, next_state = state_n + 1, next_state + 1 / STATE_PROBES_PER_SECOND
                if now >= next_alert and alert_n < alert_probes:
                    cid = f"milestone-{alert_n}"
                    alert_wait[cid] = time.monotonic()
                    await producer.send_raw(topic, order(cid, f"m{alert_n}", rng), cid.encode())
                    alert_n, next_alert = alert_n + 1, next_alert + 1 / ALERT_PROBES_PER_SECOND
                await asyncio.sleep(TICK_SECONDS)
            elapsed = time.monotonic() - started
            await producer.flush()
            total = sent + state_n + alert_n
            deadline = time.monotonic() + 60
            drained: float | None = None
            while drained is None or state_wait or alert_wait:
                if drained is None and (await store.stats()).seen(topic) - before >= total:
                    # every event sent is applied: the rate the worker kept ends here
                    drained = time.monotonic()
                if time.monotonic() > deadline:
                    break
                if worker.proc.poll() is not None:
                    raise common.BenchError(
                        f"the worker exited:\n{common.log_tail(worker.log_path)}"
                    )
                await asyncio.sleep(0.1)
            applied_seconds = (drained or time.monotonic()) - started
            for task in watchers:
                task.cancel()
            states.missing, alerts.missing = len(state_wait), len(alert_wait)
            applied = (await store.stats()).seen(topic) - before
    finally:
        await consumer.stop()
        runtime.stop_all(processes)
        await redis.aclose()
    return Result(
        rate=options.rate,
        seconds=elapsed,
        sent=sent,
        applied_per_second=applied / applied_seconds,
        state=states.summary(),
        alert=alerts.summary(),
    )


def measure(options: Options, log_dir: Path) -> Result:
    with runtime.start_services(log_dir) as services:
        return asyncio.run(run(options, services.kafka_bootstrap, services.redis_url, log_dir))


def render(options: Options, result: Result, elapsed: float) -> str:
    def line(name: str, s: dict[str, Any]) -> str:
        return (
            f"{name:<22} p50 {s['p50_ms']} ms, p99 {s['p99_ms']} ms, max {s['max_ms']} ms "
            f"({s['probes']} probes, {s['missing']} never seen)"
        )

    return "\n".join(
        [
            common.headline(__file__, elapsed),
            f"{result.sent:,} orders in {result.seconds:.1f} s "
            f"({result.sent / result.seconds:,.0f}/s asked {options.rate:,.0f}/s); "
            f"the worker applied {result.applied_per_second:,.0f}/s; "
            f"evaluation: {options.evaluation}",
            line("event -> state", result.state),
            line("event -> alert", result.alert),
        ]
    )


def as_json(options: Options, result: Result, elapsed: float) -> str:
    return json.dumps({"seconds": elapsed, **asdict(result)})


def parse_args(argv: Sequence[str] | None) -> Options:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=5000.0, help="events per second")
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--customers", type=int, default=20_000)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument(
        "--evaluation",
        choices=("worker", "separate"),
        default="worker",
        help="evaluate in the worker, or in an evaluator process beside it",
    )
    common.add_run_options(parser)
    args = parser.parse_args(argv)
    return Options(
        rate=args.rate,
        seconds=args.seconds,
        customers=args.customers,
        partitions=args.partitions,
        evaluation=args.evaluation,
        **common.run_options(args),
    )


def main(argv: Sequence[str] | None = None) -> int:
    return common.run_benchmark(parse_args(argv), "retention-latency-", measure, render, as_json)


if __name__ == "__main__":
    sys.exit(main())
