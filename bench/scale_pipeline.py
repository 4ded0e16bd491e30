"""How the pipeline scales: more worker processes, more shards, a Redis Cluster.

    .venv/bin/python bench/scale_pipeline.py [--events 60000] [--pipeline-customers 20000]
                                             [--partitions 4] [--seed 7] [--json]
                                             [--keep-logs]

The real ``python -m retention.cli worker``, 1 and then 2 processes in one consumer group,
with the tuned Faust settings of ``bench/common.py``, against one redis-server holding the
store in 1 and in 4 shards (``RETENTION_SHARDS``) and against a three-node Redis Cluster
(default shard count), all started for the run with a Tansu broker. The workers are started
on empty topics and the N order events are produced once every worker holds its partitions,
so the figure is the group's steady rate, not its start-up. events/s is N divided by the
time from the first applied batch to the last event; the report also gives the 2-worker /
1-worker ratio. Redis µs per event: the time Redis spent in scripts (INFO commandstats,
summed over every node) and its CPU time, each divided by N. The CPU each part of a run
took (the workers, the broker, Redis, this process) is shown as a share of one core, and
all of them together as a share of the machine.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import sys
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import redis as redis_sync

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import common

from retention import runtime
from retention.config import Settings
from retention.local_cluster import start_cluster
from store.connect import connect
from store.store import Store
from streams.topics import Topics, cluster_id, ensure_topics

logger = logging.getLogger("bench.scale_pipeline")

JOIN_TIMEOUT = 90.0


@dataclass(frozen=True)
class Options(common.RunOptions):
    events: int
    pipeline_customers: int
    partitions: int


# --- Redis nodes ----------------------------------------------------------------------


def node_clients(url: str) -> list[redis_sync.Redis]:
    """One plain client per primary behind ``url`` (one for a single server)."""
    probe = redis_sync.Redis.from_url(url, decode_responses=True)
    if str(probe.info("cluster").get("cluster_enabled", "0")) != "1":
        return [probe]
    slots = probe.cluster("SLOTS")
    probe.close()
    primaries = sorted({(str(entry[2][0]), int(entry[2][1])) for entry in slots})
    return [redis_sync.Redis(host=h, port=p, decode_responses=True) for h, p in primaries]


@dataclass(frozen=True)
class NodeCounters:
    script_seconds: float
    cpu_seconds: float
    used_memory: int


def node_counters(nodes: Sequence[redis_sync.Redis]) -> NodeCounters:
    """Summed over the nodes: time in scripts, Redis CPU time, used memory."""
    script = cpu = 0.0
    memory = 0
    for node in nodes:
        stats = node.info("commandstats")
        script += sum(
            float(stats[n]["usec"]) for n in ("cmdstat_evalsha", "cmdstat_eval") if n in stats
        )
        info = node.info("cpu")
        cpu += float(info["used_cpu_user"]) + float(info["used_cpu_sys"])
        memory += int(node.info("memory")["used_memory"])
    return NodeCounters(script / 1e6, cpu, memory)


# --- runs -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    name: str
    url: str
    shards: int | None


@dataclass
class PipelineRun:
    target: str
    shards: str
    workers: int
    events: int
    seconds: float
    redis_script_seconds: float
    redis_cpu_seconds: float
    join_seconds: float
    #: CPU seconds over the measured interval (``wall_seconds``, from before the events
    #: are produced until the store has seen them all): the workers, the broker, and this
    #: process (it produces the events and polls the store)
    wall_seconds: float = 0.0
    workers_cpu_seconds: float = 0.0
    broker_cpu_seconds: float = 0.0
    bench_cpu_seconds: float = 0.0

    def share(self, cpu_seconds: float) -> float:
        """CPU seconds as a share of one core over the interval."""
        return cpu_seconds / max(1e-9, self.wall_seconds)

    @property
    def busy(self) -> float:
        """Every process's CPU as a share of the machine's cores."""
        used = (
            self.workers_cpu_seconds
            + self.broker_cpu_seconds
            + self.bench_cpu_seconds
            + self.redis_cpu_seconds
        )
        return self.share(used) / common.runtime_cores()

    @property
    def events_per_second(self) -> float:
        return self.events / max(1e-9, self.seconds)

    @property
    def script_us_per_event(self) -> float:
        return self.redis_script_seconds * 1e6 / max(1, self.events)

    @property
    def cpu_us_per_event(self) -> float:
        return self.redis_cpu_seconds * 1e6 / max(1, self.events)


async def wait_joined(store: Store, topic: str, workers: int, partitions: int) -> None:
    """Until ``workers`` heartbeats share the order topic's partitions, each holding some."""
    deadline = time.monotonic() + JOIN_TIMEOUT
    while time.monotonic() < deadline:
        beats = await store.workers(max_age_seconds=30)
        held = [
            {p for p in info.get("partitions", []) if p.rpartition("|")[0] == topic}
            for info in beats.values()
        ]
        every = set().union(*held) if held else set()
        if (
            len(held) == workers
            and all(held)
            and len(every) == partitions
            and sum(map(len, held)) == partitions
        ):
            return
        await asyncio.sleep(0.25)
    raise common.BenchError(f"{workers} worker(s) did not share {topic}'s partitions in time")


