"""Throughput of the worker on the embedded stack (Tansu + Redis), floor against pipeline.

    .venv/bin/python bench/throughput.py [--events 100000] [--customers 20000]
                                         [--partitions 4] [--repeat 2] [--json]

Every run produces its own copy of N order events into fresh topics, then starts one worker
process cold and times it from its first event to its last:

- ``floor``: the worker's Faust app with an agent that only counts (``bench/floor_worker.py``),
  done when it reports (in a file of its own) that it has counted N: what Faust's streams,
  a message at a time, can do;
- ``batchfloor``: the same app reading as the worker does, each fetch handed over as one
  batch (``streams/batch_reader.py``) to a sink that only counts: what the worker's way of
  reading can do;
- ``pipeline``: the real ``python -m retention.cli worker``, done when the store has seen N;
- ``quix`` (only when asked for, ``--variants ...,quix``): a Quix Streams app on the same
  broker and Redis (``bench/quix_peer.py``, in a virtual environment of its own), whose sink
  writes per-customer totals, done when it reports that it has written N.

Floor and pipeline run with Faust's defaults and with the tuned settings (``TUNED``, or
``--tuned``). After each pipeline run the Redis memory it added is divided by the customers
it tracks.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import hashlib
import json
import logging
import sys
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from common import (
    POLL_SECONDS,
    TUNED,
    BenchError,
    Memory,
    build_messages,
    check_sample,
    cpu_seconds,
    customer_ids,
    key_families,
    log_tail,
    produce,
    render_memory,
    run_benchmark,
    script_seconds,
    seen_total,
    split_by_partition,
    used_memory,
)
from quix_env import PEER_SCRIPT, quix_python
from redis.asyncio import Redis

from retention import runtime
from retention.config import Settings
from retention.runtime import Process
from store import evaluations
from store import store as store_module
from store.store import Store
from streams.topics import Topics, cluster_id, ensure_topics

logger = logging.getLogger("bench.throughput")

Kind = Literal["floor", "batchfloor", "pipeline", "quix"]
#: the kinds that run with Faust's defaults and with the tuned settings
KINDS: tuple[Kind, ...] = ("floor", "batchfloor", "pipeline")
FLOOR_SCRIPT = Path(__file__).with_name("floor_worker.py")

#: Faust reads these settings from the environment itself, over what create_app passes.
#: The "default" variants set Faust's own defaults explicitly, so that they keep meaning
#: Faust's defaults whatever the project's defaults become.
FAUST_DEFAULTS: dict[str, str] = {
    "STREAM_BUFFER_MAXSIZE": "4096",
    "CONSUMER_MAX_FETCH_SIZE": str(1024**2),
    "BROKER_MAX_POLL_RECORDS": "",  # unset: everything fetched so far
    "BROKER_COMMIT_EVERY": "10000",
    "RETENTION_EVENT_LOOP": "asyncio",
}


@dataclass(frozen=True)
class Options:
    events: int
    customers: int
    partitions: int
    seed: int
    repeat: int
    as_json: bool
    keep_logs: bool
    variants: tuple[str, ...]
    tuned: dict[str, str]


@dataclass(frozen=True)
class Variant:
    kind: Kind
    tuning: str
    env: dict[str, str]

    @property
    def name(self) -> str:
        return f"{self.kind}-{self.tuning}" if self.tuning else self.kind


@dataclass
class Run:
    variant: str
    kind: Kind
    tuning: str
    index: int
    events: int
    spawned_at: float
    first_event_at: float
    done_at: float
    cpu_share: float | None
    produce_seconds: float
    redis_busy: float | None = None
    #: seconds Redis spent running the batch script (INFO commandstats) during the run
    script_seconds: float | None = None
    #: the same by part of the work (``script_part``), from Redis's slow log
    script_parts: dict[str, float] | None = None
    memory: Memory | None = None

    @property
    def redis_us_per_event(self) -> float | None:
        """Redis's single thread, busy in the script, per event (its own counters)."""
        if self.script_seconds is None:
            return None
        return self.script_seconds * 1e6 / max(1, self.events)

    @property
    def events_per_second(self) -> float:
        return self.events / max(1e-9, self.done_at - self.first_event_at)

    @property
    def first_event_after(self) -> float:
        return self.first_event_at - self.spawned_at


