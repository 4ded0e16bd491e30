"""What the benchmarks share: the order events they send, producing them to Kafka,
reading Redis's own counters (memory, script time, CPU), and the frame of a run (the
options every run takes, its log folder, its report).

Each benchmark is one file beside this one and imports it as ``common`` (the benchmarks run
as scripts, so this folder is on the path); none of them imports the tests.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import hashlib
import json
import logging
import os
import random
import shutil
import sys
import tempfile
import time
import uuid
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from aiokafka import AIOKafkaProducer
from aiokafka.partitioner import DefaultPartitioner
from redis.asyncio import Redis

from contract.events import Rejection, parse_event
from processors.windows import period_days
from retention import runtime
from retention.config import Settings
from store.store import Store
from streams.topics import Topics

#: The best of the settings tried (see bench/README.md), and still within the noise.
TUNED: dict[str, str] = {
    "STREAM_BUFFER_MAXSIZE": "16384",
    "RETENTION_EVENT_LOOP": "uvloop",
}


PRODUCE_BATCH_BYTES = 64 * 1024


POLL_SECONDS = 0.1


SAMPLE_VALIDATED = 1000


MEMORY_PIPELINE_CHUNK = 2000


DAY_SECONDS = 86400.0


class BenchError(RuntimeError):
    """A run did not finish; the message says which and shows the end of its log."""


@dataclass(frozen=True)
class KeyFamily:
    keys: int
    bytes: int


@dataclass
class Memory:
    used_before: int
    used_after: int
    customers: int
    families: dict[str, KeyFamily]
    sample_customer: str
    sample_keys: dict[str, int]

    @property
    def growth(self) -> int:
        return self.used_after - self.used_before

    @property
    def per_customer(self) -> float:
        return self.growth / max(1, self.customers)


def customer_ids(customers: int) -> list[str]:
    return [f"c-{n:06d}" for n in range(customers)]


def order_payload(rng: random.Random, index: int, customer: str, now: float) -> bytes:
    status = rng.choices(("placed", "cancelled", "refunded"), weights=(94, 4, 2))[0]
    event = {
        "event_id": f"o-{index}",
        "customer_id": customer,
        "ts": round(now - rng.uniform(0, 90 * DAY_SECONDS), 3),
        "type": "order",
        "amount": round(rng.uniform(5, 250), 2),
        "currency": "USD",
        "status": status,
    }
    return json.dumps(event, separators=(",", ":")).encode()


def build_messages(events: int, customers: int, seed: int) -> list[tuple[bytes, bytes]]:
    """(key, value) pairs; customers take turns so that every one of them is tracked."""
    rng = random.Random(seed)
    ids = customer_ids(customers)
    now = time.time()
    return [
        (ids[i % customers].encode(), order_payload(rng, i, ids[i % customers], now))
        for i in range(events)
    ]


def check_sample(messages: Sequence[tuple[bytes, bytes]]) -> None:
    """Validate a sample with the worker's own parser; the rest have the same shape."""
    for key, value in messages[:SAMPLE_VALIDATED]:
        parsed = parse_event(value, topic_type="order", key=key)
        if isinstance(parsed, Rejection):
            raise BenchError(f"generated an invalid event ({parsed.reason}): {value!r}")


def split_by_partition(
    messages: Sequence[tuple[bytes, bytes]], partitions: int
) -> dict[int, list[tuple[bytes, bytes]]]:
    """The partitions the default producer would choose, in message order."""
    partitioner = DefaultPartitioner()
    all_partitions = list(range(partitions))
    chosen: dict[bytes, int] = {}
    out: dict[int, list[tuple[bytes, bytes]]] = {p: [] for p in all_partitions}
    for key, value in messages:
        if key not in chosen:
            chosen[key] = partitioner(key, all_partitions, all_partitions)
        out[chosen[key]].append((key, value))
    return out


async def send_partition(
    producer: AIOKafkaProducer, topic: str, partition: int, items: Sequence[tuple[bytes, bytes]]
) -> None:
    futures: list[asyncio.Future[Any]] = []
    batch = producer.create_batch()
    for key, value in items:
        if batch.append(key=key, value=value, timestamp=None) is None:
            futures.append(await producer.send_batch(batch, topic, partition=partition))
            batch = producer.create_batch()
            batch.append(key=key, value=value, timestamp=None)
    if batch.record_count():
        futures.append(await producer.send_batch(batch, topic, partition=partition))
    await asyncio.gather(*futures)


