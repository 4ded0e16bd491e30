"""What remembering one event for dedupe costs in Redis: the store's 64-bit digest
against the event id itself, measured side by side in one run on a fresh Redis.

    .venv/bin/python bench/dedupe.py --events 200000

Prints bytes per remembered event for both, their ratio, and what the default horizon
(7 days) then costs per 1,000 events/s of sustained traffic.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
from pathlib import Path

from redis.asyncio import Redis

from contract.events import build_event
from retention import runtime
from store.store import dedupe_id

HORIZON_SECONDS = 7 * 86400


async def per_member(redis: Redis, key: str, members: list[str]) -> float:
    for n in range(0, len(members), 10_000):
        await redis.sadd(key, *members[n : n + 10_000])
    used = await redis.memory_usage(key, samples=0)
    return float(used or 0) / len(members)


async def measure(url: str, events: int) -> None:
    redis = Redis.from_url(url, decode_responses=True)
    try:
        raw, digests = [], []
        for n in range(events):
            event_id = f"{n:08d}-4b1f-9c2e-{n * 7919 % 10**12:012d}"  # UUID-like, 36 chars
            event = build_event(
                {
                    "event_id": event_id,
                    "customer_id": f"customer-{n % 50_000}",
                    "ts": 1_700_000_000,
                    "type": "login",
                }
            )
            raw.append(event_id)
            digests.append(dedupe_id(event))
        ids = await per_member(redis, "bench:raw", raw)
        compact = await per_member(redis, "bench:digest", digests)
    finally:
        await redis.aclose()
    per_1k = compact * 1000 * HORIZON_SECONDS / 1e9
    print(f"events remembered      {events}")
    print(f"event id (36 chars)    {ids:6.1f} B per event")
    print(f"64-bit digest          {compact:6.1f} B per event   ({compact / ids:.2f} of the id)")
    print(f"7-day horizon          {per_1k:6.2f} GB per 1,000 events/s sustained")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=200_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        process, url = runtime.start_redis(Path(tmp), Path(tmp), durable=False)
        try:
            asyncio.run(measure(url, args.events))
        finally:
            process.stop()


if __name__ == "__main__":
    main()