@dataclass(frozen=True)
class Timing:
    """When a worker handled its first batch and its last event, and how busy it was."""

    first: float
    done: float
    cpu_share: float | None


# --- events ---------------------------------------------------------------------------


# --- processes ------------------------------------------------------------------------


@dataclass(frozen=True)
class Bench:
    options: Options
    bootstrap: str
    redis_url: str
    log_dir: Path
    by_partition: dict[int, list[tuple[bytes, bytes]]]
    run_tag: str

    def settings(self, variant: Variant, index: int) -> Settings:
        tag = f"b-{variant.name}-{self.run_tag}-{index}"
        return Settings(
            kafka_bootstrap=self.bootstrap,
            redis_url=self.redis_url,
            data_dir=self.log_dir / f"{variant.name}-{index}",
            topic_prefix=f"{tag}-",
            key_prefix=f"{tag}:",
            partitions=self.options.partitions,
        )

    def env(self, variant: Variant, settings: Settings, reports: Path) -> dict[str, str]:
        if variant.kind == "quix":
            return self.quix_env(settings, reports)
        # later entries win: the embedded stack's group timeouts, then the variant's tuning
        return runtime.settings_env(
            settings,
            embedded=True,
            PYTHONUNBUFFERED="1",
            BENCH_EXPECTED_EVENTS=str(self.options.events),
            BENCH_REPORT_FILE=str(reports),
            BENCH_FLOOR_READ="batch" if variant.kind == "batchfloor" else "stream",
            **variant.env,
        )

    def quix_env(self, settings: Settings, reports: Path) -> dict[str, str]:
        """The peer's environment: the same topic and Redis, a group and keys of its own."""
        topics = Topics.from_settings(settings)
        timeouts = runtime.EMBEDDED_TIMEOUTS
        return runtime.child_env(
            PYTHONUNBUFFERED="1",
            QUIX_BOOTSTRAP=self.bootstrap,
            QUIX_TOPIC=topics.source("order"),
            QUIX_GROUP=f"{settings.topic_prefix}quix",
            QUIX_REDIS_URL=self.redis_url,
            QUIX_KEY_PREFIX=settings.key_prefix,
            QUIX_STATE_DIR=str(settings.data_dir / "quix-state"),
            # the group timeouts the embedded stack gives the workers
            QUIX_SESSION_TIMEOUT_MS=milliseconds(timeouts["RETENTION_SESSION_TIMEOUT_SECONDS"]),
            QUIX_HEARTBEAT_INTERVAL_MS=milliseconds(
                timeouts["RETENTION_HEARTBEAT_INTERVAL_SECONDS"]
            ),
            BENCH_EXPECTED_EVENTS=str(self.options.events),
            BENCH_BATCH_SIZE=str(settings.batch_size),
            BENCH_REPORT_FILE=str(reports),
        )

    @property
    def timeout(self) -> float:
        return 60.0 + self.options.events / 1000


def start(kind: Kind, env: dict[str, str], log_dir: Path, name: str) -> Process:
    """Start a worker of ``kind``; its output goes to ``log_dir/NAME.log``."""
    if kind in ("floor", "batchfloor"):
        return runtime.spawn(name, [sys.executable, str(FLOOR_SCRIPT)], log_dir, env)
    if kind == "quix":
        return runtime.spawn(name, [str(peer_python()), str(PEER_SCRIPT)], log_dir, env)
    return runtime.start_worker(env, log_dir, name)


def milliseconds(seconds: str) -> str:
    return str(round(float(seconds) * 1000))


@functools.cache
def peer_python() -> Path:
    """The Quix peer's interpreter, its environment made on first use (``quix_env.py``)."""
    return quix_python()


# --- floor ----------------------------------------------------------------------------