async def first_event(store: Store, heartbeat_seconds: float) -> float:
    deadline = time.monotonic() + 10 * heartbeat_seconds + 5
    while time.monotonic() < deadline:
        beats = await store.workers(max_age_seconds=60)
        firsts = [b["first_event_at"] for b in beats.values() if b.get("first_event_at")]
        if firsts:
            return float(min(firsts))
        await asyncio.sleep(heartbeat_seconds / 4)
    raise common.BenchError("no worker heartbeat reported a first event")


def cpu_seconds(pid: int) -> float:
    """User and system CPU time of a process so far (Linux ``/proc``)."""
    seconds = common.cpu_seconds(pid)
    if seconds is None:
        raise common.BenchError(f"no CPU time readable for process {pid}")
    return seconds


def cpu_now(
    workers: Sequence[runtime.Process], broker_pid: int
) -> tuple[float, float, float, float]:
    """CPU seconds so far of the workers (summed), the broker and this process, and the
    monotonic clock."""
    return (
        sum(cpu_seconds(p.pid) for p in workers),
        cpu_seconds(broker_pid),
        time.process_time(),
        time.monotonic(),
    )


async def pipeline_run(
    options: Options,
    bootstrap: str,
    target: Target,
    workers: int,
    by_partition: dict[int, list[tuple[bytes, bytes]]],
    log_dir: Path,
    broker_pid: int,
) -> PipelineRun:
    tag = f"s-{target.name}-{target.shards or 'd'}-{workers}-{uuid.uuid4().hex[:6]}"
    base = Settings(
        kafka_bootstrap=bootstrap,
        redis_url=target.url,
        data_dir=log_dir / tag,
        topic_prefix=f"{tag}-",
        key_prefix=f"{tag}:",
        partitions=options.partitions,
        shards=target.shards,
    )
    topics = Topics.from_settings(base)
    await ensure_topics(bootstrap, topics, options.partitions)
    scope = await cluster_id(bootstrap)
    redis = connect(target.url, decode_responses=True)
    nodes = node_clients(target.url)
    store = Store(redis, base.key_prefix, base.activity_kinds, offsets_scope=scope)
    env_extra = {
        "PYTHONUNBUFFERED": "1",
        **runtime.EMBEDDED_TIMEOUTS,
        **{k: v for k, v in common.TUNED.items() if v},
    }
    procs = []
    logs = []
    try:
        spawned = time.monotonic()
        for n in range(workers):
            settings = base.model_copy(update={"data_dir": log_dir / f"{tag}-w{n}"})
            env = runtime.child_env(**{**settings.env(), **env_extra})
            logs.append(log_dir / f"{tag}-w{n}.log")
            procs.append(runtime.start_worker(env, log_dir, f"{tag}-w{n}"))
        try:
            await wait_joined(store, topics.source("order"), workers, options.partitions)
            joined = time.monotonic() - spawned
            before = node_counters(nodes)
            cpu_before = cpu_now(procs, broker_pid)
            await common.produce(bootstrap, topics.source("order"), by_partition)
            deadline = time.monotonic() + 120 + options.events / 500
            while True:
                if await common.seen_total(store, topics) >= options.events:
                    done = time.time()
                    break
                if time.monotonic() > deadline:
                    raise common.BenchError(f"the store saw fewer than {options.events} events")
                for proc in procs:
                    if proc.proc.poll() is not None:
                        raise common.BenchError(f"a worker exited with code {proc.proc.returncode}")
                await asyncio.sleep(common.POLL_SECONDS)
            after = node_counters(nodes)
            cpu_after = cpu_now(procs, broker_pid)
            first = await first_event(store, base.worker_heartbeat_seconds)
        except common.BenchError as exc:
            tails = "\n".join(f"--- {p}\n{common.log_tail(p)}" for p in logs)
            raise common.BenchError(f"{tag}: {exc}\n{tails}") from exc
    finally:
        runtime.stop_all(procs)
        await redis.aclose()
        for node in nodes:
            node.close()
    return PipelineRun(
        target=target.name,
        shards=str(target.shards) if target.shards else "default",
        workers=workers,
        events=options.events,
        seconds=done - first,
        redis_script_seconds=after.script_seconds - before.script_seconds,
        redis_cpu_seconds=after.cpu_seconds - before.cpu_seconds,
        join_seconds=joined,
        wall_seconds=cpu_after[3] - cpu_before[3],
        workers_cpu_seconds=cpu_after[0] - cpu_before[0],
        broker_cpu_seconds=cpu_after[1] - cpu_before[1],
        bench_cpu_seconds=cpu_after[2] - cpu_before[2],
    )


