"""The evaluation queues: changed customers served first come first served and queued
once, rechecks taken exactly when due, leases that expire or are lost, and the memory
they take. The scripts are driven with exact clocks (ms)."""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from typing import Any

import pytest
from redis.asyncio import Redis

from contract.events import build_event
from processors.lifecycle import LifecyclePolicy
from processors.risk import RiskPolicy
from store.evaluations import LEASE_MS, Evaluator, due_backlog
from store.store import Store, accepted_record
from tests.integration.queue_state import CHUNK, changed_queue, queue_bytes, rechecks

T0_MS = 1_704_067_200_000  # 2024-01-01
HOUR_MS = 3_600_000
DAY_MS = 24 * HOUR_MS


class Queues:
    """A fresh store, fed changed customers, with its shards' take and reschedule."""

    def __init__(self, redis: Redis, prefix: str, shards: int) -> None:
        self.redis = redis
        self.store = Store(redis, prefix, ("order",), shards=shards, writer=True)
        self.evaluator = Evaluator(self.store, RiskPolicy(), LifecyclePolicy())
        self.offset = 0

    async def homes(self) -> list[str]:
        return list((await self.store.layout()).prefixes)

    async def home_of(self, customer: str) -> str:
        return (await self.store.layout()).prefix_of(customer)

    async def change(self, customers: Sequence[str], now_ms: int) -> None:
        """One batch with an order of each customer, in that order, at ``now_ms``."""
        records = []
        for customer in customers:
            event = build_event(
                {"event_id": f"e{self.offset}", "customer_id": customer, "type": "order",
                 "ts": "2023-12-01T00:00:00+00:00", "amount": 10}
            )  # fmt: skip
            records.append(accepted_record(event, "orders", 0, self.offset))
            self.offset += 1
        await self.store.apply_batch(records, now_ms=now_ms)

    async def take(self, home: str, now_ms: int, limit: int) -> list[str]:
        taken = await self.evaluator._take(
            keys=[home + "ids"], args=[home, now_ms, limit, now_ms + LEASE_MS]
        )
        return list(taken)

    async def reschedule(
        self, home: str, lease: int, pairs: Sequence[tuple[str, int | str]]
    ) -> None:
        args: list[Any] = [home, lease]
        for customer, at in pairs:
            args += [customer, at]
        await self.evaluator._reschedule_script(keys=[home + "ids"], args=args)


@pytest.mark.parametrize("shards", [1, 3])
async def test_changed_customers_wait_once_in_the_order_of_their_first_change(
    redis: Redis, rng: random.Random, shards: int
) -> None:
    q = Queues(redis, f"qf{rng.randrange(1 << 30)}:", shards)
    await q.change(["a", "b"], T0_MS + 1000)
    await q.change(["c", "a"], T0_MS + 2000)
    await q.change(["b", "d", "c"], T0_MS + 3000)
    first_change = {"a": 1000, "b": 1000, "c": 2000, "d": 3000}
    for home in await q.homes():
        mine = [c for c in "abcd" if await q.home_of(c) == home]
        assert await changed_queue(redis, home) == mine
        assert await redis.llen(home + "dueq") == len(mine)  # each pushed once
        for customer in mine:
            assert await redis.hget(home + "c:" + customer, "q") == str(
                T0_MS + first_change[customer]
            )
    waiting, waited = await due_backlog(q.store, T0_MS + 10_000)
    assert (waiting, waited) == (4, 9.0)

    # each shard serves its oldest first, whatever the clock says
    taken = []
    for home in await q.homes():
        mine = [c for c in "abcd" if await q.home_of(c) == home]
        assert await q.take(home, T0_MS, 1) == mine[:1]
        taken += mine[:1]
    # taken customers are no longer marked, and a change queues them again, at the end
    await q.change(taken, T0_MS + 4000)
    for home in await q.homes():
        mine = [c for c in "abcd" if await q.home_of(c) == home]
        expected = [c for c in mine if c not in taken] + [c for c in mine if c in taken]
        assert await changed_queue(redis, home) == expected
    # the customer who waits longest is now the earliest not taken
    oldest = min(first_change[c] for c in "abcd" if c not in taken)
    assert await due_backlog(q.store, T0_MS + 10_000) == (4, (10_000 - oldest) / 1000)


