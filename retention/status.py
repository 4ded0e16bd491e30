"""Health and progress of a running tracker: broker, Redis, workers, lag."""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from retention.config import Settings
from retention.services import Services, mask_url, scrub
from retention.stalls import Progress, parse_heartbeat, stalled_workers
from store.connect import connect
from store.shards import stored_calendar
from store.store import Store
from streams.topics import Topics, cluster_id, end_offsets

#: A worker whose heartbeat is older than this many heartbeat intervals counts as gone.
STALE_HEARTBEATS = 5


@dataclass
class StackStatus:
    kafka_bootstrap: str
    redis_url: str
    broker_ok: bool = False
    redis_ok: bool = False
    workers: dict[str, dict[str, Any]] = field(default_factory=dict)
    # Per topic: broker end offsets minus the offsets the store has applied, floored at 0.
    # Tansu under-reports end offsets, so a 0 here is necessary but not sufficient for
    # "caught up"; ``seen`` counts what the store took account of, exactly.
    lag: dict[str, int] | None = None
    end_offsets: dict[str, int] | None = None
    seen: dict[str, int] = field(default_factory=dict)
    customers: int | None = None
    # per Redis node: used memory and its maxmemory limit (0: none), bytes
    redis_memory: dict[str, tuple[int, int]] = field(default_factory=dict)
    rejected: dict[str, int] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    metrics_url: str | None = None
    prometheus_url: str | None = None
    ingest_url: str | None = None
    # workers whose partitions have lag but that applied nothing for a while
    stalled: list[str] = field(default_factory=list)
    # recorded by `retention up`: each worker's own /metrics, and restarts per process
    worker_metrics_urls: dict[str, str] = field(default_factory=dict)
    restarts: dict[str, int] = field(default_factory=dict)
    # a rebuild's wipe under way or stopped halfway: nothing writes until it is finished
    rebuilding: bool = False
    # partitions the store is replaying back to where it was (after a rebuild, a rollback
    # or a restore): evaluations and alerts wait until none is left
    replaying: int = 0
    # customers set aside because their stored state cannot be read
    corrupt: list[str] = field(default_factory=list)
    # the calendar the store counts its periods in (RETENTION_TIMEZONE, RETENTION_WEEK_START)
    calendar: str | None = None

    @property
    def ok(self) -> bool:
        return (
            self.broker_ok
            and self.redis_ok
            and bool(self.workers)
            and self.lag is not None
            and not self.stalled
            and not self.rebuilding
        )

    def add_recorded(self, recorded: Services) -> None:
        """What only the running ``retention up`` knows, from its services.json."""
        self.metrics_url, self.prometheus_url = recorded.metrics_url, recorded.prometheus_url
        self.worker_metrics_urls = dict(recorded.worker_metrics_urls)
        self.ingest_url = recorded.ingest_url
        self.restarts = dict(recorded.restarts)

    @property
    def web_url(self) -> str | None:
        """The web view, served by the HTTP server beside the API."""
        return None if self.ingest_url is None else self.ingest_url + "/"

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["ok"] = self.ok
        out["web_url"] = self.web_url
        return out


async def gather(settings: Settings, timeout: float = 10.0) -> StackStatus:
    assert settings.kafka_bootstrap and settings.redis_url
    # the password never leaves: not in the report, not in an error message
    status = StackStatus(settings.kafka_bootstrap, mask_url(settings.redis_url) or "")
    try:
        await _gather(settings, status, timeout)
    finally:
        status.errors = [scrub(e, settings.redis_url) for e in status.errors]
    return status


async def _gather(settings: Settings, status: StackStatus, timeout: float) -> None:
    assert settings.kafka_bootstrap and settings.redis_url
    topics = Topics.from_settings(settings)
    scope = "default"
    try:
        scope = await asyncio.wait_for(
            cluster_id(settings.kafka_bootstrap, settings.kafka_security()), timeout
        )
        status.broker_ok = True
    except Exception as exc:
        status.errors.append(f"broker: {exc!r}")
    try:  # connecting asks the node whether it is a cluster node, so it may fail here
        redis = connect(settings.redis_url, decode_responses=True, socket_timeout=timeout)
    except Exception as exc:
        status.errors.append(f"redis: {exc!r}")
        return
    try:
        store = Store(redis, settings.key_prefix, offsets_scope=scope)
        try:
            await redis.ping()
            status.redis_ok = True
            status.workers = await store.workers(
                STALE_HEARTBEATS * settings.worker_heartbeat_seconds
            )
            status.customers = await store.customer_count()
            status.calendar = (await stored_calendar(redis, settings.key_prefix)).describe()
            stats = await store.stats()
            status.seen = {t: stats.seen(t) for t in topics.sources}
            for (topic, reason), n in stats.rejected.items():
                status.rejected[f"{topic}|{reason}"] = n
            applied = await store.applied_offsets()
            status.rebuilding = await store.rebuilding()
            status.replaying = len(await store.replaying(prune=False))
            status.corrupt = sorted(await store.corrupt_customers())
        except Exception as exc:
            status.errors.append(f"redis: {exc!r}")
            return
        try:
            status.redis_memory = await store.memory()
        except Exception as exc:  # INFO may be denied to the user: say so, go on
            status.errors.append(f"redis memory: {exc!r}")
        if status.broker_ok:
            try:
                ends = await asyncio.wait_for(
                    end_offsets(
                        settings.kafka_bootstrap, list(topics.sources), settings.kafka_security()
                    ),
                    timeout,
                )
            except Exception as exc:
                status.errors.append(f"lag: {exc!r}")
                return
            status.lag, status.end_offsets = {}, {}
            for tp, end in ends.items():
                done = applied.get((tp.topic, tp.partition), -1) + 1
                status.lag[tp.topic] = status.lag.get(tp.topic, 0) + max(0, end - done)
                status.end_offsets[tp.topic] = status.end_offsets.get(tp.topic, 0) + end
            ends_by_tp = {(tp.topic, tp.partition): end for tp, end in ends.items()}
            beats = [parse_heartbeat(w, info) for w, info in status.workers.items()]
            # one read: a heartbeat without last_applied_at cannot be judged, and is not
            status.stalled = stalled_workers(
                beats,
                ends_by_tp,
                applied,
                time.time(),
                settings.worker_stalled_after_seconds,
                Progress(),
            )
            for worker_id, info in status.workers.items():
                info["stalled"] = worker_id in status.stalled
    finally:
        with contextlib.suppress(Exception):
            await redis.aclose()