async def produce(
    bootstrap: str, topic: str, by_partition: Mapping[int, Sequence[tuple[bytes, bytes]]]
) -> float:
    """Send pre-encoded batches to all partitions at once; returns the seconds taken."""
    started = time.monotonic()
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, acks=1, max_batch_size=PRODUCE_BATCH_BYTES
    )
    await producer.start()
    try:
        await asyncio.gather(
            *(send_partition(producer, topic, p, items) for p, items in by_partition.items())
        )
    finally:
        await producer.stop()
    return time.monotonic() - started


CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of a process so far, from /proc (None where it cannot be
    read: another system, or the process is gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def run_settings(
    tag: str, bootstrap: str, redis_url: str, log_dir: Path, partitions: int, **more: Any
) -> Settings:
    """A run's settings: topics, keys and data directory of its own, named by ``tag``."""
    return Settings(
        kafka_bootstrap=bootstrap,
        redis_url=redis_url,
        data_dir=log_dir / tag,
        topic_prefix=f"{tag}-",
        key_prefix=f"{tag}:",
        partitions=partitions,
        **more,
    )


def log_tail(path: Path, chars: int = 2000) -> str:
    with contextlib.suppress(OSError):
        return path.read_text(errors="replace")[-chars:]
    return ""


async def seen_total(store: Store, topics: Topics) -> int:
    stats = await store.stats()
    return sum(stats.seen(topic) for topic in topics.sources)


async def used_memory(redis: Redis) -> int:
    info = await redis.info("memory")
    return int(info["used_memory"])


async def script_seconds(redis: Redis) -> float:
    """Time Redis has spent running scripts (the worker's batches) since it started."""
    stats = await redis.info("commandstats")
    names = ("cmdstat_evalsha", "cmdstat_eval")
    return sum(float(stats[name]["usec"]) for name in names if name in stats) / 1e6


async def redis_cpu_seconds(redis: Redis) -> float:
    """CPU time of Redis's main thread (INFO cpu): unlike the script times, which are wall
    time, it does not grow when other processes on a busy machine take Redis's core."""
    info = await redis.info("cpu")
    names = ("used_cpu_user_main_thread", "used_cpu_sys_main_thread")
    if all(name in info for name in names):
        return sum(float(info[name]) for name in names)
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


async def memory_usage(redis: Redis, keys: Sequence[str]) -> list[int]:
    sizes: list[int] = []
    for start in range(0, len(keys), MEMORY_PIPELINE_CHUNK):
        async with redis.pipeline(transaction=False) as pipe:
            for key in keys[start : start + MEMORY_PIPELINE_CHUNK]:
                pipe.memory_usage(key, samples=0)
            sizes.extend(int(size or 0) for size in await pipe.execute())
    return sizes


async def key_families(redis: Redis, prefix: str) -> dict[str, KeyFamily]:
    """MEMORY USAGE of every key under ``prefix``, summed by the name before the first ':'."""
    keys = [key async for key in redis.scan_iter(match=f"{prefix}*", count=5000)]
    totals: dict[str, list[int]] = {}
    for key, size in zip(keys, await memory_usage(redis, keys), strict=True):
        family = key[len(prefix) :].split(":", 1)[0]
        entry = totals.setdefault(family, [0, 0])
        entry[0] += 1
        entry[1] += size
    ordered = sorted(totals.items(), key=lambda item: -item[1][1])
    return {name: KeyFamily(keys, size) for name, (keys, size) in ordered}


def render_memory(title: str, m: Memory) -> list[str]:
    """The memory a run added, by key family and for one customer, as report lines."""
    per = max(1, m.customers)
    lines = [
        f"Redis memory ({title}, its own key prefix):",
        f"  used_memory growth {m.growth:,} B / {m.customers:,} customers tracked"
        f" = {m.per_customer:,.0f} B per customer",
        "  MEMORY USAGE by key family:",
    ]
    for name, fam in m.families.items():
        lines.append(
            f"    {name + ':':<9}{fam.keys:>8,} keys{fam.bytes:>13,} B{fam.bytes / per:>8,.0f} B"
            " per customer"
        )
    counted = sum(f.bytes for f in m.families.values())
    lines.append(f"    {'all keys':<22}{counted:>13,} B{counted / per:>8,.0f} B per customer")
    lines.append("    (used_memory also counts the keyspace's own tables, outside MEMORY USAGE)")
    parts = " + ".join(f"{k}: {v} B" for k, v in m.sample_keys.items())
    lines.append(f"  one customer, {m.sample_customer}: {parts} = {sum(m.sample_keys.values())} B")
    return lines


# --- the frame of a run ---------------------------------------------------------------


@dataclass(frozen=True)
class RunOptions:
    """The options every run takes (``add_run_options``); a benchmark's own options extend
    them."""

    seed: int
    as_json: bool
    keep_logs: bool


OptionsT = TypeVar("OptionsT", bound=RunOptions)
ResultT = TypeVar("ResultT")


def add_run_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--seed", type=int, default=7, help="seed of the generated data")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument(
        "--keep-logs", action="store_true", help="keep the logs of the processes the run starts"
    )


