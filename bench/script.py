"""Redis time of the batch script alone: the throughput bench's events, no worker.

    .venv/bin/python bench/script.py [--events 100000] [--customers 20000] [--batch 1000]
                                     [--shards 1] [--repeat 3] [--no-live] [--no-floor]

Builds the order events of ``bench/throughput.py`` (same generator and seed), applies them
through :meth:`store.store.Store.apply_batch` in batches of ``--batch`` on a fresh Redis,
and reads the script's time from Redis's own counters (INFO commandstats), so the figure
leaves out the client and the evaluations that share the script counters in a worker run.

Each repeat times the events twice: into a fresh store, and into a store that has run for
a while, whose dedupe already holds ``--history`` digests in each bucket of the horizon
and in one bucket past it (logins of other customers, written first and not timed), as a
store does once it has seen a week of traffic: the lookups span the whole horizon and the
digests past it are swept. Then, into a third store that holds those events, one more
order per customer from the last hour (``--live``): a live stream's events, whose
customers have a history and share the current day and mostly the week and month. Prints
µs per event for every repeat, and the memory by key family after the last fresh run.

With ``--floor`` (the default), a first run also records every Redis call the script
makes, in order; a script with no logic then makes the same calls again on a fresh store.
The two times, taken one after the other, part what the calls cost (argument and reply
conversion included) from what the script's own Lua work costs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import shutil
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from common import (
    Memory,
    build_messages,
    customer_ids,
    key_families,
    redis_cpu_seconds,
    render_memory,
    script_seconds,
    used_memory,
)
from redis.asyncio import Redis

import store.store as store_module
from contract.events import Rejection, build_event, parse_event
from retention import runtime
from store.store import DEDUPE_BUCKETS, Store, accepted_record


def records(events: int, customers: int, seed: int) -> list[list[str]]:
    out = []
    for offset, (key, value) in enumerate(build_messages(events, customers, seed)):
        parsed = parse_event(value, topic_type="order", key=key)
        assert not isinstance(parsed, Rejection)
        out.append(accepted_record(parsed, "orders", 0, offset, stamp_ms=offset))
    return out


def live(customers: int, first_offset: int, seed: int) -> list[list[str]]:
    """One order per customer within the last hour, after the events of :func:`records`."""
    rng = random.Random(seed)
    now = time.time()
    out = []
    for n, customer in enumerate(customer_ids(customers)):
        event = build_event(
            {
                "event_id": f"live-{n}",
                "customer_id": customer,
                "ts": round(now - rng.uniform(0, 3600), 3),
                "type": "order",
                "amount": round(rng.uniform(5, 250), 2),
                "currency": "USD",
                "status": "placed",
            }
        )
        offset = first_offset + n
        out.append(accepted_record(event, "orders", 0, offset, stamp_ms=offset))
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


#: Added to the batch script for ``--floor``: every Redis call it makes is also kept, in
#: order, and the batch's list of calls is pushed to ``P calls`` before it returns.
RECORDER = """
local recorded_calls = {}
local function recorded_call(...)
  recorded_calls[#recorded_calls + 1] = {...}
  return redis.call(...)
end
"""
RECORDED_RETURN = "return {applied, duplicates, redelivered, rejected, gap_list, overflows}"

#: Makes a batch's recorded calls again, with none of the script's logic around them.
REPLAY = """
local calls = cjson.decode(ARGV[1])
for i = 1, #calls do redis.call(unpack(calls[i])) end
return #calls
"""


def recording(source: str) -> str:
    """The batch script, keeping a list of the Redis calls each batch makes."""
    shebang, _, body = source.partition("\n")
    body = body.replace("redis.call(", "recorded_call(")
    if body.count(RECORDED_RETURN) != 1:
        raise SystemExit("the batch script's last line changed: update RECORDED_RETURN")
    push = "redis.call('RPUSH', P .. 'calls', cjson.encode(recorded_calls))\n"
    body = body.replace(RECORDED_RETURN, push + RECORDED_RETURN)
    return "\n".join((shebang, RECORDER, body))


async def unlink_prefix(redis: Redis, prefix: str) -> None:
    """Deletes the keys under ``prefix``, and waits until Redis has freed them, so that
    the memory figures of the runs after are not lowered by the freeing."""
    doomed = [key async for key in redis.scan_iter(match=prefix + "*", count=1000)]
    for start in range(0, len(doomed), 1000):
        await redis.unlink(*doomed[start : start + 1000])
    while int((await redis.info("memory")).get("lazyfree_pending_objects", 0)):
        await asyncio.sleep(0.05)


@dataclass
class Floor:
    script_us: float
    replay_us: float
    #: calls per event by command and key family ("SETBIT buy")
    mix: dict[str, float]


def call_mix(batches: Sequence[str | bytes], prefix: str, events: int) -> dict[str, float]:
    """Recorded calls per event by command and the family of their key."""
    counts: Counter[str] = Counter()
    for calls_of_batch in batches:
        for call in json.loads(calls_of_batch):
            key = str(call[1]) if len(call) > 1 else ""
            family = key.removeprefix(prefix).partition(":")[0] if key.startswith(prefix) else ""
            counts[f"{call[0]} {family}".strip()] += 1
    return {name: n / events for name, n in counts.most_common()}


async def floor_run(redis: Redis, recs: Sequence[Sequence[str]], batch: int, prefix: str) -> Floor:
    """The script's µs per event, and those of the same Redis calls (recorded in a first
    run) made again by a script with no logic, one after the other on a fresh store of one
    shard; and the calls per event."""
    original = store_module._SCRIPT
    store_module._SCRIPT = recording(original)
    try:
        recorder = Store(redis, prefix, shards=1, writer=True)
    finally:
        store_module._SCRIPT = original
    now_ms = int(time.time() * 1000)
    for start in range(0, len(recs), batch):
        await recorder.apply_batch(recs[start : start + batch], now_ms=now_ms)
    # as bytes: a call's arguments may be binary (a cohort bitmap moved to a lower start)
    where = redis.connection_pool.connection_kwargs
    raw = Redis(host=where["host"], port=where["port"], db=where.get("db", 0))
    try:
        batches = await raw.lrange(prefix + "calls", 0, -1)
    finally:
        await raw.aclose()
    mix = call_mix([b.decode(errors="replace") for b in batches], prefix, len(recs))
    await unlink_prefix(redis, prefix)

    store = Store(redis, prefix, shards=1, writer=True)
    before = await script_seconds(redis)
    for start in range(0, len(recs), batch):
        await store.apply_batch(recs[start : start + batch], now_ms=now_ms)
    script_us = (await script_seconds(redis) - before) * 1e6 / len(recs)
    await unlink_prefix(redis, prefix)

    replay = redis.register_script(REPLAY)
    before = await script_seconds(redis)
    for calls_of_batch in batches:
        await replay(keys=[], args=[calls_of_batch])
    replay_us = (await script_seconds(redis) - before) * 1e6 / len(recs)
    await unlink_prefix(redis, prefix)
    return Floor(script_us, replay_us, mix)


async def one_run(
    redis: Redis,
    recs: Sequence[Sequence[str]],
    batch: int,
    shards: int,
    prefix: str,
    past: Sequence[Sequence[str]] = (),
    then: Sequence[Sequence[str]] = (),
) -> tuple[float, float, Store, int, float]:
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
    then_us = 0.0
    if then:
        then_before = await script_seconds(redis)
        for start in range(0, len(then), batch):
            await store.apply_batch(then[start : start + batch], now_ms=now_ms)
        then_us = (await script_seconds(redis) - then_before) * 1e6 / len(then)
    return busy * 1e6 / len(recs), cpu * 1e6 / len(recs), store, before_mem, then_us


async def main_async(args: argparse.Namespace, redis_url: str) -> None:
    recs = records(args.events, min(args.customers, args.events), args.seed)
    redis = Redis.from_url(redis_url, decode_responses=True)
    try:
        past = history(args.history)
        customers = min(args.customers, args.events)
        then = live(customers if args.live else 0, len(recs), args.seed)
        figures, cpu_figures, running, live_figures, floors = [], [], [], [], []
        store, before_mem = None, 0
        for n in range(args.repeat):
            running.append((await one_run(redis, recs, args.batch, args.shards, f"h{n}:", past))[0])
            if then:
                ran = await one_run(redis, recs, args.batch, args.shards, f"l{n}:", then=then)
                live_figures.append(ran[4])
            if args.floor:
                floors.append(await floor_run(redis, recs, args.batch, f"f{n}:"))
            us, cpu_us, store, before_mem, _ = await one_run(
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
        if then:
            print(
                f"  then {len(then):,} live orders, one per customer in the last hour: "
                + " ".join(f"{f:.1f}" for f in live_figures)
            )
        if floors:
            mix = floors[-1].mix
            print(
                f"  the same {sum(mix.values()):.1f} Redis calls per event, made again by a "
                "script with no logic: "
                + " ".join(f"{f.replay_us:.1f} ({f.script_us:.1f})" for f in floors)
                + " (in brackets, the script in the same run)"
            )
            print(
                "    calls per event by command and key family: "
                + ", ".join(f"{name} {n:.2f}" for name, n in mix.items() if n >= 0.05)
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
        print("\n".join(render_memory(f"script run {args.repeat - 1}", memory)[:-1]))
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
    parser.add_argument(
        "--floor",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also time the script's Redis calls made again without its logic",
    )
    parser.add_argument(
        "--live",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="time one order per customer from the last hour after the fresh run",
    )
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
