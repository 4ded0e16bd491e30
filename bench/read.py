"""Reading a large store: every segment paged through in full, and exports of 100k customers.

    .venv/bin/python bench/read.py [--customers 100000] [--limit 1000] [--json]

Writes N synthetic customers (a year of orders each, as ``bench/scale_customers.py``)
through the batch script into a fresh redis-server, fits the models and evaluates every
customer, then measures, in one run:

- paging: each segment walked through ``retention.segments.page`` with ``--limit``, as
  ``GET /v1/customers`` does: pages, members, the slowest and the median page;
- exports: ``retention.export.export`` of the largest segment in each format (CSV, JSON
  lines, Parquet) to a file: seconds, rows per second, bytes, and the Python heap's peak
  in a second, traced run (tracemalloc), which must not grow with the segment.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import common
from redis.asyncio import Redis

from processors.forecast import model_options
from processors.lifecycle import lifecycle_policy
from processors.risk import RiskPolicy
from processors.segments import SEGMENTS, Filters
from retention import runtime
from retention.config import Settings
from retention.export import FORMATS, export
from retention.segments import page
from store.evaluations import Evaluator, update_high_value_threshold
from store.models import refit
from store.store import Store


@dataclass(frozen=True)
class Options(common.RunOptions):
    customers: int = 100_000
    limit: int = 1000


@dataclass
class Paging:
    segment: str
    pages: int
    members: int
    seconds: float
    slowest_page: float
    median_page: float


@dataclass
class Export:
    fmt: str
    rows: int
    seconds: float
    bytes: int
    heap_peak: int


@dataclass
class Result:
    customers: int
    load_seconds: float
    evaluate_seconds: float
    paging: list[Paging]
    exports: list[Export]


async def walk(store: Store, segment: str, limit: int) -> Paging:
    cursor: str | None = None
    times: list[float] = []
    members = 0
    started = time.monotonic()
    while True:
        t0 = time.monotonic()
        found = await page(store, segment, Filters(), "USD", cursor, limit)  # type: ignore[arg-type]
        times.append(time.monotonic() - t0)
        members += len(found.rows)
        cursor = found.cursor
        if cursor is None:
            break
    elapsed = time.monotonic() - started
    return Paging(segment, len(times), members, elapsed, max(times), statistics.median(times))


async def run(options: Options, url: str, work: Path) -> Result:
    redis = Redis.from_url(url, decode_responses=True)
    try:
        store = Store(redis, "read:", ("order",), offsets_scope="bench", writer=True)
        _, load_seconds = await common.load_customers(store, options.customers, options.seed)
        await refit(store, date.today(), model_options(Settings()))
        policy = RiskPolicy()
        await update_high_value_threshold(store, policy.high_value_quantile)
        evaluator = Evaluator(store, policy, lifecycle_policy(90, policy.timers))
        started = time.monotonic()
        now = datetime.now(UTC)
        while await evaluator.run_once(now, 2000):
            pass
        evaluate_seconds = time.monotonic() - started
        paging = [await walk(store, s, options.limit) for s in SEGMENTS]
        largest = max(paging, key=lambda p: p.members).segment
        exports = []
        for fmt in FORMATS:
            out = work / f"{largest}.{fmt}"
            started = time.monotonic()
            rows = await export(store, largest, Filters(), "USD", fmt, out)  # type: ignore[arg-type]
            seconds = time.monotonic() - started
            # the heap in a second run: tracing slows Python several times over
            tracemalloc.start()
            await export(store, largest, Filters(), "USD", fmt, out)  # type: ignore[arg-type]
            _, peak = tracemalloc.get_traced_memory()
            tracemalloc.stop()
            exports.append(Export(fmt, rows, seconds, out.stat().st_size, peak))
        return Result(options.customers, load_seconds, evaluate_seconds, paging, exports)
    finally:
        await redis.flushall(asynchronous=True)
        await redis.aclose()


def measure(options: Options, log_dir: Path) -> Result:
    server, url = runtime.start_redis(log_dir / "redis", log_dir, durable=False)
    try:
        with tempfile.TemporaryDirectory(prefix="retention-read-") as work:
            return asyncio.run(run(options, url, Path(work)))
    finally:
        server.stop()


def render(options: Options, result: Result, elapsed: float) -> str:
    lines = [
        common.headline("read.py", elapsed),
        f"{result.customers:,} customers written in {result.load_seconds:.1f} s, evaluated in "
        f"{result.evaluate_seconds:.1f} s; pages of {options.limit}",
        "",
        f"{'segment':<12} {'members':>8} {'pages':>6} {'walk s':>7} {'slowest ms':>11} "
        f"{'median ms':>10}",
    ]
    for p in result.paging:
        lines.append(
            f"{p.segment:<12} {p.members:>8,} {p.pages:>6} {p.seconds:>7.2f} "
            f"{p.slowest_page * 1000:>11.1f} {p.median_page * 1000:>10.1f}"
        )
    lines += [
        "",
        f"{'export':<8} {'rows':>8} {'s':>6} {'rows/s':>8} {'MB':>7} {'heap peak MB':>13}",
    ]
    for e in result.exports:
        lines.append(
            f"{e.fmt:<8} {e.rows:>8,} {e.seconds:>6.2f} {e.rows / max(e.seconds, 1e-9):>8,.0f} "
            f"{e.bytes / 1e6:>7.1f} {e.heap_peak / 1e6:>13.1f}"
        )
    return "\n".join(lines)


def as_json(options: Options, result: Result, elapsed: float) -> str:
    data: dict[str, Any] = {"options": asdict(options), "elapsed": elapsed, **asdict(result)}
    return json.dumps(data, indent=2)


def parse_args(argv: Sequence[str] | None) -> Options:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--customers", type=int, default=100_000)
    parser.add_argument("--limit", type=int, default=1000)
    common.add_run_options(parser)
    args = parser.parse_args(argv)
    return Options(**common.run_options(args), customers=args.customers, limit=args.limit)


def main(argv: Sequence[str] | None = None) -> int:
    return common.run_benchmark(parse_args(argv), "retention-read-", measure, render, as_json)


if __name__ == "__main__":
    sys.exit(main())