def run_options(args: argparse.Namespace) -> dict[str, Any]:
    """The ``RunOptions`` fields from parsed arguments, to construct a benchmark's options."""
    return {"seed": args.seed, "as_json": args.json, "keep_logs": args.keep_logs}


def runtime_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def headline(script: str, elapsed: float) -> str:
    """A report's first line: the benchmark (``__file__``), its time and the cores it had."""
    return f"bench/{Path(script).name}: {elapsed:.0f} s in all, {runtime_cores()} CPU core(s)"


def start_tracker(
    settings: Settings, log_dir: Path, tag: str
) -> tuple[runtime.Process, runtime.Process | None]:
    """One worker with the tuned settings, and with ``settings.evaluation`` ``separate``
    one ``retention evaluator`` beside it, both started at once."""
    env = runtime.settings_env(settings, embedded=True, PYTHONUNBUFFERED="1", **TUNED)
    worker = runtime.start_worker(env, log_dir, f"{tag}-worker")
    if settings.evaluation != "separate":
        return worker, None
    argv = runtime.retention_argv("evaluator", "--log-level", "info")
    return worker, runtime.spawn(f"{tag}-evaluator", argv, log_dir, env)


def run_benchmark(
    options: OptionsT,
    log_prefix: str,
    measure: Callable[[OptionsT, Path], ResultT],
    render: Callable[[OptionsT, ResultT, float], str],
    as_json: Callable[[OptionsT, ResultT, float], str],
) -> int:
    """Run ``measure`` with a fresh log folder and print its report (``as_json`` with
    ``--json``), given the seconds the whole run took; the exit code. A run that fails
    prints why and keeps its logs."""
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s")
    log_dir = Path(tempfile.mkdtemp(prefix=log_prefix))
    started = time.monotonic()
    keep = options.keep_logs
    try:
        result = measure(options, log_dir)
    except (BenchError, runtime.MissingBinary) as exc:
        print(f"benchmark failed: {exc}", file=sys.stderr)
        keep = True
        return 1
    finally:
        if keep:
            print(f"logs in {log_dir}", file=sys.stderr)
        else:
            shutil.rmtree(log_dir, ignore_errors=True)
    output = as_json if options.as_json else render
    print(output(options, result, time.monotonic() - started))
    return 0


# --- synthetic customers, written straight through the batch script ---------------------

DAY_MS = 86_400_000
LOAD_BATCH = 2000


def customer_orders(rng: random.Random, now_ms: int) -> list[tuple[int, int, int]]:
    """A customer's orders over the last year: (time ms, order number, amount micros)."""
    count = rng.choice((1, 1, 1, 2, 2, 3, 4, 6))
    out = []
    for k in range(count):
        ts_ms = now_ms - rng.randrange(365 * DAY_MS)
        out.append((ts_ms, k, rng.randrange(5_000_000, 250_000_000)))
    return out


def order_record(
    customer: str, ts_ms: int, k: int, amount_micros: int, offset: int, partition: int
) -> list[str]:
    """One order in the batch script's 16 fields (the same fields
    ``store.store.accepted_record`` makes from a parsed event)."""
    digest = hashlib.blake2b(f"order\x1f{customer}\x1fo-{k}".encode(), digest_size=8)
    dedupe = base64.b64encode(digest.digest()).decode()[:11]
    amount = str(amount_micros)
    day, week, month = period_days(ts_ms)
    return [
        "o", "orders", str(partition), str(offset),
        dedupe, customer, str(ts_ms), str(day), str(week), str(month),
        "placed", amount, "USD", amount, "", "",
    ]  # fmt: skip


