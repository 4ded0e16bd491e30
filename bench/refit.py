"""What a live refit costs at millions of buyers: the fit grid and the sample, against
reading every customer, on a fresh Redis.

    .venv/bin/python bench/refit.py [--customers 1000000 10000000] [--old 100000]

Synthetic buyers over two years: first order day uniform, a lifetime exponential (mean 180
days), a gamma-distributed purchase rate (most buyers never come back), order days spread
over the lifetime, lognormal order values. For each size the bench spreads the buyers over
``--shards`` shards, counts each shard's cells (first day, last day, order days) as the
batch script keeps them and loads them straight into each shard's ``fitgrid`` with HSET
(replaying events through the batch script would take hours at 10M). It also writes the
``od:`` and ``c:`` hashes (and ``ids:next``) of ``--stored`` of those buyers, as earlier
versions of the batch script wrote them (a field each), which the readers still take: the
sample reads a fixed number of customers whatever the store's size. Then
it times :func:`store.models.refit` and prints the report the refit stores: first cold
(no stored fit, the search starts from all parameters 1), then warm (the next day's refit,
started from the fit just stored).

For ``--old`` buyers it writes every customer's hashes and times the per-customer refit the
grid replaces (every ``od:`` and ``c:`` read, then the fit), on the same buyers, and prints
the ratio and whether both give the same P(alive) parameters.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray
from redis.asyncio import Redis

from processors.forecast import ModelOptions, fit_histories
from retention import runtime
from store.models import GRID, fit_report, read_histories, refit
from store.shards import ShardLayout
from store.store import Store

HISTORY_DAYS = 730
AS_OF = date(2024, 12, 31)
Ints = NDArray[np.int64]


@dataclass
class Buyers:
    first: Ints
    last: Ints
    days: Ints
    revenue: Ints  # net revenue in micros
    shard: Ints

    def cells(self, shard: int) -> tuple[Ints, Ints]:
        """A shard's distinct (first, last, days) and how many buyers each."""
        mine = self.shard == shard
        stacked = np.column_stack([self.first[mine], self.last[mine], self.days[mine]])
        rows, counts = np.unique(stacked, axis=0, return_counts=True)
        return rows, counts.astype(np.int64)


def buyers(n: int, shards: int, seed: int) -> Buyers:
    rng = np.random.default_rng(seed)
    end = (AS_OF - date(1970, 1, 1)).days
    first = end - rng.integers(0, HISTORY_DAYS, n)
    life = np.minimum(rng.exponential(180.0, n), end - first).astype(np.int64)
    rate = rng.gamma(0.3, 1 / 30.0, n)  # purchases per day while alive
    repeats = np.minimum(rng.poisson(rate * life), life)
    # the latest of `repeats` uniform days in the lifetime, then distinct days counted
    span = np.where(repeats > 0, np.ceil(life * rng.random(n) ** (1 / np.maximum(repeats, 1))), 0)
    last = first + span.astype(np.int64)
    days = 1 + np.minimum(repeats, last - first)
    per_order = rng.lognormal(np.log(40.0), 0.6, n)
    revenue = (per_order * days * rng.uniform(0.7, 1.3, n) * 1e6).astype(np.int64)
    return Buyers(first, last, days, revenue, rng.integers(0, shards, n))


async def load_grid(redis: Redis, layout: ShardLayout, b: Buyers, chunk: int = 20_000) -> int:
    cells = 0
    for shard, home in enumerate(layout.prefixes):
        rows, counts = b.cells(shard)
        cells += len(counts)
        for at in range(0, len(counts), chunk):
            part: dict[Any, Any] = {
                f"{f}:{la}:{d}": c
                for (f, la, d), c in zip(
                    rows[at : at + chunk].tolist(), counts[at : at + chunk].tolist(), strict=True
                )
            }
            await redis.hset(home + GRID, mapping=part)
    return cells


async def load_customers(
    redis: Redis, layout: ShardLayout, b: Buyers, count: int, seed: int, chunk: int = 2_000
) -> None:
    """The first ``count`` buyers' ``od:`` and ``c:`` hashes, in their shards, and each
    shard's ``ids:next``."""
    rng = np.random.default_rng(seed)
    numbered: dict[str, int] = dict.fromkeys(layout.prefixes, 0)
    for at in range(0, count, chunk):
        async with redis.pipeline(transaction=False) as pipe:
            for i in range(at, min(at + chunk, count)):
                home = layout.prefixes[int(b.shard[i])]
                cid = f"customer-{i:08d}"
                first, last, n = int(b.first[i]), int(b.last[i]), int(b.days[i])
                days = {first, last}
                if n > 2:
                    inner = rng.choice(np.arange(first + 1, last), n - 2, replace=False)
                    days |= set(inner.tolist())
                pipe.hset(home + "od:" + cid, mapping={str(d): 1 for d in days})
                fields = {"pm": int(b.revenue[i]), "rm": 0, "ix": numbered[home]}
                pipe.hset(home + "c:" + cid, mapping=fields)
                numbered[home] += 1
            await pipe.execute()
    for home, n in numbered.items():
        await redis.set(home + "ids:next", n)


