"""Where the worker's time per event goes, by stage of the work.

    .venv/bin/python bench/profile_stages.py [--events 100000] [--customers 20000]
                                             [--partitions 4] [--repeat 1] [--json]

Starts its own Tansu broker and Redis, produces the throughput benchmark's N orders into
fresh topics (``bench/throughput.py``'s events), then runs the real worker with the tuned
settings (the project's defaults) under ``bench/profiled_worker.py``, which samples the
worker's main thread from its first batch until the store holds all N events. Prints µs per
event of the main thread's CPU by stage, the time it waited (wall time less its CPU), the
CPU of its other threads (refits fit in an executor), the wall time of the store's batch
calls and Redis's own time in scripts.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from common import (
    BenchError,
    RunOptions,
    add_run_options,
    build_messages,
    check_sample,
    headline,
    produce,
    run_benchmark,
    run_options,
    script_seconds,
    split_by_partition,
)
from profiled_worker import STAGES
from redis.asyncio import Redis
from throughput import TUNED, Bench, Options, Variant, floor_timing, read_reports, tuned_env

from retention import runtime
from streams.topics import Topics, ensure_topics

DETAIL_SHOWN = 25
PROFILED_WORKER = Path(__file__).with_name("profiled_worker.py")


@dataclass(frozen=True)
class ProfileOptions(RunOptions):
    events: int
    customers: int
    partitions: int
    repeat: int
    sample_seconds: float


@dataclass
class Profile:
    """One run's figures, all in seconds over the sampled window."""

    events: int
    events_per_second: float
    wall: float
    main_cpu: float
    other_threads_cpu: float
    sampling: float
    samples: int
    stages: dict[str, float]
    #: (stage, innermost frame, seconds), the most costly first
    detail: list[tuple[str, str, float]]
    batch_calls: int
    batch_call_wall: float
    redis_scripts: float

    def per_event(self, seconds: float) -> float:
        return seconds * 1e6 / max(1, self.events)


def throughput_options(options: ProfileOptions) -> Options:
    return Options(
        events=options.events,
        customers=options.customers,
        partitions=options.partitions,
        seed=options.seed,
        repeat=1,
        as_json=options.as_json,
        keep_logs=options.keep_logs,
        variants=("pipeline-tuned",),
        tuned=dict(TUNED),
    )


async def profile_once(bench: Bench, sample_seconds: float, index: int, redis: Redis) -> Profile:
    variant = Variant("pipeline", "tuned", {k: v for k, v in tuned_env(bench.options).items() if v})
    settings = bench.settings(variant, index)
    topics = Topics.from_settings(settings)
    await ensure_topics(bench.bootstrap, topics, settings.partitions)
    await produce(bench.bootstrap, topics.source("order"), bench.by_partition)
    name = f"profiled-{index}"
    reports = bench.log_dir / f"{name}.reports"
    env = bench.env(variant, settings, reports)
    env["BENCH_SAMPLE_SECONDS"] = str(sample_seconds)
    scripts_before = await script_seconds(redis)
    process = runtime.spawn(name, [sys.executable, str(PROFILED_WORKER)], bench.log_dir, env)
    try:
        await floor_timing(process, reports, bench.timeout)
    except BenchError as exc:
        raise BenchError(f"{name}: {exc}\n--- {process.log_path}") from exc
    finally:
        process.stop(15)
    done: dict[str, Any] = read_reports(reports)["done"]
    wall = float(done["wall_seconds"])
    return Profile(
        events=int(done["count"]),
        events_per_second=int(done["count"]) / wall,
        wall=wall,
        main_cpu=float(done["main_cpu_seconds"]),
        other_threads_cpu=float(done["other_threads_cpu_seconds"]),
        sampling=float(done["sampling_seconds"]),
        samples=int(done["samples"]),
        stages={k: float(v) for k, v in done["stages"].items()},
        detail=[(str(stage), str(where), float(sec)) for stage, where, sec in done["detail"]],
        batch_calls=int(done["batch_calls"]),
        batch_call_wall=float(done["batch_call_wall_seconds"]),
        redis_scripts=await script_seconds(redis) - scripts_before,
    )


async def run_all(
    options: ProfileOptions, bootstrap: str, redis_url: str, log_dir: Path
) -> list[Profile]:
    messages = build_messages(options.events, options.customers, options.seed)
    check_sample(messages)
    by_partition = split_by_partition(messages, options.partitions)
    bench = Bench(
        throughput_options(options),
        bootstrap,
        redis_url,
        log_dir,
        by_partition,
        uuid.uuid4().hex[:6],
    )
    redis = Redis.from_url(redis_url, decode_responses=True)
    try:
        return [
            await profile_once(bench, options.sample_seconds, index, redis)
            for index in range(options.repeat)
        ]
    finally:
        await redis.aclose()


