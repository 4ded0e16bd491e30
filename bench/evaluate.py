"""Customers evaluated per second by one evaluator (one process, one core).

    .venv/bin/python bench/evaluate.py [--customers 100000] [--chunk 1000] [--shards 1]
                                       [--profile 20]

Starts its own Redis (``retention.runtime``, not durable), loads synthetic buyers straight
through :meth:`store.store.Store.apply_batch` (one to four orders and a login each, over a
year), fits the models on them and keeps the fit and the high-value threshold, as the
leader would, so every evaluation computes P(alive) and CLTV. Then it times
``Evaluator.run_once(now, chunk)`` in a loop until no customer is due, and prints
customers/s. ``--profile N`` runs cProfile over the first N chunks and prints the
functions taking the most time (cumulative).
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import json
import pstats
import random
import sys
import tempfile
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

from redis.asyncio import Redis

from contract.events import LoginEvent, OrderEvent
from processors.alerts import Alert
from processors.forecast import ModelOptions, fit_histories
from processors.lifecycle import LifecyclePolicy
from processors.risk import RiskPolicy
from retention import runtime
from store.evaluations import Evaluator, update_high_value_threshold
from store.models import read_histories, save_fit
from store.store import Store, accepted_record

PREFIX = "bench:"
BATCH = 5000
NOW = datetime(2026, 6, 15, 12, 0, tzinfo=UTC)
#: buyers the fit uses: the fit's cost is not what this measures
FIT_SAMPLE = 20_000


def purchase_days(rng: random.Random) -> list[float]:
    """Days ago of one buyer's orders, drawn as the BG/NBD story goes: a first order in the
    last year, then orders at a rate of its own until it drops out after some order."""
    rate = rng.gammavariate(0.6, 1 / 40)  # orders per day
    dropout = rng.betavariate(1.0, 3.0)
    first = rng.uniform(1, 365)
    days, t = [first], first
    while rng.random() >= dropout:
        t -= rng.expovariate(rate) if rate > 0 else first
        if t < 1:
            break
        days.append(t)
    return days


def records(customers: int, seed: int) -> list[list[str]]:
    rng = random.Random(seed)
    out: list[list[str]] = []
    offset = 0
    for n in range(customers):
        cid = f"c{n}"
        for k, ago in enumerate(purchase_days(rng)):
            order = OrderEvent.model_construct(
                type="order",
                event_id=f"o{n}.{k}",
                customer_id=cid,
                ts=NOW - timedelta(days=ago),
                amount=round(rng.uniform(5, 300), 2),
                currency=None,
                status="placed",
            )
            out.append(accepted_record(order, "orders", 0, offset))
            offset += 1
        if rng.random() < 0.5:
            ts = NOW - timedelta(days=rng.uniform(0, 120))
            login = LoginEvent.model_construct(
                type="login", event_id=f"l{n}", customer_id=cid, ts=ts
            )
            out.append(accepted_record(login, "logins", 0, offset))
            offset += 1
    return out


async def prepare(redis: Redis, customers: int, shards: int) -> Store:
    store = Store(redis, PREFIX, shards=shards, writer=True)
    loaded = records(customers, seed=customers)
    started = time.perf_counter()
    for i in range(0, len(loaded), BATCH):
        await store.apply_batch(loaded[i : i + BATCH], now_ms=int(NOW.timestamp() * 1000))
    print(
        f"loaded {customers:,} customers ({len(loaded):,} events) in "
        f"{time.perf_counter() - started:.0f} s",
        file=sys.stderr,
    )
    as_of = (NOW - timedelta(days=1)).date()
    histories = await read_histories(store, as_of)
    fit = fit_histories(
        random.Random(1).sample(histories, min(FIT_SAMPLE, len(histories))), as_of, ModelOptions()
    )
    await save_fit(store, fit)
    threshold = await update_high_value_threshold(store, RiskPolicy().high_value_quantile)
    print(
        f"fit {fit.model} on {fit.customers:,} buyers; high-value CLTV {threshold}", file=sys.stderr
    )
    return store


async def evaluate_all(
    evaluator: Evaluator, chunk: int, profile_chunks: int
) -> tuple[int, float, str]:
    done, chunks = 0, 0
    profiler = cProfile.Profile() if profile_chunks else None
    started = time.perf_counter()
    while True:
        if profiler is not None and chunks < profile_chunks:
            profiler.enable()
        n = await evaluator.run_once(NOW, chunk)
        if profiler is not None:
            profiler.disable()
        if not n:
            break
        done += n
        chunks += 1
    seconds = time.perf_counter() - started
    report = ""
    if profiler is not None:
        text = io.StringIO()
        pstats.Stats(profiler, stream=text).sort_stats("cumulative").print_stats(35)
        report = text.getvalue()
    return done, seconds, report


async def run(args: argparse.Namespace) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="bench-evaluate-") as tmp:
        process, url = runtime.start_redis(Path(tmp) / "data", Path(tmp), durable=False)
        try:
            redis = Redis.from_url(url, decode_responses=True)
            store = await prepare(redis, args.customers, args.shards)
            alerts = 0

            async def publish(batch: Sequence[Alert]) -> None:
                nonlocal alerts
                alerts += len(batch)

            evaluator = Evaluator(store, RiskPolicy(), LifecyclePolicy(), publish)
            done, seconds, report = await evaluate_all(evaluator, args.chunk, args.profile)
            await redis.aclose()
        finally:
            process.stop()
    if report:
        print(report, file=sys.stderr)
    rate = done / seconds if seconds else 0.0
    print(
        f"evaluated {done:,} customers in {seconds:.1f} s: {rate:,.0f} customers/s "
        f"({alerts:,} alerts){' with profiling' if args.profile else ''}",
        file=sys.stderr,
    )
    return {"customers": done, "seconds": seconds, "per_second": rate, "alerts": alerts}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, default=100_000)
    parser.add_argument("--chunk", type=int, default=1000)
    parser.add_argument("--shards", type=int, default=1)
    parser.add_argument("--profile", type=int, default=0, metavar="CHUNKS")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    out = asyncio.run(run(args))
    if args.json:
        print(json.dumps(out))


if __name__ == "__main__":
    main()
