"""Ingestion and evaluation together: evaluation in the worker against evaluation in a
process of its own (``RETENTION_EVALUATION=worker`` against ``separate``).

    .venv/bin/python bench/evaluation_apart.py [--events 50000] [--customers 20000]
                                               [--partitions 4] [--repeat 2] [--json]

Starts a Tansu broker and a Redis (``retention.runtime``). Each run produces its own copy of
N order events (``bench/common.py``, every customer in turn) into fresh topics, then starts
one worker cold (the tuned settings), and with ``separate`` one ``retention evaluator``
beside it at the same moment. The bench polls the store every 0.1 s until every event is
applied and every customer it tracks has been evaluated with none left due:

- **ingest events/s**: N / (last event applied − first, the worker's heartbeat);
- **evaluated by then**: customers with an evaluation when the last event was applied;
- **all evaluated after**: seconds from the first event applied to the last customer
  evaluated; **customers evaluated/s**: the customers over that time;
- **CPU**: CPU seconds per wall second of the worker and of the evaluator, from the first
  event to the end.

Customers evaluated count each customer once (its first evaluation); an evaluator that
runs while the orders still come evaluates some customers again after each order, which
its log's last line (``evaluated``) counts. Runs alternate between the two modes.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import common
from redis.asyncio import Redis

from retention import runtime
from store.evaluations import due_backlog
from store.store import Store
from streams.topics import Topics, cluster_id, ensure_topics

MODES = ("worker", "separate")


@dataclass(frozen=True)
class Options(common.RunOptions):
    events: int
    customers: int
    partitions: int
    repeat: int


@dataclass(frozen=True)
class Run:
    mode: str
    index: int
    events: int
    customers: int
    first_event_at: float
    ingested_at: float
    evaluated_at: float
    evaluated_by_ingested: int
    worker_cpu: float | None
    evaluator_cpu: float | None
    #: every evaluation the evaluator made, re-evaluations included (``separate`` only)
    evaluator_evaluations: int | None

    @property
    def ingest_per_second(self) -> float:
        return self.events / max(1e-9, self.ingested_at - self.first_event_at)

    @property
    def all_evaluated_after(self) -> float:
        return self.evaluated_at - self.first_event_at

    @property
    def evaluated_per_second(self) -> float:
        return self.customers / max(1e-9, self.all_evaluated_after)


@dataclass
class Sample:
    at: float
    seen: int
    evaluated: int
    worker_cpu: float | None
    evaluator_cpu: float | None


def share(samples: Sequence[Sample], first: float, which: str) -> float | None:
    """CPU seconds per wall second of one process from the first event to the end."""
    start = next((s for s in samples if s.at >= first), None)
    end = samples[-1]
    a = None if start is None else getattr(start, which)
    b = getattr(end, which)
    if start is None or a is None or b is None or end.at <= start.at:
        return None
    return float((b - a) / (end.at - start.at))


async def evaluated_customers(store: Store) -> int:
    """Customers with an evaluation: every one counts once in the lifecycle totals."""
    return sum((await store.counters("life:counts")).values())


async def first_event_at(store: Store) -> float:
    workers = await store.workers(max_age_seconds=60)
    firsts = [w["first_event_at"] for w in workers.values() if w.get("first_event_at")]
    if not firsts:
        raise common.BenchError("no worker heartbeat reported a first event")
    return float(min(firsts))


def evaluator_evaluations(log_path: Path) -> int | None:
    """The evaluator's own count of its evaluations, from the line it logs when it stops."""
    for line in reversed(common.log_tail(log_path, 20_000).splitlines()):
        if '"evaluator stopped"' in line:
            return int(json.loads(line)["evaluated"])
    return None