def read_reports(path: Path) -> dict[str, dict[str, Any]]:
    """The floor worker's reports so far, by kind; a line still being written is skipped."""
    reports: dict[str, dict[str, Any]] = {}
    with contextlib.suppress(FileNotFoundError):
        for raw in path.read_text().splitlines():
            with contextlib.suppress(ValueError):
                line = json.loads(raw)
                if isinstance(line, dict) and "bench" in line:
                    reports[line["bench"]] = line
    return reports


async def floor_timing(process: Process, reports: Path, timeout: float) -> Timing:
    """From the floor worker's (or the Quix peer's) reports, which carry their own times:
    polling adds no error."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        lines = read_reports(reports)
        first, done = lines.get("first"), lines.get("done")
        if first is not None and done is not None:
            wall = done["at"] - first["at"]
            cpu = (done["cpu"] - first["cpu"]) / wall if wall > 0 else None
            return Timing(float(first["at"]), float(done["at"]), cpu)
        if process.proc.poll() is not None:
            raise BenchError(f"the process exited with code {process.proc.returncode}")
        await asyncio.sleep(POLL_SECONDS)
    raise BenchError("the process did not report every event in time")


async def check_quix_totals(redis: Redis, settings: Settings, expected: int) -> None:
    """The peer's sink has written what it reported: every order counted once."""
    seen = int(await redis.get(settings.key_prefix + "seen") or 0)
    if seen != expected:
        raise BenchError(f"the Quix peer wrote {seen} orders to Redis, not {expected}")


# --- pipeline -------------------------------------------------------------------------


async def wait_seen(
    store: Store, topics: Topics, expected: int, process: Process, timeout: float
) -> list[tuple[float, float | None]]:
    """Poll the store's counters until they reach ``expected``.

    Returns (wall time, worker CPU seconds) samples; the last one is the moment of completion.
    """
    samples: list[tuple[float, float | None]] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        count = await seen_total(store, topics)
        samples.append((time.time(), cpu_seconds(process.pid)))
        if count >= expected:
            return samples
        if process.proc.poll() is not None:
            raise BenchError(f"the worker exited with code {process.proc.returncode}")
        await asyncio.sleep(POLL_SECONDS)
    raise BenchError(f"the store saw fewer than {expected} events after {timeout:.0f} s")


async def heartbeat_first_event(store: Store, settings: Settings) -> float:
    """The worker's first applied batch, from its heartbeat (one every few seconds)."""
    deadline = time.monotonic() + 10 * settings.worker_heartbeat_seconds
    while time.monotonic() < deadline:
        workers = await store.workers(max_age_seconds=60)
        firsts = [w["first_event_at"] for w in workers.values() if w.get("first_event_at")]
        if firsts:
            return float(min(firsts))
        await asyncio.sleep(settings.worker_heartbeat_seconds / 4)
    raise BenchError("no worker heartbeat reported a first event")


def cpu_share(samples: Sequence[tuple[float, float | None]], first: float) -> float | None:
    """CPU seconds per wall second between the first event and completion."""
    start = next((s for s in samples if s[0] >= first), None)
    end = samples[-1]
    if start is None or start[1] is None or end[1] is None or end[0] <= start[0]:
        return None
    return (end[1] - start[1]) / (end[0] - start[0])


async def pipeline_timing(
    bench: Bench, store: Store, settings: Settings, process: Process
) -> Timing:
    topics = Topics.from_settings(settings)
    samples = await wait_seen(store, topics, bench.options.events, process, bench.timeout)
    first = await heartbeat_first_event(store, settings)
    return Timing(first, samples[-1][0], cpu_share(samples, first))


# --- memory ---------------------------------------------------------------------------


#: While a pipeline runs, the slow log keeps the commands that take at least this long:
#: every batch script and evaluation chunk of some size, but not the commands those
#: scripts call (each a few µs), which it would log too, inside the scripts' own time.
COMMAND_LOG_MICROS = 200
COMMAND_LOG_ENTRIES = 100_000


