"""Exporter scrape time as the number of customers grows.

    .venv/bin/python bench/scrape.py [--customers 100000,300000,1000000] [--shards 1]
                                     [--days 120] [--repeat 3] [--json]

Starts its own Redis (``retention.runtime``, not durable) and loads synthetic customers
straight through :meth:`store.store.Store.apply_batch`, without Kafka: every customer has
one to three events (orders and logins) on days spread over the last ``--days`` days. The
sizes are loaded one after the other into the same store, each adding customers to reach
the next size. At each size it times, ``--repeat`` times each:

- ``rows``: the current day, week and month rows (:meth:`store.periods.Periods.row` as a
  scrape calls it), with the default churn window;
- ``cohorts``: the recent monthly cohorts a scrape reports;
- ``snapshot``: a whole :func:`retention.snapshot.read_snapshot` without a broker;
- ``uncached``: the same rows computed without the window cache (the cost of the first
  scrape after a day begins, and what every scrape paid before the cache);
- ``year``: the day rows of the 365 days before now, as ``retention metrics --period day``
  counts them (every row read afresh: none is stored).

The first scrape at a size fills the window cache; the figures are those of the scrapes
after it (each after one more batch of events, so the current day really changed).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

from redis.asyncio import Redis

from contract.events import LoginEvent, OrderEvent
from processors.windows import PERIODS, period_start
from retention import runtime
from retention.config import Settings
from retention.metric_families import COHORT_MONTHS
from retention.snapshot import read_snapshot
from store.periods import Periods
from store.store import Store, accepted_record

PREFIX = "bench:"
BATCH = 5000
#: the clock of the scrapes: the activity ends the day before
NOW = datetime(2026, 6, 15, 12, 0, tzinfo=UTC)


def customer_records(first: int, last: int, days: int, offset: int, seed: int) -> list[list[str]]:
    """Records of customers ``first`` to ``last - 1``: one to three events each."""
    rng = random.Random(seed)
    end_ms = int(period_start(NOW, "day").timestamp() * 1000)
    span_ms = days * 86_400_000
    records: list[list[str]] = []
    for n in range(first, last):
        cid = f"c{n}"
        for k in range(1 + n % 3):
            ts = datetime.fromtimestamp((end_ms - rng.randrange(span_ms)) / 1000, UTC)
            offset += 1
            if k % 2:
                login = LoginEvent.model_construct(
                    type="login", event_id=f"l{n}.{k}", customer_id=cid, ts=ts
                )
                records.append(accepted_record(login, "logins", 0, offset))
            else:
                order = OrderEvent.model_construct(
                    type="order",
                    event_id=f"o{n}.{k}",
                    customer_id=cid,
                    ts=ts,
                    amount=10.0 + n % 50,
                    currency=None,
                    status="placed",
                )
                records.append(accepted_record(order, "orders", 0, offset))
    return records


async def load(store: Store, records: list[list[str]]) -> float:
    started = time.perf_counter()
    for i in range(0, len(records), BATCH):
        await store.apply_batch(records[i : i + BATCH], now_ms=int(NOW.timestamp() * 1000))
    return time.perf_counter() - started


async def timed(action: Callable[[], Awaitable[object]]) -> float:
    started = time.perf_counter()
    await action()
    return time.perf_counter() - started


async def measure(
    redis: Redis, settings: Settings, store: Store, repeat: int, offset: int, seed: int
) -> dict[str, float]:
    periods = Periods(redis, PREFIX)
    churn = settings.churn_after_days

    async def rows(cached: bool) -> None:
        for period in PERIODS:
            await periods.row(period, period_start(NOW, period), churn, cached=cached)

    year = [period_start(NOW, "day") - timedelta(days=d) for d in range(365, 0, -1)]

    async def day_rows() -> None:
        await periods.rows_of("day", year, churn)

    async def cohorts() -> None:
        await periods.cohorts("month", NOW, last=COHORT_MONTHS)

    async def snapshot() -> None:
        await read_snapshot(settings, redis, None, NOW)

    await rows(True)  # fills the cache
    found: dict[str, list[float]] = {
        "rows": [], "cohorts": [], "snapshot": [], "uncached": [], "year": []
    }  # fmt: skip
    for i in range(repeat):
        # a few events of today between scrapes, as live traffic would bring
        await load(store, today_records(offset + i * 100, seed + i))
        found["rows"].append(await timed(lambda: rows(True)))
        found["cohorts"].append(await timed(cohorts))
        found["snapshot"].append(await timed(snapshot))
        found["uncached"].append(await timed(lambda: rows(False)))
        found["year"].append(await timed(day_rows))
    return {name: statistics.median(times) for name, times in found.items()}


def today_records(offset: int, seed: int) -> list[list[str]]:
    rng = random.Random(seed)
    ts = NOW - timedelta(minutes=1)
    return [
        accepted_record(
            LoginEvent.model_construct(
                type="login", event_id=f"t{seed}.{i}", customer_id=f"c{rng.randrange(1000)}", ts=ts
            ),
            "logins",
            1,
            offset + i,
        )
        for i in range(50)
    ]


async def run(args: argparse.Namespace) -> list[dict[str, float]]:
    sizes = [int(s) for s in args.customers.split(",")]
    out: list[dict[str, float]] = []
    with tempfile.TemporaryDirectory(prefix="bench-scrape-") as tmp:
        process, url = runtime.start_redis(Path(tmp) / "data", Path(tmp), durable=False)
        try:
            settings = Settings(redis_url=url, key_prefix=PREFIX, shards=args.shards)
            redis = Redis.from_url(url, decode_responses=True)
            store = Store(redis, PREFIX, shards=args.shards, writer=True)
            loaded, offset = 0, 0
            for size in sizes:
                records = customer_records(loaded, size, args.days, offset, seed=size)
                offset += len(records)
                load_s = await load(store, records)
                loaded = size
                figures = await measure(redis, settings, store, args.repeat, 10**9, seed=size)
                memory = int((await redis.info("memory"))["used_memory"])
                row = {"customers": size, "load_s": load_s, "used_memory": memory, **figures}
                out.append(row)
                print(
                    f"{size:>10,} customers  rows {figures['rows'] * 1000:8.1f} ms  "
                    f"uncached {figures['uncached'] * 1000:8.1f} ms  "
                    f"cohorts {figures['cohorts'] * 1000:8.1f} ms  "
                    f"snapshot {figures['snapshot'] * 1000:8.1f} ms  "
                    f"year of day rows {figures['year'] * 1000:8.1f} ms  "
                    f"(loaded {len(records):,} events in {load_s:.0f} s)",
                    file=sys.stderr,
                    flush=True,
                )
            await redis.aclose()
        finally:
            process.stop()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", default="100000,300000,1000000")
    parser.add_argument("--shards", type=int, default=1)
    parser.add_argument("--days", type=int, default=120)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    out = asyncio.run(run(args))
    if args.json:
        print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