async def run_once(
    options: Options,
    bootstrap: str,
    redis_url: str,
    redis: Redis,
    by_partition: dict[int, list[tuple[bytes, bytes]]],
    mode: str,
    index: int,
    log_dir: Path,
) -> Run:
    tag = f"ea-{mode}-{uuid.uuid4().hex[:6]}-{index}"
    settings = common.run_settings(
        tag, bootstrap, redis_url, log_dir, options.partitions, evaluation=mode
    )
    topics = Topics.from_settings(settings)
    await ensure_topics(bootstrap, topics, settings.partitions)
    await common.produce(bootstrap, topics.source("order"), by_partition)
    scope = await cluster_id(bootstrap)
    store = Store(redis, settings.key_prefix, settings.activity_kinds, offsets_scope=scope)
    worker, evaluator = common.start_tracker(settings, log_dir, tag)
    samples: list[Sample] = []
    ingested: Sample | None = None
    deadline = time.monotonic() + 120 + options.events / 500
    try:
        while True:
            if time.monotonic() > deadline:
                raise common.BenchError(f"{mode}: not done in time")
            for process in (worker, evaluator):
                if process is not None and process.proc.poll() is not None:
                    tail = common.log_tail(process.log_path)
                    raise common.BenchError(f"{process.name} exited\n{tail}")
            sample = Sample(
                time.time(),
                await common.seen_total(store, topics),
                await evaluated_customers(store),
                common.cpu_seconds(worker.pid),
                None if evaluator is None else common.cpu_seconds(evaluator.pid),
            )
            samples.append(sample)
            if ingested is None and sample.seen >= options.events:
                ingested = sample
            if ingested is not None and sample.evaluated >= await store.customer_count():
                now_ms = int(datetime.now(UTC).timestamp() * 1000)
                if (await due_backlog(store, now_ms))[0] == 0:
                    break
            await asyncio.sleep(common.POLL_SECONDS)
        assert ingested is not None
        first = await first_event_at(store)
        customers = await store.customer_count()
    finally:
        worker.stop(15)
        if evaluator is not None:
            evaluator.stop(15)
    return Run(
        mode=mode,
        index=index,
        events=options.events,
        customers=customers,
        first_event_at=first,
        ingested_at=ingested.at,
        evaluated_at=samples[-1].at,
        evaluated_by_ingested=ingested.evaluated,
        worker_cpu=share(samples, first, "worker_cpu"),
        evaluator_cpu=None if evaluator is None else share(samples, first, "evaluator_cpu"),
        evaluator_evaluations=None
        if evaluator is None
        else evaluator_evaluations(evaluator.log_path),
    )


async def run_all(options: Options, bootstrap: str, redis_url: str, log_dir: Path) -> list[Run]:
    messages = common.build_messages(options.events, options.customers, options.seed)
    common.check_sample(messages)
    by_partition = common.split_by_partition(messages, options.partitions)
    redis = Redis.from_url(redis_url, decode_responses=True)
    try:
        runs = []
        for index in range(options.repeat):
            for mode in MODES:
                runs.append(
                    await run_once(
                        options, bootstrap, redis_url, redis, by_partition, mode, index, log_dir
                    )
                )
        return runs
    finally:
        await redis.aclose()


def percent(value: float | None) -> str:
    return "?" if value is None else f"{value:.0%}"


def render(options: Options, runs: Sequence[Run], elapsed: float) -> str:
    lines = [
        common.headline(__file__, elapsed),
        f"{options.events:,} orders over {options.customers:,} customers, "
        f"{options.partitions} partitions, one worker (tuned), runs alternating",
        "",
        "| run | ingest events/s | evaluated by then | all evaluated after | customers "
        "evaluated/s | worker CPU | evaluator CPU |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in runs:
        again = (
            "" if r.evaluator_evaluations is None else f" ({r.evaluator_evaluations:,} evaluations)"
        )
        lines.append(
            f"| {r.mode} #{r.index + 1} | {r.ingest_per_second:,.0f} | "
            f"{r.evaluated_by_ingested:,} | {r.all_evaluated_after:.1f} s | "
            f"{r.evaluated_per_second:,.0f}{again} | {percent(r.worker_cpu)} | "
            f"{percent(r.evaluator_cpu)} |"
        )
    return "\n".join(lines)


def as_json(options: Options, runs: Sequence[Run], elapsed: float) -> str:
    out: list[dict[str, Any]] = [
        {
            **asdict(r),
            "ingest_per_second": r.ingest_per_second,
            "all_evaluated_after": r.all_evaluated_after,
            "evaluated_per_second": r.evaluated_per_second,
        }
        for r in runs
    ]
    return json.dumps({"options": asdict(options), "elapsed": elapsed, "runs": out}, indent=2)


def parse_args(argv: Sequence[str] | None) -> Options:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--customers", type=int, default=20_000)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--repeat", type=int, default=2)
    common.add_run_options(parser)
    args = parser.parse_args(argv)
    return Options(
        **common.run_options(args),
        events=args.events,
        customers=args.customers,
        partitions=args.partitions,
        repeat=args.repeat,
    )


def measure(options: Options, log_dir: Path) -> list[Run]:
    with runtime.start_services(log_dir) as services:
        return asyncio.run(run_all(options, services.kafka_bootstrap, services.redis_url, log_dir))


def main(argv: Sequence[str] | None = None) -> int:
    return common.run_benchmark(
        parse_args(argv), "retention-bench-apart-", measure, render, as_json
    )


if __name__ == "__main__":
    sys.exit(main())