#: Customer ids (``--ids``): ten characters, or a UUID's 36 (what many apps send).
CUSTOMER_IDS: dict[str, Callable[[int], str]] = {
    "short": lambda n: f"c-{n:08d}",
    "uuid": lambda n: str(uuid.UUID(int=n * 0x9E3779B97F4A7C15 % (1 << 128))),
}


def backfill_batches(
    customers: int, seed: int, now_ms: int, name: Callable[[int], str]
) -> Iterator[tuple[list[list[str]], int]]:
    """A year of history replayed at once: each customer's orders together, customers one
    after another, every batch applied at ``now_ms`` (a backfill, or a backtest's load)."""
    rng = random.Random(seed)
    batch: list[list[str]] = []
    offset = 0
    for n in range(customers):
        for ts_ms, k, amount in customer_orders(rng, now_ms):
            batch.append(order_record(name(n), ts_ms, k, amount, offset, 0))
            offset += 1
        if len(batch) >= LOAD_BATCH or n == customers - 1:
            yield batch, now_ms
            batch = []


def live_batches(
    customers: int, seed: int, now_ms: int, name: Callable[[int], str]
) -> Iterator[tuple[list[list[str]], int]]:
    """The same orders as they would have arrived over the year: in time order, each batch
    applied at its newest event's time, so customers are numbered as they first appear
    and dedupe digests leave once the horizon has passed."""
    rng = random.Random(seed)
    rows = [
        (ts_ms, n, k, amount)
        for n in range(customers)
        for ts_ms, k, amount in customer_orders(rng, now_ms)
    ]
    times = np.fromiter((row[0] for row in rows), dtype=np.int64, count=len(rows))
    order = np.argsort(times, kind="stable")
    for start in range(0, len(order), LOAD_BATCH):
        batch = []
        for offset in order[start : start + LOAD_BATCH].tolist():
            ts_ms, n, k, amount = rows[offset]
            batch.append(order_record(name(n), ts_ms, k, amount, start + len(batch), 0))
        yield batch, int(batch[-1][6])


#: With ``attributes``: the countries, channels and shops of the synthetic orders.
COUNTRIES = ("US", "DE", "FR", "GB", "JP", "NL", "AT", "CH")
CHANNELS = ("web", "app", "marketplace")
SHOPS = ("eu-store", "us-store", "jp-store", "outlet", "b2b")


def with_attributes(record: list[str]) -> list[str]:
    """The order with a country, channel and shop: each customer's own, and one order in
    five from another country (customers move), so that values change."""
    customer, k = record[5], zlib.crc32(record[4].encode())
    home = zlib.crc32(customer.encode())
    country = COUNTRIES[(home + (k % 5 == 0) * k) % len(COUNTRIES)]
    dims = "\x1f".join((country, CHANNELS[k % len(CHANNELS)], SHOPS[home % len(SHOPS)]))
    return [*record[:15], dims]


async def load_customers(
    store: Store,
    customers: int,
    seed: int,
    arrival: str = "backfill",
    ids: str = "short",
    attributes: bool = False,
) -> tuple[int, float]:
    """Write ``customers`` customers through apply_batch; returns (events, seconds). With
    ``attributes``, every order carries a country, a channel and a shop."""
    now_ms = int(time.time() * 1000)
    make = live_batches if arrival == "live" else backfill_batches
    started = time.monotonic()
    events = 0
    given = 0
    pending: asyncio.Task[Any] | None = None
    for batch, batch_ms in make(customers, seed, now_ms, CUSTOMER_IDS[ids]):
        if attributes:
            batch = [with_attributes(record) for record in batch]
        given += len(batch)
        if pending is not None:
            events += (await pending).applied
        pending = asyncio.ensure_future(store.apply_batch(batch, now_ms=batch_ms))
    if pending is not None:
        events += (await pending).applied
    if events != given:
        raise BenchError(f"apply_batch applied {events} of {given} synthetic orders")
    return events, time.monotonic() - started
