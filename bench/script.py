"""Redis time of the batch script alone: the throughput bench's events, no worker.

    .venv/bin/python bench/script.py [--events 100000] [--customers 20000] [--batch 1000]
                                     [--shards 1] [--repeat 3]

Builds the order events of ``bench/throughput.py`` (same generator and seed), applies them
through :meth:`store.store.Store.apply_batch` in batches of ``--batch`` on a fresh Redis,
and reads the script's time from Redis's own counters (INFO commandstats), so the figure
leaves out the client and the evaluations that share the script counters in a worker run.

Each repeat times the events twice: into a fresh store, and into a store that has run for
a while, whose dedupe already holds ``--history`` digests in each bucket of the horizon
and in one bucket past it (logins of other customers, written first and not timed), as a
store does once it has seen a week of traffic: the lookups span the whole horizon and the
digests past it are swept. Prints µs per event for every repeat, and the memory by key
family after the last fresh run.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from redis.asyncio import Redis
from throughput import (
    Memory,
    Run,
    build_messages,
    key_families,
    redis_cpu_seconds,
    render_memory,
    script_seconds,
    used_memory,
)

from retention import runtime
from store.store import DEDUPE_BUCKETS, Store, accepted_record
from streams.events import Rejection, build_event, parse_event


def records(events: int, customers: int, seed: int) -> list[list[str]]:
    out = []
    for offset, (key, value) in enumerate(build_messages(events, customers, seed)):
        parsed = parse_event(value, topic_type="order", key=key)
        assert not isinstance(parsed, Rejection)
        out.append(accepted_record(parsed, "orders", 0, offset, stamp_ms=offset))
    return out


def history(per_bucket: int) -> list[list[str]]:
    """Logins of customers of their own, on a partition of their own."""
    out = []
    for n in range(per_bucket * (DEDUPE_BUCKETS + 1)):
        event = build_event(
            {"event_id": f"h{n}", "customer_id": f"h-{n % 5000}", "ts": 1, "type": "login"}
        )
        out.append(accepted_record(event, "logins", 1, n))
    return out


async def one_run(
    redis: Redis,
    recs: Sequence[Sequence[str]],
    batch: int,
    shards: int,
    prefix: str,
    past: Sequence[Sequence[str]] = (),
) -> tuple[float, float, Store, int]:
    store = Store(redis, prefix, shards=shards, writer=True)
    now_ms = int(time.time() * 1000)
    buckets = DEDUPE_BUCKETS + 1
    per_bucket = len(past) // buckets
    for n in range(buckets):  # the oldest bucket first: it has left the horizon
        part = past[n * per_bucket : (n + 1) * per_bucket]
        bucket_ms = now_ms - (buckets - n) * store.bucket_ms
        for start in range(0, len(part), batch):
            await store.apply_batch(part[start : start + batch], now_ms=bucket_ms)
    before_mem = await used_memory(redis)
    before, cpu_before = await script_seconds(redis), await redis_cpu_seconds(redis)
    for start in range(0, len(recs), batch):
        await store.apply_batch(recs[start : start + batch], now_ms=now_ms)
    busy = await script_seconds(redis) - before
    cpu = await redis_cpu_seconds(redis) - cpu_before
    return busy * 1e6 / len(recs), cpu * 1e6 / len(recs), store, before_mem


async def main_async(args: argparse.Namespace, redis_url: str) -> None:
    recs = records(args.events, min(args.customers, args.events), args.seed)
    redis = Redis.from_url(redis_url, decode_responses=True)
    try:
        past = history(args.history)
        figures, cpu_figures, running = [], [], []
        store, before_mem = None, 0
        for n in range(args.repeat):
            running.append((await one_run(redis, recs, args.batch, args.shards, f"h{n}:", past))[0])
            us, cpu_us, store, before_mem = await one_run(
                redis, recs, args.batch, args.shards, f"s{n}:"
            )
            figures.append(us)
            cpu_figures.append(cpu_us)
        assert store is not None
        print(
            f"{args.events:,} order events, {args.customers:,} customers, batches of "
            f"{args.batch}, {args.shards} shard(s)"
        )
        print("Redis us per event, script time / events: " + " ".join(f"{f:.1f}" for f in figures))
        print(
            f"  the same, {args.history:,} digests in each bucket of the horizon and one "
            "past it: " + " ".join(f"{f:.1f}" for f in running)
        )
        print(
            "Redis us per event, main thread CPU / events: "
            + " ".join(f"{f:.1f}" for f in cpu_figures)
        )
        memory = Memory(
            used_before=before_mem,
            used_after=await used_memory(redis),
            customers=await store.customer_count(),
            families=await key_families(redis, store.prefix),
            sample_customer="",
            sample_keys={},
        )
        run = Run("script", "pipeline", "-", args.repeat - 1, args.events, 0, 0, 0, None, 0)
        run.memory = memory
        print("\n".join(render_memory(run)[:-1]))
    finally:
        await redis.aclose()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--customers", type=int, default=20_000)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--shards", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--history", type=int, default=20_000)
    args = parser.parse_args(argv)
    log_dir = Path(tempfile.mkdtemp(prefix="retention-script-bench-"))
    try:
        process, url = runtime.start_redis(log_dir / "redis", log_dir, durable=False)
        try:
            asyncio.run(main_async(args, url))
        finally:
            process.stop(10)
    finally:
        shutil.rmtree(log_dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
