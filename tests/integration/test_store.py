"""The batch script against the reference fold, on a real Redis, without Kafka."""

from __future__ import annotations

import random
import re
from collections import Counter
from collections.abc import Sequence

import pytest
from redis.asyncio import Redis

from contract.events import build_event
from store.periods import Periods
from store.store import DEDUPE_BUCKETS, Store, accepted_record, dedupe_id, rejected_record
from tests.eventgen import BASE_TS, fold, random_events, with_duplicates
from tests.integration.customer_fields import stored_fields


def records_for(events: list[dict[str, object]], partitions: int) -> list[list[str]]:
    """Route like Kafka would: a customer to one partition, offsets counting up."""
    next_offset = [0] * partitions
    out = []
    for raw in events:
        event = build_event(raw)
        partition = hash(event.customer_id) % partitions
        out.append(accepted_record(event, "orders", partition, next_offset[partition]))
        next_offset[partition] += 1
    return out


async def apply_in_random_batches(
    store: Store, records: Sequence[Sequence[str]], rng: random.Random
) -> None:
    """Random batch sizes, and now and then a redelivery: the same messages again, as
    after a crash before the commit, which must change nothing."""
    i = 0
    while i < len(records):
        size = rng.randint(1, 400)
        await store.apply_batch(records[i : i + size])
        if rng.random() < 0.3:
            replay = await store.apply_batch(records[max(0, i - 50) : i + size])
            assert replay.applied == replay.duplicates == 0
        i += size


@pytest.mark.parametrize("shards", [None, 4])
async def test_random_batches_with_replays_equal_the_fold(
    redis: Redis, rng: random.Random, shards: int | None
) -> None:
    prefix = f"st{rng.randrange(1 << 30)}:"
    store = Store(redis, prefix, ("order", "login", "support"), shards=shards, writer=True)
    events = with_duplicates(rng, random_events(rng, customers=40, count=3000), share=0.1)
    records = records_for(events, partitions=3)
    await apply_in_random_batches(store, records, rng)
    expected = fold(events, frozenset({"order", "login", "support"}))
    for customer_id, state in expected.items():
        assert await store.read_customer(customer_id) == state
    assert await store.customer_count() == len(expected)

    # the running totals over customers equal the same totals taken from the fold
    latest = [(name, score.value) for s in expected.values() for name, score in s.scores.items()]
    totals = await store.survey_totals()
    for survey in ("nps", "csat", "ces"):
        values = [v for name, v in latest if name == survey]
        assert (totals.get(f"{survey}|sum", 0), totals.get(f"{survey}|n", 0)) == (
            sum(values),
            len(values),
        )
    nps = [v for name, v in latest if name == "nps"]
    assert totals.get("nps|promoters", 0) == sum(v >= 9 for v in nps)
    assert totals.get("nps|detractors", 0) == sum(v <= 6 for v in nps)
    times = [t.response_ms() for s in expected.values() for t in s.tickets.values()]
    seconds = [ms / 1000 for ms in times if ms is not None]
    buckets, count, total = await store.response_histogram()
    assert (count, total) == (len(seconds), pytest.approx(sum(seconds)))
    assert buckets == [(b, sum(s <= b for s in seconds)) for b, _ in buckets]
    # dense customer numbers per shard, for its bitmaps: 0..n-1 in each, kept in the
    # customer's hash
    layout = await store.layout()
    numbers: dict[str, list[int]] = {home: [] for home in layout.prefixes}
    for customer_id in expected:
        home = layout.prefix_of(customer_id)
        numbers[home].append(int(await redis.hget(home + "c:" + customer_id, "ix")))
    for home, found in numbers.items():
        assert sorted(found) == list(range(len(found)))
        assert int(await redis.get(home + "ids:next") or 0) == len(found)
    assert sorted(await store.customer_ids()) == sorted(expected)


async def test_duplicate_ids_are_forgotten_after_the_horizon(redis: Redis) -> None:
    store = Store(redis, "horizon:", dedupe_horizon_seconds=800)
    event = build_event(
        {"event_id": "e", "customer_id": "c", "ts": 1, "type": "order", "amount": 1}
    )
    width_ms = store.bucket_ms
    first = await store.apply_batch([accepted_record(event, "orders", 0, 0)], now_ms=0)
    within = await store.apply_batch(
        [accepted_record(event, "orders", 0, 1)], now_ms=width_ms * DEDUPE_BUCKETS
    )
    after = await store.apply_batch(
        [accepted_record(event, "orders", 0, 2)], now_ms=width_ms * (DEDUPE_BUCKETS + 1)
    )
    assert (first.applied, within.duplicates, after.applied) == (1, 1, 1)
    # remembered anew, in the bucket it came back in
    assert await kept_digests(redis, store) == {dedupe_id(event): "9"}


async def kept_digests(redis: Redis, store: Store) -> dict[str, str]:
    """Every digest the store keeps for dedupe, with its bucket."""
    kept: dict[str, str] = {}
    async for key in redis.scan_iter(match=store.key("dg", "*")):
        kept.update(await redis.hgetall(key))
    return kept