def _bytes(n: float) -> str:
    if n < 1024:
        return f"{n:.0f} B"
    for unit in ("KB", "MB"):
        n /= 1024
        if n < 1024:
            return f"{n:.1f} {unit}"
    return f"{n / 1024:.1f} GB"


def _memory_lines(status: StackStatus) -> list[str]:
    """Each Redis node's memory against its limit, and the bytes per tracked customer."""
    lines = []
    for node, (used, limit) in sorted(status.redis_memory.items()):
        of = f"of {_bytes(limit)} maxmemory ({used / limit:.0%})" if limit else "no maxmemory"
        lines.append(f"memory   {node:<28} {_bytes(used)} used, {of}")
    if status.redis_memory and status.customers:
        used = sum(u for u, _ in status.redis_memory.values())
        lines.append(f"         {used / status.customers:,.0f} B per customer (all nodes)")
    return lines


def _rebuild_lines(status: StackStatus) -> list[str]:
    lines = []
    if status.rebuilding:
        lines.append(
            "REBUILD  the store is being wiped, or a wipe stopped halfway: nothing is written"
            " until `retention rebuild` finishes (run it again if it is not running)"
        )
    if status.replaying:
        lines.append(
            f"replay   {status.replaying} partition(s) not back where the store was;"
            " evaluations and alerts wait"
        )
    if status.corrupt:
        shown = ", ".join(status.corrupt[:5]) + (" ..." if len(status.corrupt) > 5 else "")
        lines.append(
            f"CORRUPT  {len(status.corrupt)} customer(s) whose stored state cannot be read,"
            f" set aside: {shown}; `retention restore-customer ID` rebuilds one"
        )
    return lines


def _store_lines(status: StackStatus) -> list[str]:
    lines = []
    if status.customers is not None:
        lines.append(f"customers {status.customers}")
    if status.calendar is not None:
        lines.append(f"periods  {status.calendar}")
    return lines


def render(status: StackStatus) -> str:
    def mark(ok: bool) -> str:
        return "up" if ok else "DOWN"

    lines = [
        f"broker   {status.kafka_bootstrap:<28} {mark(status.broker_ok)}",
        f"redis    {status.redis_url:<28} {mark(status.redis_ok)}",
        f"workers  {len(status.workers)} alive",
    ]
    for worker_id, info in sorted(status.workers.items()):
        parts = ", ".join(info.get("partitions", [])) or "no partitions yet"
        flag = "  STALLED: lag but nothing applied lately" if info.get("stalled") else ""
        lines.append(f"  {worker_id}: {parts}{flag}")
    lines += _store_lines(status)
    lines += _rebuild_lines(status)
    lines.extend(_memory_lines(status))
    if status.lag is not None:
        lines.append("topic          lag   seen")
        for topic in sorted(status.lag):
            lines.append(f"  {topic:<12} {status.lag[topic]:>5} {status.seen.get(topic, 0):>6}")
    else:
        lines.append("lag      unknown")
    if status.metrics_url:
        lines.append(f"metrics  {status.metrics_url}")
    for name, url in sorted(status.worker_metrics_urls.items()):
        lines.append(f"  {name}: {url}")
    if status.prometheus_url:
        lines.append(f"prometheus {status.prometheus_url}")
    if status.ingest_url:
        lines.append(f"ingest   {status.ingest_url}")
        lines.append(
            f"web      {status.web_url}  (a read key: retention keys create NAME --scope read)"
        )
    if status.restarts:
        restarts = ", ".join(f"{name} {n}" for name, n in sorted(status.restarts.items()))
        lines.append(f"restarts {restarts}")
    for key, n in sorted(status.rejected.items()):
        lines.append(f"rejected {key}: {n}")
    lines.extend(f"error    {e}" for e in status.errors)
    lines.append("status   " + ("ok" if status.ok else "NOT OK"))
    return "\n".join(lines)