def measure(options: ProfileOptions, log_dir: Path) -> list[Profile]:
    with runtime.start_services(log_dir) as services:
        return asyncio.run(run_all(options, services.kafka_bootstrap, services.redis_url, log_dir))


def rows(profile: Profile) -> list[tuple[str, float]]:
    """(what, µs per event): the main thread's stages, then the rest of the window."""
    ordered = sorted(profile.stages.items(), key=lambda item: -item[1])
    out = [(stage, profile.per_event(seconds)) for stage, seconds in ordered if seconds > 0]
    out.append(("= main thread CPU", profile.per_event(profile.main_cpu)))
    waited = max(0.0, profile.wall - profile.main_cpu - profile.sampling)
    out.append(("main thread waiting (wall - CPU - sampling)", profile.per_event(waited)))
    out.append(("sampling itself", profile.per_event(profile.sampling)))
    out.append(("= wall time", profile.per_event(profile.wall)))
    out.append(
        (
            "other threads' CPU (refit fits, metrics server)",
            profile.per_event(profile.other_threads_cpu),
        )
    )
    out.append(
        (
            "store batch calls, wall (overlap the next decode)",
            profile.per_event(profile.batch_call_wall),
        )
    )
    out.append(
        (
            "Redis's own time in scripts (batch + evaluation)",
            profile.per_event(profile.redis_scripts),
        )
    )
    return out


def render(options: ProfileOptions, profiles: list[Profile], elapsed: float) -> str:
    first = rows(profiles[0])
    names = [name for name, _ in first]
    by_run = [dict(rows(p)) for p in profiles]
    width = max(len(n) for n in names) + 2
    header = f"{'us per event':<{width}}" + "".join(
        f"{'run ' + str(i):>10}" for i in range(len(profiles))
    )
    if len(profiles) > 1:
        header += f"{'median':>10}"
    lines = [
        headline(__file__, elapsed),
        f"{options.events:,} order events, {options.customers:,} customers, "
        f"{options.partitions} partitions; the real worker, tuned settings, sampled every "
        f"{options.sample_seconds * 1000:g} ms of CPU",
        "",
        header,
    ]
    for name in names:
        values = [run.get(name, 0.0) for run in by_run]
        line = f"{name:<{width}}" + "".join(f"{v:>10.1f}" for v in values)
        if len(values) > 1:
            line += f"{statistics.median(values):>10.1f}"
        lines.append(line)
    lines += [
        "",
        "events/s in the sampled window: "
        + ", ".join(f"{p.events_per_second:,.0f}" for p in profiles),
        "batch calls: "
        + ", ".join(
            f"{p.batch_calls} ({p.batch_call_wall * 1000 / max(1, p.batch_calls):.1f} ms each)"
            for p in profiles
        ),
        "samples: " + ", ".join(str(p.samples) for p in profiles),
        "",
        f"innermost frames, run 0 (the {DETAIL_SHOWN} most costly; us per event):",
    ]
    last = profiles[0]
    for stage, where, seconds in last.detail[:DETAIL_SHOWN]:
        lines.append(f"  {last.per_event(seconds):>6.1f}  {where}  [{stage.split(' (')[0]}]")
    return "\n".join(lines)


def as_json(options: ProfileOptions, profiles: list[Profile], elapsed: float) -> str:
    doc = {
        "options": asdict(options),
        "elapsed_seconds": elapsed,
        "stages": list(STAGES),
        "runs": [{**asdict(p), "us_per_event": dict(rows(p))} for p in profiles],
    }
    return json.dumps(doc, indent=2)


def parse_args(argv: Sequence[str] | None) -> ProfileOptions:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--customers", type=int, default=20_000)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--repeat", type=int, default=1, help="profiled runs, one after the other")
    parser.add_argument(
        "--sample-ms", type=float, default=1.0, help="CPU milliseconds between samples"
    )
    add_run_options(parser)
    args = parser.parse_args(argv)
    if min(args.events, args.customers, args.partitions, args.repeat) < 1 or args.sample_ms <= 0:
        parser.error(
            "--events, --customers, --partitions, --repeat and --sample-ms must be positive"
        )
    return ProfileOptions(
        **run_options(args),
        events=args.events,
        customers=min(args.customers, args.events),
        partitions=args.partitions,
        repeat=args.repeat,
        sample_seconds=args.sample_ms / 1000,
    )


def main(argv: Sequence[str] | None = None) -> int:
    return run_benchmark(parse_args(argv), "retention-profile-", measure, render, as_json)


if __name__ == "__main__":
    sys.exit(main())