def login_records(
    count: int, partition: int = 0, first: int = 0, name: str = "e"
) -> list[list[str]]:
    events = [
        build_event(
            {"event_id": f"{name}{n}", "customer_id": f"c{n % 7}", "ts": 1, "type": "login"}
        )
        for n in range(first, first + count)
    ]
    return [accepted_record(e, "logins", partition, n) for n, e in enumerate(events, first)]


async def test_digests_past_the_horizon_are_swept(redis: Redis) -> None:
    store = Store(redis, "sweep:", dedupe_horizon_seconds=800)
    early = login_records(100)
    await store.apply_batch(early, now_ms=0)
    late_ms = store.bucket_ms * (DEDUPE_BUCKETS + 1)  # bucket 0 has left the horizon
    for n in range(3):
        await store.apply_batch(login_records(10, 1, 10 * n, "late"), now_ms=late_ms)
    late = {r[4] for n in range(3) for r in login_records(10, 1, 10 * n, "late")}
    assert await kept_digests(redis, store) == dict.fromkeys(late, str(DEDUPE_BUCKETS + 1))
    marker = await redis.hgetall(store.key("dg"))
    # a whole round over the hashes, which began with bucket 1 the oldest of the horizon
    assert (marker["n10"], marker["c10"], marker["f10"]) == ("30", "0", "1")