def script_part(sha: str) -> str:
    """Which part of the work a script (by the sha1 Redis runs it by) belongs to: the
    batch script, the evaluations, or anything else (the exporter's reads, queue sizes)."""
    return _script_parts().get(sha.lower(), "other")


@functools.cache
def _script_parts() -> dict[str, str]:
    """The part of every script the tracker runs, by sha1 (worked out once)."""
    parts = {store_module._SCRIPT: "batch", store_module._READ: "evaluation"}
    for source in (
        evaluations._TAKE,
        evaluations._RESCHEDULE,
        evaluations._RETURNED,
        evaluations._PREVIOUS,
        evaluations._STORE,
    ):
        parts[source] = "evaluation"
    return {hashlib.sha1(text.encode()).hexdigest(): part for text, part in parts.items()}


async def log_long_commands(redis: Redis) -> None:
    """Have the slow log keep the long commands from now on (``COMMAND_LOG_MICROS``)."""
    await redis.config_set("slowlog-max-len", COMMAND_LOG_ENTRIES)
    await redis.config_set("slowlog-log-slower-than", COMMAND_LOG_MICROS)
    await redis.slowlog_reset()


async def script_seconds_by_part(redis: Redis, total: float) -> dict[str, float]:
    """The logged scripts' time since :func:`log_long_commands`, summed by
    :func:`script_part`, and what ``total`` (all scripts) leaves: the short ones."""
    entries = await redis.slowlog_get(COMMAND_LOG_ENTRIES)
    await redis.config_set("slowlog-log-slower-than", 10_000)
    await redis.slowlog_reset()
    if len(entries) >= COMMAND_LOG_ENTRIES:
        raise BenchError("the slow log overflowed: the split of script time is incomplete")
    parts: dict[str, float] = {}
    for entry in entries:
        command = entry["command"]
        # the log also holds the commands scripts make, whose arguments may be binary (a
        # customer's packed state): only the first two words matter
        text = command.decode(errors="replace") if isinstance(command, bytes) else str(command)
        words = text.split(" ", 2)
        if len(words) > 1 and words[0].upper() == "EVALSHA":
            part = script_part(words[1])
            parts[part] = parts.get(part, 0.0) + int(entry["duration"]) / 1e6
    parts[f"under {COMMAND_LOG_MICROS} us"] = max(0.0, total - sum(parts.values()))
    return parts


async def measure_memory(redis: Redis, store: Store, before: int) -> Memory:
    """used_memory growth over a run, with MEMORY USAGE by key family and of one customer."""
    after = await used_memory(redis)
    sample = customer_ids(1)[0]
    sample_keys: dict[str, int] = {}
    for part in ("c", "od", "tk"):
        size = await redis.memory_usage(store.key(part, sample), samples=0)
        if size is not None:
            sample_keys[part] = int(size)
    return Memory(
        used_before=before,
        used_after=after,
        customers=await store.customer_count(),
        families=await key_families(redis, store.prefix),
        sample_customer=sample,
        sample_keys=sample_keys,
    )


# --- one run --------------------------------------------------------------------------