async def test_a_recheck_is_taken_at_its_time_and_a_lost_lease_changes_nothing(
    redis: Redis, rng: random.Random
) -> None:
    q = Queues(redis, f"qr{rng.randrange(1 << 30)}:", 1)
    (home,) = await q.homes()
    await q.change(["x", "y", "z"], T0_MS)
    assert await q.take(home, T0_MS, 10) == ["x", "y", "z"]
    lease = T0_MS + LEASE_MS
    assert await rechecks(redis, home) == {"x": lease, "y": lease, "z": lease}
    assert await changed_queue(redis, home) == []

    at = T0_MS + 5 * HOUR_MS + 123
    await q.reschedule(home, lease, [("x", at), ("y", at + 1), ("z", at + 2)])
    assert await rechecks(redis, home) == {"x": at, "y": at + 1, "z": at + 2}
    assert await due_backlog(q.store, at - 1) == (0, 0.0)
    assert await due_backlog(q.store, at + 1000) == (3, 1.0)
    assert await q.take(home, at - 1, 10) == []  # not one ms early
    assert await q.take(home, at, 10) == ["x"]
    assert await q.take(home, at + 2, 1) == ["y"]  # earliest first

    # x's evaluator stops: x comes back when its lease ends, not before
    first_lease = at + LEASE_MS
    assert await q.take(home, first_lease - 1, 10) == ["z"]
    assert await q.take(home, first_lease, 10) == ["x"]
    second_lease = first_lease + LEASE_MS
    # the first evaluator finishing late leaves x to the second one
    await q.reschedule(home, first_lease, [("x", at + DAY_MS)])
    assert (await rechecks(redis, home))["x"] == second_lease
    await q.reschedule(home, second_lease, [("x", at + DAY_MS)])
    assert (await rechecks(redis, home))["x"] == at + DAY_MS

    # a customer whose hash is gone leaves the queues: when its recheck falls due, or
    # when its evaluator finds it gone
    await redis.delete(home + "c:y", home + "c:z")
    assert await q.take(home, at + DAY_MS - 1, 10) == []
    y_lease = at + 2 + LEASE_MS
    await q.reschedule(home, y_lease, [("y", "")])
    assert await rechecks(redis, home) == {"x": at + DAY_MS}


async def test_the_queues_follow_a_model_through_splits_leases_and_changes(
    redis: Redis, rng: random.Random
) -> None:
    """Random changes, takes and reschedules (some late) against a plain model: the
    changed queue in order, rechecks exact, every take oldest first."""
    q = Queues(redis, f"qm{rng.randrange(1 << 30)}:", 1)
    (home,) = await q.homes()
    customers = [f"m{n:03d}" for n in range(400)]
    queue: list[str] = []
    sched: dict[str, int] = {}
    leases: list[tuple[int, list[str]]] = []
    now = T0_MS
    for _ in range(70):
        now += rng.choice([1, 1000, 20_000, 61_000, HOUR_MS])
        step = rng.random()
        if step < 0.35:
            changed = rng.sample(customers, rng.randrange(1, 120))
            await q.change(changed, now)
            queue += [c for c in changed if c not in queue]
        elif step < 0.75 or not leases:
            limit = rng.randrange(1, 160)
            taken = await q.take(home, now, limit)
            n_changed = assert_take(taken, queue, sched, now, limit)
            # a changed customer taken for its recheck stays queued: it is evaluated again
            queue = queue[n_changed:]
            for customer in taken:
                sched[customer] = now + LEASE_MS
            leases.append((now + LEASE_MS, taken))
        else:
            lease, taken = leases.pop(rng.randrange(len(leases)))
            # next rechecks: a few shared times, and spread ones
            shared = [now + rng.randrange(DAY_MS) for _ in range(3)]
            pairs = [
                (c, rng.choice(shared) if rng.random() < 0.5 else now + rng.randrange(DAY_MS))
                for c in taken
                if rng.random() < 0.9
            ]
            await q.reschedule(home, lease, pairs)
            for customer, at in pairs:
                if sched.get(customer) == lease:
                    sched[customer] = at
        assert await changed_queue(redis, home) == queue
        assert await rechecks(redis, home) == sched
    assert len(sched) > 128, "the rechecks never filled more than one chunk"