async def run_pipeline(
    options: Options,
    bootstrap: str,
    single_url: str,
    cluster_url: str,
    log_dir: Path,
    broker_pid: int,
) -> list[PipelineRun]:
    messages = common.build_messages(options.events, options.pipeline_customers, options.seed)
    common.check_sample(messages)
    by_partition = common.split_by_partition(messages, options.partitions)
    targets = [
        Target("one redis", single_url, 1),
        Target("one redis", single_url, 4),
        Target("cluster x3", cluster_url, None),
    ]
    runs = []
    for target in targets:
        for workers in (1, 2):
            logger.warning(
                "pipeline: %s, shards %s, %d worker(s)", target.name, target.shards, workers
            )
            runs.append(
                await pipeline_run(
                    options, bootstrap, target, workers, by_partition, log_dir, broker_pid
                )
            )
    return runs


# --- output ---------------------------------------------------------------------------


def render_pipeline(runs: Sequence[PipelineRun]) -> list[str]:
    lines = [
        f"{'store':<12}{'shards':>8}{'workers':>8}{'events/s':>10}{'2w/1w':>7}"
        f"{'script µs/ev':>14}{'Redis CPU µs/ev':>17}{'join s':>8}"
        f"{'CPU: workers':>14}{'broker':>8}{'Redis':>7}{'bench':>7}{'machine':>9}"
    ]
    one: dict[tuple[str, str], float] = {}
    for run in runs:
        key = (run.target, run.shards)
        ratio = ""
        if run.workers == 1:
            one[key] = run.events_per_second
        elif key in one:
            ratio = f"{run.events_per_second / one[key]:.2f}x"
        lines.append(
            f"{run.target:<12}{run.shards:>8}{run.workers:>8}{run.events_per_second:>10,.0f}"
            f"{ratio:>7}{run.script_us_per_event:>14.1f}{run.cpu_us_per_event:>17.1f}"
            f"{run.join_seconds:>8.1f}"
            f"{run.share(run.workers_cpu_seconds):>14.0%}{run.share(run.broker_cpu_seconds):>8.0%}"
            f"{run.share(run.redis_cpu_seconds):>7.0%}{run.share(run.bench_cpu_seconds):>7.0%}"
            f"{run.busy:>9.0%}"
        )
    return lines