async def run_once(bench: Bench, variant: Variant, index: int, redis: Redis) -> Run:
    settings = bench.settings(variant, index)
    topics = Topics.from_settings(settings)
    await ensure_topics(bench.bootstrap, topics, settings.partitions)
    produce_seconds = await produce(bench.bootstrap, topics.source("order"), bench.by_partition)
    logger.info("produced for %s in %.2f s", variant.name, produce_seconds)
    scope = await cluster_id(bench.bootstrap)
    store = Store(redis, settings.key_prefix, settings.activity_kinds, offsets_scope=scope)
    before = await used_memory(redis)
    scripts_before = await script_seconds(redis)
    if variant.kind == "pipeline":
        await log_long_commands(redis)
    name = f"{variant.name}-{index}"
    reports = bench.log_dir / f"{name}.reports"
    spawned_at = time.time()
    process = start(variant.kind, bench.env(variant, settings, reports), bench.log_dir, name)
    try:
        if variant.kind in ("floor", "batchfloor"):
            timing = await floor_timing(process, reports, bench.timeout)
        elif variant.kind == "quix":
            timing = await floor_timing(process, reports, bench.timeout)
            await check_quix_totals(redis, settings, bench.options.events)
        else:
            timing = await pipeline_timing(bench, store, settings, process)
    except BenchError as exc:
        log_path = process.log_path
        raise BenchError(f"{variant.name}: {exc}\n--- {log_path}\n{log_tail(log_path)}") from exc
    finally:
        process.stop(15)
    memory, redis_busy, busy, parts = None, None, None, None
    if variant.kind == "pipeline":
        busy = await script_seconds(redis) - scripts_before
        parts = await script_seconds_by_part(redis, busy)
        redis_busy = busy / max(1e-9, timing.done - timing.first)
        memory = await measure_memory(redis, store, before)
    return Run(
        variant=variant.name,
        kind=variant.kind,
        tuning=variant.tuning,
        index=index,
        events=bench.options.events,
        spawned_at=spawned_at,
        first_event_at=timing.first,
        done_at=timing.done,
        cpu_share=timing.cpu_share,
        produce_seconds=produce_seconds,
        redis_busy=redis_busy,
        script_seconds=busy,
        script_parts=parts,
        memory=memory,
    )


def tuned_env(options: Options) -> dict[str, str]:
    return {**FAUST_DEFAULTS, **options.tuned}


def variants(options: Options) -> list[Variant]:
    tunings = {"default": FAUST_DEFAULTS, "tuned": tuned_env(options)}
    out = [
        Variant(kind, tuning, {name: value for name, value in env.items() if value})
        for kind in KINDS
        for tuning, env in tunings.items()
    ]
    # the Quix peer only when asked for: it needs an environment of its own, from PyPI
    out.append(Variant("quix", "", {}))
    if options.variants:
        unknown = set(options.variants) - {v.name for v in out}
        if unknown:
            raise BenchError(f"no such variant: {', '.join(sorted(unknown))}")
        return [v for v in out if v.name in options.variants]
    return [v for v in out if v.kind != "quix"]


# --- the whole bench ------------------------------------------------------------------


async def run_all(options: Options, bootstrap: str, redis_url: str, log_dir: Path) -> list[Run]:
    """Every variant ``repeat`` times, interleaved so that a slow spell hits all of them."""
    messages = build_messages(options.events, options.customers, options.seed)
    check_sample(messages)
    by_partition = split_by_partition(messages, options.partitions)
    bench = Bench(options, bootstrap, redis_url, log_dir, by_partition, uuid.uuid4().hex[:6])
    if any(v.kind == "quix" for v in variants(options)):
        peer_python()
    redis = Redis.from_url(redis_url, decode_responses=True)
    try:
        runs = []
        for index in range(options.repeat):
            for variant in variants(options):
                logger.info("running %s #%d", variant.name, index)
                runs.append(await run_once(bench, variant, index, redis))
        return runs
    finally:
        await redis.aclose()


# --- output ---------------------------------------------------------------------------


@dataclass
class Summary:
    """A variant's runs; interference only slows a run down, so the fastest one counts."""

    variant: str
    runs: list[Run] = field(default_factory=list)

    @property
    def best(self) -> Run:
        return max(self.runs, key=lambda r: r.events_per_second)

    @property
    def events_per_second(self) -> float:
        return self.best.events_per_second

    @property
    def first_event_after(self) -> float:
        return min(r.first_event_after for r in self.runs)


def summarize(runs: Sequence[Run]) -> list[Summary]:
    by_variant: dict[str, Summary] = {}
    for run in runs:
        by_variant.setdefault(run.variant, Summary(run.variant)).runs.append(run)
    return list(by_variant.values())


def baseline(summaries: Sequence[Summary]) -> float | None:
    return next((s.events_per_second for s in summaries if s.variant == "floor-default"), None)


def describe_env(env: Mapping[str, str]) -> str:
    return ", ".join(f"{name}={value or 'unset'}" for name, value in env.items())