def shard_of_name(b: Buyers, layout: ShardLayout, count: int) -> None:
    """Put each stored buyer in the shard its name hashes to, as the store would."""
    for i in range(count):
        b.shard[i] = layout.shard_of(f"customer-{i:08d}")


async def measure_size(url: str, n: int, shards: int, stored: int) -> dict[str, Any]:
    redis = Redis.from_url(url, decode_responses=True)
    try:
        await redis.flushdb()
        prefix = f"bench{n}:"
        layout = ShardLayout.of(prefix, shards)
        await redis.set(prefix + "shards", str(shards))
        b = buyers(n, shards, seed=n)
        kept = min(stored, n)
        shard_of_name(b, layout, kept)
        cells = await load_grid(redis, layout, b)
        await load_customers(redis, layout, b, kept, seed=1)
        memory = sum([await redis.memory_usage(h + GRID, samples=0) or 0 for h in layout.prefixes])
        store = Store(redis, prefix, ("order",))
        fit = await refit(store, AS_OF, ModelOptions())
        cold = await fit_report(store)
        # the next refit, a day later: every buyer a day older, started from the stored fit
        later = await refit(store, AS_OF + timedelta(days=1), ModelOptions())
        warm = await fit_report(store)
        assert fit is not None and later is not None and cold is not None and warm is not None
        assert (cold["start"], warm["start"]) == ("cold", "warm")
        size = {"buyers": n, "grid_fields": cells, "grid_mb": memory / 1e6}
        return {"cold": {**size, **cold}, "warm": {**size, **warm}}
    finally:
        await redis.aclose()


async def measure_old(url: str, n: int, shards: int) -> dict[str, Any]:
    """Per-customer refit against the grid refit on the same ``n`` buyers."""
    redis = Redis.from_url(url, decode_responses=True)
    try:
        await redis.flushdb()
        prefix = "old:"
        layout = ShardLayout.of(prefix, shards)
        await redis.set(prefix + "shards", str(shards))
        b = buyers(n, shards, seed=n)
        shard_of_name(b, layout, n)
        await load_grid(redis, layout, b)
        await load_customers(redis, layout, b, n, seed=1)
        store = Store(redis, prefix, ("order",))
        grid_fit = await refit(store, AS_OF, ModelOptions())
        report = await fit_report(store)
        started = time.monotonic()
        histories = await read_histories(store, AS_OF)
        read = time.monotonic() - started
        reference = fit_histories(histories, AS_OF, ModelOptions())
        total = time.monotonic() - started
        assert grid_fit is not None and report is not None
        return {
            "read_s": read,
            "refit_s": total,
            "grid_refit_s": report["seconds"],
            "same": grid_fit.params == reference.params,
        }
    finally:
        await redis.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--customers", type=int, nargs="+", default=[1_000_000])
    parser.add_argument("--old", type=int, default=100_000)
    parser.add_argument("--shards", type=int, default=12)
    parser.add_argument("--stored", type=int, default=60_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        process, url = runtime.start_redis(Path(tmp), Path(tmp), durable=False)
        try:
            print(
                f"{'buyers':>11} {'start':>5} {'grid fields':>11} {'rows':>9} {'grid MB':>8} "
                f"{'sampled':>8} {'read s':>7} {'fit s':>6} {'refit s':>8}"
            )
            results = []
            for n in args.customers:
                both = asyncio.run(measure_size(url, n, args.shards, args.stored))
                results.append(both["cold"])
                for start, got in both.items():
                    print(
                        f"{n:>11,} {start:>5} {got['grid_fields']:>11,} {got['cells']:>9,} "
                        f"{got['grid_mb']:>8.1f} {got['sampled']:>8,} "
                        f"{got['read_seconds']:>7.2f} {got['fit_seconds']:>6.2f} "
                        f"{got['seconds']:>8.2f}"
                    )
            if args.old:
                old = asyncio.run(measure_old(url, args.old, args.shards))
                print(
                    f"\nper-customer refit at {args.old:,} buyers: read {old['read_s']:.2f} s, "
                    f"refit {old['refit_s']:.2f} s; grid refit on the same buyers "
                    f"{old['grid_refit_s']:.2f} s ({old['refit_s'] / old['grid_refit_s']:.1f}x); "
                    f"same P(alive) parameters: {'yes' if old['same'] else 'no'}"
                )
                for got in results:
                    print(
                        f"grid refit at {got['buyers']:,} buyers / per-customer refit at "
                        f"{args.old:,}: {got['seconds'] / old['refit_s']:.2f}"
                    )
        finally:
            process.stop()


if __name__ == "__main__":
    main()
