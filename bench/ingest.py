"""Load on the HTTP ingest API: events/s and request latency, batches and single events.

    .venv/bin/python bench/ingest.py [--clients 50] [--batch 100] [--seconds 10] [--json]

Starts its own Tansu broker and Redis (``retention.runtime``) and one ``retention ingest``
process, makes a write key, then runs two phases of ``--seconds`` each, with ``--clients``
concurrent clients (one aiohttp connection each) in this process:

- ``batch``: each client sends ``POST /v1/batch`` with ``--batch`` order events, again and
  again, waiting for each answer;
- ``single``: the same with ``POST /v1/events``, one event per request.

Every request must get a 202 (every event acknowledged by the broker); anything else stops
the run. The rate limits are lifted for the run, since one key sends everything. Latency is
per request, from sending to the whole answer, so p50/p99 include the broker's
acknowledgement (acks=all). Client and server share the machine's cores.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import aiohttp
from redis.asyncio import Redis

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from retention import runtime  # noqa: E402
from retention.api_keys import KeyStore  # noqa: E402
from retention.config import Settings  # noqa: E402
from store.ingest_state import IngestState  # noqa: E402
from streams.topics import Topics, ensure_topics  # noqa: E402


@dataclass
class Phase:
    name: str
    clients: int
    events_per_request: int
    seconds: float
    requests: int
    events: int
    events_per_second: float
    requests_per_second: float
    p50_ms: float
    p99_ms: float


def _event(n: int, client: int, now: float) -> dict[str, Any]:
    return {
        "event_id": f"b{client}-{n}",
        "customer_id": f"c-{(client * 7919 + n) % 20000}",
        "ts": now,
        "type": "order",
        "amount": 12.5,
    }


async def _client(
    session: aiohttp.ClientSession,
    url: str,
    key: str,
    client: int,
    size: int,
    until: float,
    latencies: list[float],
) -> int:
    path = "/v1/batch" if size > 1 else "/v1/events"
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    sent = n = 0
    while time.monotonic() < until:
        now = time.time()
        events = [_event(n + i, client, now) for i in range(size)]
        body = json.dumps({"events": events} if size > 1 else events[0]).encode()
        n += size
        started = time.perf_counter()
        async with session.post(url + path, data=body, headers=headers) as resp:
            await resp.read()
            if resp.status != 202:
                raise RuntimeError(f"{path}: {resp.status} {await resp.text()}")
        latencies.append(time.perf_counter() - started)
        sent += size
    return sent


async def run_phase(
    name: str, url: str, key: str, clients: int, size: int, seconds: float
) -> Phase:
    latencies: list[float] = []
    connector = aiohttp.TCPConnector(limit=clients)
    async with aiohttp.ClientSession(connector=connector) as session:
        started = time.monotonic()
        until = started + seconds
        sent = await asyncio.gather(
            *(_client(session, url, key, c, size, until, latencies) for c in range(clients))
        )
        elapsed = time.monotonic() - started
    cuts = statistics.quantiles(latencies, n=100, method="inclusive")
    return Phase(
        name=name,
        clients=clients,
        events_per_request=size,
        seconds=round(elapsed, 2),
        requests=len(latencies),
        events=sum(sent),
        events_per_second=round(sum(sent) / elapsed, 1),
        requests_per_second=round(len(latencies) / elapsed, 1),
        p50_ms=round(cuts[49] * 1000, 2),
        p99_ms=round(cuts[98] * 1000, 2),
    )


async def bench(args: argparse.Namespace, work: Path) -> list[Phase]:
    group = runtime.ProcessGroup()
    try:
        services = runtime.start_services(work, group)
        bootstrap, redis_url = services.kafka_bootstrap, services.redis_url
        tag = uuid.uuid4().hex[:6]
        settings = Settings(
            kafka_bootstrap=bootstrap,
            redis_url=redis_url,
            topic_prefix=f"bench{tag}-",
            key_prefix=f"bench{tag}:",
            ingest_rate_per_second=1e9,
            ingest_burst=1_000_000_000,
            ingest_events_per_second=1e9,
            ingest_events_burst=1_000_000_000,
            ingest_bytes_per_second=1e12,
            ingest_bytes_burst=1_000_000_000_000,
        )
        await ensure_topics(bootstrap, Topics.from_settings(settings), settings.partitions)
        redis = Redis.from_url(redis_url, decode_responses=True)
        try:
            key = await KeyStore(IngestState(redis, settings.key_prefix)).create("bench")
        finally:
            await redis.aclose()
        port = runtime.free_port()
        argv = runtime.retention_argv("ingest", "--port", str(port))
        group.add(
            runtime.start_listening("ingest", argv, work, runtime.settings_env(settings), port)
        )
        url = f"http://127.0.0.1:{port}"
        # a short warm-up: producer metadata, connections, the first key read
        await run_phase("warm-up", url, key, args.clients, args.batch, 1.0)
        return [
            await run_phase("batch", url, key, args.clients, args.batch, args.seconds),
            await run_phase("single", url, key, args.clients, 1, args.seconds),
        ]
    finally:
        group.stop()


def render(phases: list[Phase]) -> str:
    lines = [
        f"{'phase':<8} {'clients':>7} {'ev/req':>6} {'requests':>9} {'events':>9} "
        f"{'events/s':>10} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8}"
    ]
    for p in phases:
        lines.append(
            f"{p.name:<8} {p.clients:>7} {p.events_per_request:>6} {p.requests:>9} "
            f"{p.events:>9} {p.events_per_second:>10,.0f} {p.requests_per_second:>8,.0f} "
            f"{p.p50_ms:>8.1f} {p.p99_ms:>8.1f}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--batch", type=int, default=100, help="events per batch request")
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each phase")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-ingest-") as tmp:
        try:
            phases = asyncio.run(bench(args, Path(tmp)))
        except runtime.MissingBinary as exc:
            print(f"bench: {exc}", file=sys.stderr)
            return 2
    print(json.dumps([asdict(p) for p in phases]) if args.json else render(phases))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