async def test_a_bursts_digests_leave_with_time_when_few_arrive(redis: Redis) -> None:
    """A burst, then a trickle of events, four per bucket width: the sweep goes by time
    as well as by arrivals, so the burst's digests leave about a bucket after the horizon,
    not once as many digests have arrived again (by arrivals alone, three hashes of the
    1,024 a batch)."""
    store = Store(redis, "trickle:", dedupe_horizon_seconds=800)
    burst = login_records(3000)
    for i in range(0, len(burst), 500):
        await store.apply_batch(burst[i : i + 500], now_ms=0)
    # bucket 0 leaves the horizon at bucket DEDUPE_BUCKETS + 1; two buckets more
    at = [store.bucket_ms * n // 4 for n in range(4, 4 * (DEDUPE_BUCKETS + 3))]
    trickle = [login_records(1, 1, n, "late") for n in range(len(at))]
    for records, now_ms in zip(trickle, at, strict=True):
        await store.apply_batch(records, now_ms=now_ms)
    kept = await kept_digests(redis, store)
    assert not {r[4] for r in burst} & set(kept)
    assert trickle[-1][0][4] in kept


async def test_the_digest_hashes_grow_and_keep_what_they_knew(redis: Redis) -> None:
    store = Store(redis, "grow:", dedupe_horizon_seconds=800)
    # a layout of 2 hashes to start with, so that a few hundred digests fill it
    await redis.hset(store.key("dg"), mapping={"k": 1, "f1": 0})
    records = login_records(200)
    assert (await store.apply_batch(records, now_ms=0)).applied == 200
    marker = await redis.hgetall(store.key("dg"))
    # 200 digests: 8 hashes, 32 a hash at most on average
    assert (marker["k"], marker["old"]) == ("3", "1")
    again = login_records(200, partition=1)
    found = [await store.apply_batch(again[i : i + 50], now_ms=0) for i in range(0, 200, 50)]
    assert sum(r.duplicates for r in found) == 200
    marker = await redis.hgetall(store.key("dg"))
    assert "old" not in marker and marker["n3"] == "200"
    hashes = [key async for key in redis.scan_iter(match=store.key("dg", "*"))]
    assert {key.rsplit(":", 2)[1] for key in hashes} == {"3"}
    assert max([await redis.hlen(key) for key in hashes]) <= 64
    assert await kept_digests(redis, store) == dict.fromkeys((r[4] for r in records), "0")


async def test_offsets_are_scoped_by_cluster(redis: Redis) -> None:
    """A new broker cluster numbers its offsets from 0 again; they must not be skipped."""
    event = build_event({"event_id": "e1", "customer_id": "c", "ts": 1, "type": "login"})
    other = build_event({"event_id": "e2", "customer_id": "c", "ts": 2, "type": "login"})
    old = Store(redis, "scope:", offsets_scope="cluster-a")
    new = Store(redis, "scope:", offsets_scope="cluster-b")
    await old.apply_batch([accepted_record(event, "logins", 0, 0)])
    result = await new.apply_batch([accepted_record(other, "logins", 0, 0)])
    assert result.applied == 1
    state = await new.read_customer("c")
    assert state is not None and state.logins == 2


async def test_rejections_count_once_per_offset(redis: Redis) -> None:
    store = Store(redis, "rej:")
    batch = [rejected_record("orders", 1, 5, "invalid_json")]
    await store.apply_batch(batch)
    await store.apply_batch(batch)
    stats = await store.stats()
    assert stats.rejected == {("orders", "invalid_json"): 1}


async def packed_fields(redis: Redis, key: str) -> list[str]:
    """The pieces s1, s2, ... of the customer hash at ``key``, checked: no other field than
    those the evaluator keeps, none missing, none over 64 bytes, the hash a listpack."""
    names = set(await redis.hkeys(key))
    pieces = sorted(
        (n for n in names if re.fullmatch(r"s[1-9][0-9]*", n)), key=lambda n: int(n[1:])
    )
    others = names - set(pieces)
    assert all(n in ("ix", "q", "r") or re.fullmatch(r"ev[0-9]*", n) for n in others), names
    assert pieces == [f"s{i}" for i in range(1, len(pieces) + 1)], pieces
    assert all([await redis.hstrlen(key, n) <= 64 for n in pieces]), key
    assert await redis.object("encoding", key) == "listpack"
    return pieces


async def test_a_long_state_is_packed_in_pieces_a_listpack_keeps(
    redis: Redis, rng: random.Random
) -> None:
    """A customer with orders on many days has a packed state of many pieces, each short
    enough for Redis to keep the hash compact; it reads the same as the reference, and
    grows a piece at a time."""
    prefix = f"long{rng.randrange(1 << 30)}:"
    store = Store(redis, prefix, ("order",))
    days = rng.sample(range(400), 150)
    events = [
        {"event_id": f"o{n}", "customer_id": "many-days", "type": "order", "status": "placed",
         "amount": round(rng.uniform(1, 300), 2), "ts": BASE_TS + day * 86_400 + n}
        for n, day in enumerate(days)
    ]  # fmt: skip
    records = records_for(events, partitions=1)
    counts = []
    for start in range(0, len(records), 30):
        await store.apply_batch(records[start : start + 30])
        counts.append(len(await packed_fields(redis, store.key("c", "many-days"))))
    assert counts == sorted(counts) and counts[-1] > 4, counts
    expected = fold(events, frozenset({"order"}))
    assert await store.read_customer("many-days") == expected["many-days"]


async def test_a_state_that_cannot_be_read_is_set_aside_and_stops_nobody(
    redis: Redis, rng: random.Random
) -> None:
    """A customer whose packed state was damaged (by hand, or a piece lost) is set aside:
    its events are refused as corrupt_state and listed, nothing of them is counted, and
    every other customer's events, before and after it in the batch, are applied."""
    prefix = f"bad{rng.randrange(1 << 30)}:"
    store = Store(redis, prefix, ("order",))

    def order(customer: str, n: int) -> dict[str, object]:
        return {"event_id": f"{customer}-{n}", "customer_id": customer, "type": "order",
                "status": "placed", "amount": 10, "ts": BASE_TS + n * 86_400}  # fmt: skip

    first = [order("fine", 0), order("damaged", 0)]
    more = [order("fine", 1), order("damaged", 1), order("fine", 2)]
    records = records_for(first + more, partitions=1)
    await store.apply_batch(records[:2])
    await redis.hset(store.key("c", "damaged"), "s1", "\xc1 not a state")
    result = await store.apply_batch(records[2:])
    assert (result.applied, result.rejected) == (2, 1)
    assert result.set_aside == (("orders", 0, 3),)
    assert (
        await store.read_customer("fine")
        == fold([e for e in first + more if e["customer_id"] == "fine"], frozenset({"order"}))[
            "fine"
        ]
    )
    stats = await store.stats()
    assert stats.rejected == {("orders", "corrupt_state"): 1}
    assert list(await store.corrupt_customers()) == ["damaged"]
    assert await redis.smembers(store.key("corrupt", "damaged")) == {"orders|0|3"}
    # nothing of the set-aside event was counted: 2 orders before, and fine's 2 since
    assert sum(r.orders for r in await Periods(redis, prefix).rows("day", 7)) == 4
    assert await redis.hget(store.key("c", "damaged"), "s1") == "\xc1 not a state"


async def test_fields_equal_to_another_are_left_out_of_the_customer_hash(
    redis: Redis, rng: random.Random
) -> None:
    """The first event seen, the latest order and the latest login are kept only while
    they differ from the first and the latest activity; the customers read the same as
    the fold, before and after more events, and every hash holds only its pieces and the
    evaluator's fields."""
    prefix = f"same{rng.randrange(1 << 30)}:"
    kinds = ("order", "login", "support")
    store = Store(redis, prefix, kinds)
    events = random_events(rng, customers=30, count=900)
    records = records_for(events, partitions=2)
    for part, upto in ((records[:450], 450), (records[450:], 900)):
        await store.apply_batch(part)
        expected = fold(events[:upto], frozenset(kinds))
        left_out = Counter[str]()
        for customer_id, state in expected.items():
            fields = await stored_fields(store, customer_id)
            shown = {
                "fs": (state.first_seen_ms, state.first_activity_ms),
                "lo": (state.last_order_ms, state.last_activity_ms),
                "ll": (state.last_login_ms, state.last_activity_ms),
            }
            for name, (value, other) in shown.items():
                assert (name in fields) == (value is not None and value != other), (name, fields)
                left_out[name] += value is not None and name not in fields
            assert await packed_fields(redis, store.key("c", customer_id))
        assert all(left_out[name] for name in ("fs", "lo", "ll")), left_out
        assert {c: await store.read_customer(c) for c in expected} == expected