def percent(value: float | None) -> str:
    return "-" if value is None else f"{value:.0%}"


def micros(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def render_table(summaries: Sequence[Summary]) -> list[str]:
    base = baseline(summaries)
    lines = [
        f"{'variant':<18}{'events/s':>9}{'vs floor-default':>18}{'first event after':>19}"
        f"{'worker CPU':>12}{'Redis busy':>12}{'Redis us/ev':>13}"
        "   all runs (events/s; Redis us/ev)"
    ]
    for s in summaries:
        best = s.best
        ratio = f"{s.events_per_second / base:.2f}x" if base else "-"
        runs = " ".join(f"{r.events_per_second:,.0f}" for r in s.runs)
        per_event = [r.redis_us_per_event for r in s.runs if r.redis_us_per_event is not None]
        script = " ".join(f"{us:.1f}" for us in per_event)
        lines.append(
            f"{s.variant:<18}{s.events_per_second:>9,.0f}{ratio:>18}"
            f"{s.first_event_after:>17.2f} s{percent(best.cpu_share):>12}"
            f"{percent(best.redis_busy):>12}{micros(min(per_event, default=None)):>13}"
            f"   {runs}{'; ' + script if script else ''}"
        )
    return lines


def render_parts(runs: Sequence[Run]) -> list[str]:
    """Each pipeline run's script time per event, split by part of the work."""
    lines = []
    for run in runs:
        if run.script_parts is None:
            continue
        parts = ", ".join(
            f"{name} {seconds * 1e6 / max(1, run.events):.1f}"
            for name, seconds in sorted(run.script_parts.items(), key=lambda item: -item[1])
        )
        lines.append(f"  {run.variant} run {run.index}: {parts or 'none'}")
    if not lines:
        return []
    return [
        f"Redis script us/ev by part (scripts of {COMMAND_LOG_MICROS} us or more, from SLOWLOG):",
        *lines,
    ]


@dataclass(frozen=True)
class Ratio:
    """A pipeline variant's events/s over another variant's: the fastest runs of each,
    and run by run (runs of the same index ran one after the other)."""

    pipeline: str
    against: str
    best: float
    by_run: list[float]


def ratios(runs: Sequence[Run]) -> list[Ratio]:
    """Each pipeline variant against the floor of the same tuning and against Quix."""
    by_variant: dict[str, dict[int, float]] = {}
    for run in runs:
        by_variant.setdefault(run.variant, {})[run.index] = run.events_per_second
    out = []
    for name, mine in by_variant.items():
        if not name.startswith("pipeline-"):
            continue
        tuning = name.removeprefix("pipeline-")
        for other in (f"floor-{tuning}", f"batchfloor-{tuning}", "quix"):
            theirs = by_variant.get(other)
            if not theirs:
                continue
            paired = [mine[i] / theirs[i] for i in sorted(mine) if i in theirs]
            out.append(Ratio(name, other, max(mine.values()) / max(theirs.values()), paired))
    return out


def render_ratios(runs: Sequence[Run]) -> list[str]:
    found = ratios(runs)
    if not found:
        return []
    lines = ["Ratios (fastest run of each; then run by run, as interleaved):"]
    for r in found:
        paired = " ".join(f"{value:.2f}" for value in r.by_run)
        lines.append(f"  {r.pipeline} / {r.against}: {r.best:.2f}   ({paired})")
    return lines


def render(options: Options, runs: Sequence[Run], elapsed: float) -> str:
    summaries = summarize(runs)
    lines = [
        f"{options.events:,} order events, {options.customers:,} customers, "
        f"{options.partitions} partitions, best of {options.repeat} run(s) per variant; "
        f"embedded Tansu + Redis; {elapsed:.0f} s in all",
        "",
        *render_table(summaries),
        "",
        f"default: Faust defaults ({describe_env(FAUST_DEFAULTS)})",
        f"tuned:   {describe_env(tuned_env(options))}",
        "events/s: N / (last event - first batch); first event after: from process start",
        "(pipeline: first batch applied, the heartbeat's first_event_at); worker CPU: CPU s",
        "per wall s of the worker process; Redis busy: share of wall time spent in the script;",
        "Redis us/ev: script time (INFO commandstats) / N, lowest of the runs",
    ]
    if any(r.kind == "quix" for r in runs):
        lines += [
            "quix: Quix Streams on the same broker and Redis (bench/quix_peer.py); its first",
            "event is its first batch written to Redis; worker CPU counts librdkafka's threads",
        ]
    ratio_lines = render_ratios(runs)
    if ratio_lines:
        lines += ["", *ratio_lines]
    split = render_parts(runs)
    if split:
        lines += ["", *split]
    last_pipeline = next((r for r in reversed(runs) if r.memory is not None), None)
    if last_pipeline is not None:
        assert last_pipeline.memory is not None
        title = f"{last_pipeline.variant} run {last_pipeline.index}"
        lines += ["", *render_memory(title, last_pipeline.memory)]
    return "\n".join(lines)


def as_json(options: Options, runs: Sequence[Run], elapsed: float) -> str:
    summaries = summarize(runs)
    base = baseline(summaries)
    run_rows = []
    for run in runs:
        row = asdict(run)
        row["events_per_second"] = run.events_per_second
        row["first_event_after_seconds"] = run.first_event_after
        row["redis_us_per_event"] = run.redis_us_per_event
        if run.memory is not None:
            row["memory"]["per_customer_bytes"] = run.memory.per_customer
        run_rows.append(row)
    doc = {
        "options": asdict(options),
        "default_env": FAUST_DEFAULTS,
        "tuned_env": tuned_env(options),
        "elapsed_seconds": elapsed,
        "summary": [
            {
                "variant": s.variant,
                "events_per_second": s.events_per_second,
                "ratio_to_floor_default": s.events_per_second / base if base else None,
                "first_event_after_seconds": s.first_event_after,
                "worker_cpu_share": s.best.cpu_share,
                "redis_busy_share": s.best.redis_busy,
                "redis_us_per_event": [r.redis_us_per_event for r in s.runs],
            }
            for s in summaries
        ],
        "ratios": [asdict(r) for r in ratios(runs)],
        "runs": run_rows,
    }
    return json.dumps(doc, indent=2)


# --- command line ---------------------------------------------------------------------


def parse_assignment(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name.strip():
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    return name.strip().upper(), value.strip()


def parse_args(argv: Sequence[str] | None) -> Options:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--customers", type=int, default=20_000)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--repeat", type=int, default=2, help="runs per variant")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument("--keep-logs", action="store_true", help="keep worker and server logs")
    parser.add_argument(
        "--variants", default="", help="comma-separated subset, e.g. floor-default,floor-tuned"
    )
    parser.add_argument(
        "--tuned",
        type=parse_assignment,
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="environment setting for the tuned variants, e.g. STREAM_BUFFER_MAXSIZE=32768 "
        "or RETENTION_BATCH_SIZE=2000 (repeatable)",
    )
    args = parser.parse_args(argv)
    if min(args.events, args.customers, args.partitions, args.repeat) < 1:
        parser.error("--events, --customers, --partitions and --repeat must be positive")
    return Options(
        events=args.events,
        customers=min(args.customers, args.events),
        partitions=args.partitions,
        seed=args.seed,
        repeat=args.repeat,
        as_json=args.json,
        keep_logs=args.keep_logs,
        variants=tuple(v.strip() for v in args.variants.split(",") if v.strip()),
        tuned={**TUNED, **dict(args.tuned)},
    )


def measure(options: Options, log_dir: Path) -> list[Run]:
    with runtime.start_services(log_dir) as services:
        return asyncio.run(run_all(options, services.kafka_bootstrap, services.redis_url, log_dir))


def main(argv: Sequence[str] | None = None) -> int:
    return run_benchmark(parse_args(argv), "retention-bench-", measure, render, as_json)


if __name__ == "__main__":
    sys.exit(main())