def assert_take(
    taken: list[str], queue: list[str], sched: dict[str, int], now: int, limit: int
) -> int:
    """What take_due.lua must return: half the places to each queue, what one leaves to
    the other, changed customers in order, then due rechecks earliest first. Returns how
    many came from the changed queue."""
    half = math.ceil(limit / 2)
    due = sorted(sched[c] for c in sched if sched[c] <= now)
    n_changed = min(half, len(queue))
    n_sched = min(limit - n_changed, len(due))
    if n_changed == half and n_sched < limit - half:
        n_changed = min(len(queue), limit - n_sched)
    changed = queue[:n_changed]
    assert taken[:n_changed] == changed
    rest = taken[n_changed:]
    assert all(sched[c] <= now for c in rest), "a recheck taken early"
    assert len(set(taken)) == len(taken)
    # the rechecks read were the n_sched earliest; some may have been changed customers
    if n_sched:
        cut = due[n_sched - 1]
        assert all(sched[c] <= cut for c in rest), "a later recheck taken before an earlier"
        overlap = sum(1 for c in changed if sched.get(c, now + 1) <= cut)
        assert n_sched - overlap <= len(rest) <= n_sched
        left = [c for c in sched if sched[c] < cut and c not in taken]
        assert not left, "an earlier recheck left behind"
    else:
        assert rest == []
    return n_changed


@pytest.mark.parametrize("shards", [1, 2])
async def test_the_queues_take_a_fraction_of_a_sorted_sets_memory(
    redis: Redis, rng: random.Random, shards: int
) -> None:
    """2,000 changed customers, then the same scheduled (leased at one time, then spread
    over a day): a few tens of bytes each, where one sorted set of them (the layout of
    earlier versions, a skiplist past 128 entries) takes about a hundred."""
    n = 2000
    q = Queues(redis, f"qb{rng.randrange(1 << 30)}:", shards)
    customers = [f"customer-{k:06d}" for k in range(n)]
    for start in range(0, n, 500):
        await q.change(customers[start : start + 500], T0_MS + start)
    homes = await q.homes()

    async def measured() -> tuple[float, float]:
        sizes = [await queue_bytes(redis, home) for home in homes]
        # chunks are half full at least, on average: splits halve them, and times past a
        # full chunk's end start a new one
        chunks = sum([await redis.zcard(home + "sched:at") for home in homes])
        assert chunks <= 2 * n / CHUNK + len(homes)
        return sum(s[0] for s in sizes) / n, sum(s[1] for s in sizes) / n

    changed_bytes, _ = await measured()
    # the same entries in one sorted set per shard, as earlier versions kept them
    scratch = [home + "scratch" for home in homes]
    for home, key in zip(homes, scratch, strict=True):
        mine = {c: T0_MS + k for k, c in enumerate(customers) if await q.home_of(c) == home}
        await redis.zadd(key, mine)
    one_set = sum([await redis.memory_usage(key) or 0 for key in scratch]) / n
    for key in scratch:
        await redis.delete(key)
    # a listpack entry costs its bytes and two (its length, and its length backwards);
    # a list adds node headers and allocation rounding spread over hundreds of entries
    entry = len(customers[0]) + 2
    assert changed_bytes <= entry + 8 and changed_bytes < one_set / 3, (changed_bytes, one_set)
    # a recheck adds its time (a 64-bit integer: 10 bytes in a listpack), and its chunk's
    # headers and index entry, spread over at least half a chunk's entries
    bound = min(entry + 10 + 8, one_set / 3)

    now = T0_MS + HOUR_MS
    for home in homes:
        taken = await q.take(home, now, n)
        leased = await rechecks(redis, home)
        assert set(leased) == set(taken) and set(leased.values()) == {now + LEASE_MS}
    _, leased_bytes = await measured()
    assert leased_bytes < bound, (leased_bytes, one_set)
    for home in homes:
        spread = [(c, now + rng.randrange(DAY_MS)) for c in await rechecks(redis, home)]
        await q.reschedule(home, now + LEASE_MS, spread)
    _, spread_bytes = await measured()
    assert spread_bytes < bound, (spread_bytes, one_set)
    assert sum([len(await rechecks(redis, home)) for home in homes]) == n