def render(options: Options, runs: Sequence[PipelineRun], elapsed: float) -> str:
    lines = [
        common.headline(__file__, elapsed),
        "",
        f"Pipeline: {options.events:,} order events over {options.pipeline_customers:,}"
        f" customers, {options.partitions} partitions, Tansu + redis-server, tuned Faust"
        f" settings ({', '.join(f'{k}={v}' for k, v in common.TUNED.items())})",
        *render_pipeline(runs),
        "events/s: N / (last event - first applied batch), workers joined before producing;",
        "script µs/ev: EVAL/EVALSHA usec (commandstats, all nodes) / N, evaluation scripts",
        "included; Redis CPU µs/ev: used_cpu_user+sys (all nodes) / N; join s: start-up",
        "until every worker held its partitions (not in events/s); CPU: each part's CPU",
        "time over the measured interval as a share of one core (bench = this process,",
        "which produces the events), machine = all of them over all the cores",
    ]
    return "\n".join(lines)


def as_json(options: Options, runs: Sequence[PipelineRun], elapsed: float) -> str:
    doc = {
        "options": asdict(options),
        "elapsed_seconds": elapsed,
        "tuned_env": common.TUNED,
        "pipeline": [
            {
                **asdict(r),
                "events_per_second": r.events_per_second,
                "script_us_per_event": r.script_us_per_event,
                "redis_cpu_us_per_event": r.cpu_us_per_event,
            }
            for r in runs
        ],
    }
    return json.dumps(doc, indent=2)


# --- command line ---------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> Options:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--events", type=int, default=60_000, help="order events per run")
    parser.add_argument(
        "--pipeline-customers", type=int, default=20_000, help="customers the events go to"
    )
    parser.add_argument("--partitions", type=int, default=4, help="partitions of the topics")
    common.add_run_options(parser)
    args = parser.parse_args(argv)
    if min(args.events, args.pipeline_customers, args.partitions) < 1:
        parser.error("counts must be positive")
    return Options(
        **common.run_options(args),
        events=args.events,
        pipeline_customers=min(args.pipeline_customers, args.events),
        partitions=args.partitions,
    )


@contextlib.contextmanager
def servers(log_dir: Path) -> Iterator[tuple[str, str, str, int]]:
    """Tansu, one redis-server and a three-node cluster: the broker's address, the two
    stores' URLs and the broker's process id."""
    group = runtime.ProcessGroup()
    cluster_group = None
    try:
        broker, bootstrap = runtime.start_broker(log_dir)
        group.add(broker)
        redis, redis_url = runtime.start_redis(log_dir / "redis", log_dir, durable=False)
        group.add(redis)
        cluster_group, cluster_url = start_cluster(log_dir / "cluster")
        yield bootstrap, redis_url, cluster_url, broker.pid
    finally:
        if cluster_group is not None:
            cluster_group.stop()
        group.stop()


def measure(options: Options, log_dir: Path) -> list[PipelineRun]:
    with servers(log_dir) as (bootstrap, single, cluster, broker_pid):
        return asyncio.run(run_pipeline(options, bootstrap, single, cluster, log_dir, broker_pid))


def main(argv: Sequence[str] | None = None) -> int:
    options = parse_args(argv)
    return common.run_benchmark(options, "retention-scale-pipeline-", measure, render, as_json)


if __name__ == "__main__":
    sys.exit(main())
