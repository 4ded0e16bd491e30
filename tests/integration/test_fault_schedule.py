"""A random schedule of faults under ``retention up --workers 2`` while 24,000 orders
stream in: workers and Redis killed (``up`` restarts them, Redis from its AOF) and Redis
frozen for seconds. Afterwards every customer, every month row and every evaluation total
is exact, and no alert reached the subscriber twice.

The suite runs one seed; ``RETENTION_DRILL_SEEDS=1,2,3`` runs others.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from redis.asyncio import Redis
from redis.exceptions import RedisError

from contract.events import build_event
from processors.metrics import period_rows
from retention.config import Settings
from store.evaluations import due_backlog
from store.periods import Periods
from store.store import Store
from tests.eventgen import fold, worker_rates
from tests.integration.receivers import SECRET, Receiver
from tests.integration.recount import kept_and_recounted
from tests.integration.test_up import Up, produce

ORDERS = 24_000
FILES = 12
FAULTS = 12
SEEDS = [int(s) for s in os.environ.get("RETENTION_DRILL_SEEDS", "11").split(",")]


def history(rng: random.Random, now: datetime) -> list[dict[str, Any]]:
    """Orders of 800 customers over the last 200 days, some of them refunds."""
    return [
        {
            "event_id": f"f{n}",
            "customer_id": f"shop-{rng.randrange(800):03d}",
            "ts": (now - timedelta(seconds=rng.randrange(200 * 86400))).isoformat(),
            "type": "order",
            "amount": round(rng.uniform(1, 400), 2),
            "status": rng.choices(["placed", "refunded"], [12, 1])[0],
        }
        for n in range(ORDERS)
    ]


def live_pid(up: Up, name: str, timeout: float = 60) -> int:
    """The pid of ``name`` once it runs (``up`` may be restarting it after a fault)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pid = up.recorded().pids.get(name)
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, 0)
                return pid
        time.sleep(0.2)
    raise AssertionError(f"{name} did not come back within {timeout} s")


def fault(rng: random.Random, up: Up) -> str:
    """One fault, drawn at random, on the processes ``up`` runs now."""
    kind = rng.choice(["worker", "redis-kill", "redis-stop"])
    if kind == "worker":
        name = rng.choice(["worker-1", "worker-2"])
        os.kill(live_pid(up, name), signal.SIGKILL)
        return f"SIGKILL {name}"
    redis = live_pid(up, "redis")
    if kind == "redis-kill":
        os.kill(redis, signal.SIGKILL)
        return "SIGKILL redis"
    pause = rng.uniform(2, 8)
    os.kill(redis, signal.SIGSTOP)
    time.sleep(pause)
    os.kill(redis, signal.SIGCONT)
    return f"SIGSTOP redis {pause:.1f} s"


async def read(url: str, action: Any, timeout: float = 120) -> Any:
    """``action(redis)`` against the stack's Redis, retried while it restarts."""
    deadline = time.monotonic() + timeout
    while True:
        redis = Redis.from_url(url, decode_responses=True, socket_timeout=5)
        try:
            return await action(redis)
        except (OSError, RedisError) as exc:  # refused, or loading its AOF
            if time.monotonic() > deadline:
                raise AssertionError(f"Redis did not come back: {exc!r}") from exc
        finally:
            with contextlib.suppress(Exception):
                await redis.aclose()
        await asyncio.sleep(0.5)


@pytest.mark.parametrize("seed", SEEDS)
async def test_a_random_fault_schedule_ends_exact(
    tmp_path: Path, receiver: Receiver, seed: int
) -> None:
    rng = random.Random(seed)
    notifications = tmp_path / "notifications.yml"
    subscriber = {
        "name": "success-team",
        "type": "webhook",
        "url": receiver.url("hook", "success-team"),
        "allow_http": True,
        "secret": SECRET,
    }
    notifications.write_text(yaml.safe_dump({"cooldown": 0, "subscribers": [subscriber]}))
    data_dir = tmp_path / "data"
    up = Up(data_dir, "--workers", "2", "--notifications", str(notifications))
    try:
        up.until("ready in", timeout=60)
        redis_url = up.recorded().redis_url
        events = history(rng, datetime.now(UTC))
        files = [events[i::FILES] for i in range(FILES)]
        schedule = sorted(rng.sample(range(FILES * 2), FAULTS))
        done: list[str] = []
        for step in range(FILES * 2):
            if step % 2 == 0:
                await asyncio.to_thread(produce, data_dir, tmp_path, files[step // 2])
            if step in schedule:
                done.append(await asyncio.to_thread(fault, rng, up))
                await asyncio.sleep(rng.uniform(1, 4))
        print(f"\nDRILL fault-schedule seed={seed}: " + "; ".join(done))

        store_of = lambda redis: Store(redis, "rt:")  # noqa: E731

        async def applied(redis: Redis) -> int:
            return sum((await store_of(redis).stats()).accepted.values())

        deadline = time.monotonic() + 240
        while await read(redis_url, applied) < ORDERS:
            assert time.monotonic() < deadline, "not every order was applied"
            await asyncio.sleep(1)

        async def settled(redis: Redis) -> bool:
            waiting, _ = await due_backlog(store_of(redis), int(time.time() * 1000))
            return waiting == 0

        deadline = time.monotonic() + 120
        while not await read(redis_url, settled):
            assert time.monotonic() < deadline, "evaluations did not catch up"
            await asyncio.sleep(1)

        settings = Settings(key_prefix="rt:")
        expected = fold(events, frozenset(settings.activity_kinds), worker_rates(settings))

        async def check(redis: Redis) -> None:
            store = store_of(redis)
            assert sum((await store.stats()).accepted.values()) == ORDERS
            states = await store.read_customers(sorted(expected))
            assert {s.customer_id: s for s in states} == expected
            want = period_rows(
                [build_event(e) for e in events],
                period="month",
                churn_after=timedelta(days=settings.churn_after_days),
                activity_kinds=set(settings.activity_kinds),
            )
            got = await Periods(redis, "rt:").rows("month", settings.churn_after_days)
            assert [r.as_dict() for r in got] == [r.as_dict() for r in want]
            # the totals kept in step equal a recount (read again if an evaluation landed
            # between the two reads)
            for _ in range(20):
                kept, recount = await kept_and_recounted(store)
                if kept == recount:
                    break
                await asyncio.sleep(0.5)
            assert kept == recount

        await read(redis_url, check)
        received = receiver.to("success-team")
        assert all(r.signature_ok for r in received)
        keys = Counter(r.json()["key"] for r in received)
        twice = {key: n for key, n in keys.items() if n > 1}
        assert not twice, f"alerts sent more than once: {twice}"
        assert received, "the drill raised no alert at all"
        print(f"DRILL fault-schedule seed={seed}: exact; {len(keys)} alerts, each sent once")
    finally:
        up.kill_all()
