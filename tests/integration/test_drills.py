"""Fault drills: real workers, a real broker and Redis, and the faults production sees.

Each drill ends with every customer's state equal to the batch reference fold of the
events sent, and the store's count of applied events equal to the number of distinct
events: nothing lost, nothing counted twice. Each prints a line with its figures
(`pytest tests/integration/test_drills.py -s -q`).
"""

from __future__ import annotations

import asyncio
import json
import random
import signal
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

from contract.events import REJECT_REASONS, build_event
from retention import runtime
from retention.config import Settings
from store.evaluations import due_backlog
from store.store import Store, accepted_record
from streams.producer import EventProducer
from streams.topics import Topics, cluster_id, ensure_topics
from tests.eventgen import fold, random_events, with_duplicates, worker_rates
from tests.integration.conftest import Workers, read_topic, wait_until
from tests.integration.test_pipeline import send_all

pytestmark = pytest.mark.timeout(600)


def report(name: str, **figures: Any) -> None:
    print(f"\nDRILL {name}: " + ", ".join(f"{k}={v}" for k, v in figures.items()))


def orders(rng: random.Random, customers: int, count: int, start: int) -> list[dict[str, Any]]:
    return [
        {
            "event_id": f"o-{start + n}",
            "customer_id": f"c-{rng.randrange(customers):03d}",
            "ts": 1_700_000_000 + rng.randrange(0, 120 * 86400),
            "type": "order",
            "amount": round(rng.uniform(1, 500), 2),
        }
        for n in range(count)
    ]


def distinct(events: list[dict[str, Any]]) -> int:
    return len({(e["type"], e["customer_id"], e["event_id"]) for e in events})


async def applied(store: Store) -> int:
    """Events the store has applied; -1 while Redis is down or restarting."""
    try:
        return sum((await store.stats()).accepted.values())
    except RedisConnectionError:
        return -1


async def settle(store: Store, expected: int, workers: Workers, timeout: float = 120) -> float:
    """Wait until the store has applied ``expected`` events; returns the seconds it took."""
    started = time.monotonic()

    async def done() -> bool:
        return await applied(store) >= expected

    await wait_until(done, timeout, f"{expected} events applied", workers.logs)
    await asyncio.sleep(1.0)  # anything counted twice would show up now
    return time.monotonic() - started


async def send_and_settle(
    producer: EventProducer,
    store: Store,
    workers: Workers,
    events: list[dict[str, Any]],
    expected: int,
) -> float:
    await send_all(producer, events)
    await producer.flush()
    return await settle(store, expected, workers)


async def assert_exact(store: Store, settings: Settings, events: list[dict[str, Any]]) -> int:
    """State equals the reference fold; returns events counted twice (must be 0)."""
    expected = fold(events, frozenset(settings.activity_kinds), worker_rates(settings))
    doubled = await applied(store) - distinct(events)
    assert doubled == 0, f"{doubled} events counted twice (or lost, if negative)"
    assert await store.customer_ids() == sorted(expected)
    for customer_id, state in expected.items():
        assert await store.read_customer(customer_id) == state, customer_id
    return doubled


async def prefixed_keys(redis: Redis, prefix: str) -> list[str]:
    return [key async for key in redis.scan_iter(match=prefix + "*", count=1000)]


async def test_redis_rolled_back_mid_stream_replays_what_it_lost(
    settings: Settings, store: Store, redis: Redis, producer: EventProducer, workers: Workers
) -> None:
    """A restore from an earlier copy (failover to a lagging replica, last night's backup)."""
    rng = random.Random(1)
    batches = [orders(rng, 300, 4000, n * 4000) for n in range(3)]
    workers.start()
    await send_and_settle(producer, store, workers, batches[0], 4000)

    snapshot = {
        key: await redis.dump(key) for key in await prefixed_keys(redis, settings.key_prefix)
    }
    await send_and_settle(producer, store, workers, batches[1], 8000)

    # one transaction, as a failover is: the worker never sees a half-restored store
    async with redis.pipeline(transaction=True) as restore:
        restore.delete(*await prefixed_keys(redis, settings.key_prefix))
        for key, value in snapshot.items():
            restore.restore(key, 0, value)
        restore.hgetall(store.key("stats"))
        stats = (await restore.execute())[-1]
    restored = sum(int(n) for name, n in stats.items() if name.startswith("accepted|"))
    assert restored == 4000, "the restore did not take the store back"
    await send_all(producer, batches[2])
    await producer.flush()
    recovery = await settle(store, 12000, workers)  # from the moment the batch is sent

    events = [e for batch in batches for e in batch]
    doubled = await assert_exact(store, settings, events)
    report("redis-rollback", sent=len(events), lost=0, doubled=doubled, recover_s=f"{recovery:.1f}")


async def test_redis_emptied_is_rebuilt_from_the_topics(
    settings: Settings, store: Store, redis: Redis, producer: EventProducer, workers: Workers
) -> None:
    rng = random.Random(2)
    events = with_duplicates(rng, random_events(rng, customers=200, count=6000), share=0.05)
    workers.start()
    await send_and_settle(producer, store, workers, events, distinct(events))

    await redis.delete(*await prefixed_keys(redis, settings.key_prefix))
    # no new event arrives: the worker notices the loss by itself
    recovery = await settle(store, distinct(events), workers)
    doubled = await assert_exact(store, settings, events)
    # a reader started now finds the store in this version's format, not an earlier one's
    fresh = Store(redis, settings.key_prefix, offsets_scope=store.offsets_scope)
    assert await fresh.read_customer(events[0]["customer_id"]) is not None
    report("redis-emptied", sent=len(events), lost=0, doubled=doubled, recover_s=f"{recovery:.1f}")


async def test_rebuild_command_wipes_and_replays(
    settings: Settings, store: Store, redis: Redis, producer: EventProducer, workers: Workers
) -> None:
    from retention.rebuild import rebuild

    rng = random.Random(3)
    events = random_events(rng, customers=100, count=3000)
    workers.start()
    await send_and_settle(producer, store, workers, events, distinct(events))
    await redis.hset(f"{settings.key_prefix}notify:stats", "sent", 7)

    lines: list[str] = []
    assert await rebuild(settings, write=lines.append, timeout=120, poll_seconds=0.5) == 0
    assert lines[0].startswith("deleted ")
    await settle(store, distinct(events), workers)
    await assert_exact(store, settings, events)
    assert await redis.hget(f"{settings.key_prefix}notify:stats", "sent") == "7"


async def test_a_rebuild_killed_halfway_refuses_writes_until_run_again(
    settings: Settings, store: Store, redis: Redis, producer: EventProducer, workers: Workers
) -> None:
    """A wipe that stops halfway leaves the store refusing every write; run again, the
    rebuild ends exact and keeps what is not derived from the topics (write keys,
    delivery records); evaluations wait until the replay is back where the store was."""
    from retention.api_keys import KeyStore, digest, match
    from retention.rebuild import rebuild
    from store.ingest_state import IngestState

    rng = random.Random(4)
    events = random_events(rng, customers=120, count=3000)
    worker = workers.start()
    await send_and_settle(producer, store, workers, events, distinct(events))
    keys = KeyStore(IngestState(redis, settings.key_prefix))
    api_key = await keys.create("shop-backend")
    await redis.hset(f"{settings.key_prefix}notify:stats", "sent", 7)
    ends = await store.applied_offsets()
    workers.kill(worker)
    keys_before = len(await prefixed_keys(redis, settings.key_prefix))

    # the wipe dies after its first page of deletions (killed, or Redis went away)
    dying = Redis.from_url(str(settings.redis_url), decode_responses=True)
    calls = 0
    unlink = dying.unlink

    async def unlink_then_die(*names: str) -> int:
        nonlocal calls
        calls += 1
        if calls > 1:
            raise RedisConnectionError("gone")
        return int(await unlink(*names))

    dying.unlink = unlink_then_die  # type: ignore[method-assign]
    half = Store(dying, settings.key_prefix, offsets_scope=store.offsets_scope)
    with pytest.raises(RedisConnectionError):
        await half.wipe(page=50, replay_to={tp: end + 1 for tp, end in ends.items()})
    await dying.aclose()
    assert await store.rebuilding()
    assert 0 < len(await prefixed_keys(redis, settings.key_prefix)) < keys_before
    late = build_event(
        {"event_id": "late", "customer_id": "x", "ts": 1_700_000_000, "type": "login"}
    )
    with pytest.raises(ResponseError, match="REBUILDING"):
        await store.apply_batch([accepted_record(late, "logins", 9, 0)])

    # run again, workers stopped: the wipe finishes, and the replay has a target
    lines: list[str] = []
    assert await rebuild(settings, wait=False, write=lines.append) == 0
    assert not await store.rebuilding()
    assert await store.customer_ids() == []
    targets = await store.replaying()
    assert targets and all(end > 0 for end in targets.values())

    # one partition's replay lags far behind (a slow broker): evaluations wait for it
    orders = (Topics.from_settings(settings).source("order"), 0)
    await store.expect_replay(orders, 10**9)
    life = store.key("life", "counts")
    workers.settings = settings.model_copy(update={"evaluate_every_seconds": 0.25})
    workers.start()
    await settle(store, distinct(events), workers)
    await assert_exact(store, settings, events)
    await asyncio.sleep(1.5)  # six evaluation ticks
    assert not await redis.exists(life), "customers were evaluated before the replay caught up"
    assert list(await store.replaying()) == [orders]

    await redis.hdel(store.key("replay"), f"{orders[0]}|{orders[1]}")

    async def evaluated() -> bool:
        return bool(await redis.exists(life))

    await wait_until(evaluated, 60, "evaluations to resume after the replay", workers.logs)
    kept = {name: stored for name, (stored, _) in (await keys.digests()).items()}
    assert match(digest(api_key), kept) == "shop-backend"
    assert await redis.hget(f"{settings.key_prefix}notify:stats", "sent") == "7"


async def test_evaluation_totals_equal_a_recount_through_a_minute_of_rebalances(
    settings: Settings, store: Store, redis: Redis, producer: EventProducer, workers: Workers
) -> None:
    """Two workers, one of them killed and replaced every few seconds for a minute while
    orders stream in and customers are evaluated: a shard changes hands at every
    rebalance, and a killed worker's leases run out. Afterwards the totals kept in step
    equal a recount of the stored evaluations."""
    from tests.integration.recount import kept_and_recounted

    rng = random.Random(6)
    recent = int(time.time()) - 120 * 86400
    workers.settings = settings.model_copy(update={"evaluate_every_seconds": 0.5})
    running = [workers.start(), workers.start()]
    sent: list[dict[str, Any]] = []
    rebalances = 0
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        wave = [
            {**e, "ts": recent + rng.randrange(0, 120 * 86400)}
            for e in orders(rng, 400, 400, len(sent))
        ]
        await send_all(producer, wave)
        await producer.flush()
        sent += wave
        await asyncio.sleep(rng.uniform(3, 6))
        workers.kill(running.pop(0))  # the group rebalances, its leases run out
        running.append(workers.start())
        rebalances += 1
    await settle(store, distinct(sent), workers)

    async def evaluated() -> bool:
        waiting, _ = await due_backlog(store, int(time.time() * 1000))
        return waiting == 0

    await wait_until(evaluated, 90, "every changed customer to be evaluated", workers.logs)
    workers.stop_all()
    kept, recount = await kept_and_recounted(store)
    assert kept == recount
    assert sum(kept.lifecycle.values()) == len(await store.customer_ids())
    assert kept.at_risk or kept.lifecycle.get("active")
    report(
        "rebalance-totals",
        rebalances=rebalances,
        sent=len(sent),
        customers=sum(kept.lifecycle.values()),
    )


async def test_a_customer_whose_state_cannot_be_read_stops_nobody_and_is_restored(
    settings: Settings, store: Store, redis: Redis, producer: EventProducer, workers: Workers
) -> None:
    """One customer's stored state damaged by hand: every other customer's events go on
    being applied, its own are dead-lettered as corrupt_state, and `restore-customer`
    rebuilds it from the topics. Then every customer, period row and cohort is exact."""
    from processors.metrics import cohorts, period_rows
    from retention.restore import restore_customer
    from store.periods import Periods

    rng = random.Random(7)
    events = random_events(rng, customers=60, count=3000)
    first, second = events[:1500], events[1500:]
    victim = first[0]["customer_id"]
    workers.settings = settings.model_copy(update={"shards": 2})
    workers.start()
    await send_and_settle(producer, store, workers, first, distinct(first))

    home = (await store.layout()).prefix_of(victim)
    await redis.hset(f"{home}c:{victim}", "s1", "\xc1 damaged")
    theirs = [e for e in second if e["customer_id"] == victim]
    assert theirs
    started = time.monotonic()
    recovery = await send_and_settle(
        producer, store, workers, second, distinct(first) + distinct(second) - distinct(theirs)
    )
    report("corrupt-customer", others_applied_s=f"{time.monotonic() - started:.1f}")
    assert list(await store.corrupt_customers()) == [victim]
    stats = await store.stats()
    assert sum(n for (_, reason), n in stats.rejected.items() if reason == "corrupt_state") == len(
        theirs
    )
    dlq = await read_topic(
        str(settings.kafka_bootstrap),
        Topics.from_settings(settings).dlq,
        lambda got: len(got) >= len(theirs),
    )
    reasons = [dict(m.headers).get("x-reason") for m in dlq]
    assert reasons.count(b"corrupt_state") == len(theirs)

    lines: list[str] = []
    restored = await restore_customer(settings, victim, write=lines.append)
    assert restored.applied == distinct(theirs)
    assert restored.folded == distinct([e for e in first if e["customer_id"] == victim])
    assert await store.corrupt_customers() == {}
    assert (await store.layout()).count == 2
    # nothing of the restore's own is left behind, in any shard
    assert [k for k in await prefixed_keys(redis, settings.key_prefix) if "restore-" in k] == []
    await assert_exact(store, settings, events)
    accepted = [build_event(e) for e in events]
    kinds = frozenset(settings.activity_kinds)
    periods = Periods(redis, settings.key_prefix)
    want = period_rows(
        accepted, period="month", churn_after=timedelta(days=settings.churn_after_days),
        activity_kinds=set(kinds),
    )  # fmt: skip
    assert [r.as_dict() for r in await periods.rows("month", settings.churn_after_days)] == [
        r.as_dict() for r in want
    ]
    assert await periods.cohorts("month") == cohorts(accepted, period="month", activity_kinds=kinds)
    stats = await store.stats()
    assert not [key for key in stats.rejected if key[1] == "corrupt_state"]
    del recovery


@dataclass
class OwnRedis:
    """A Redis of the drill's own, with AOF, that the drill may kill and start again, and
    the settings, store and workers that use it."""

    data: Path
    log_dir: Path
    url: str
    process: runtime.Process
    settings: Settings
    store: Store
    workers: Workers

    def start_again(self) -> None:
        port = int(self.url.rsplit(":", 1)[1].split("/")[0])
        self.process, _ = runtime.start_redis(self.data, self.log_dir, port=port, durable=True)


@pytest.fixture
async def own_redis(settings: Settings, tmp_path: Path) -> AsyncIterator[OwnRedis]:
    data = tmp_path / "redis-data"
    process, url = runtime.start_redis(data, tmp_path, durable=True)
    own = settings.model_copy(update={"redis_url": url})
    redis = Redis.from_url(url, decode_responses=True)
    assert own.kafka_bootstrap
    scope = await cluster_id(own.kafka_bootstrap)
    drill = OwnRedis(
        data,
        tmp_path,
        url,
        process,
        own,
        Store(redis, own.key_prefix, offsets_scope=scope),
        Workers(own, tmp_path),
    )
    yield drill
    drill.workers.stop_all()
    await redis.aclose()
    drill.process.stop()


async def test_redis_killed_mid_stream_restarts_from_its_aof(
    own_redis: OwnRedis, producer: EventProducer
) -> None:
    store, workers = own_redis.store, own_redis.workers
    rng = random.Random(4)
    events = with_duplicates(rng, random_events(rng, customers=300, count=20_000), share=0.03)
    workers.start()
    await send_all(producer, events)
    await producer.flush()

    async def midway() -> bool:
        return await applied(store) >= distinct(events) // 3

    await wait_until(midway, 120, "a third of the stream", workers.logs)
    own_redis.process.proc.send_signal(signal.SIGKILL)
    own_redis.process.proc.wait()
    await asyncio.sleep(2)
    own_redis.start_again()
    recovery = await settle(store, distinct(events), workers, timeout=180)
    doubled = await assert_exact(store, own_redis.settings, events)
    assert all(p.poll() is None for p in workers.procs), workers.logs()
    report(
        "redis-sigkill-aof", sent=len(events), lost=0, doubled=doubled, recover_s=f"{recovery:.1f}"
    )


async def test_redis_unreachable_for_30_seconds_under_load(
    own_redis: OwnRedis, producer: EventProducer
) -> None:
    store, workers = own_redis.store, own_redis.workers
    rng = random.Random(5)
    first = random_events(rng, customers=300, count=5000)
    workers.start()
    await send_and_settle(producer, store, workers, first, distinct(first))

    own_redis.process.stop()  # Redis goes away; traffic goes on
    later = [dict(e, event_id=f"late-{e['event_id']}") for e in random_events(rng, 300, 10_000)]
    sending = asyncio.create_task(send_all(producer, later))
    await asyncio.sleep(30)
    await sending
    await producer.flush()
    assert all(p.poll() is None for p in workers.procs), "a worker gave up on Redis"
    own_redis.start_again()
    events = first + later
    recovery = await settle(store, distinct(events), workers)
    doubled = await assert_exact(store, own_redis.settings, events)
    report(
        "redis-unreachable-30s",
        sent=len(events),
        lost=0,
        doubled=doubled,
        recover_s=f"{recovery:.1f}",
    )


async def test_worker_killed_at_ten_random_moments_of_50k_events(
    settings: Settings, store: Store, producer: EventProducer, workers: Workers
) -> None:
    rng = random.Random(6)
    events = with_duplicates(rng, random_events(rng, customers=500, count=50_000), share=0.02)
    total = distinct(events)
    await send_all(producer, events)
    await producer.flush()
    moments = sorted(rng.sample(range(total // 20, total * 9 // 10), 10))
    started = time.monotonic()
    worker = workers.start()
    for moment in moments:

        async def reached(moment: int = moment) -> bool:
            return await applied(store) >= moment

        await wait_until(reached, 120, f"{moment} events applied", workers.logs)
        workers.kill(worker)
        worker = workers.start()
    recovery = await settle(store, total, workers, timeout=180)
    doubled = await assert_exact(store, settings, events)
    report(
        "worker-sigkill-x10",
        sent=len(events),
        kills=len(moments),
        lost=0,
        doubled=doubled,
        total_s=f"{time.monotonic() - started:.1f}",
        after_last_kill_s=f"{recovery:.1f}",
    )


def hostile_messages(
    rng: random.Random, topics: Topics, count: int
) -> list[tuple[str, bytes | None, bytes | None]]:
    """Messages no producer API would send: (topic, key, value)."""

    def order(**fields: Any) -> dict[str, Any]:
        base = {
            "event_id": f"h-{rng.randrange(10**9)}",
            "customer_id": "h",
            "ts": 1_700_000_000,
            "type": "order",
            "amount": 1,
        }
        return base | fields

    makers = [
        lambda: rng.randbytes(rng.randrange(0, 200)),
        lambda: b"",
        lambda: None,
        lambda: b"null",
        lambda: b"[]",
        lambda: b"42",
        lambda: b'"text"',
        lambda: b"{" * 5000,
        lambda: b"[" * 100_000 + b"]" * 100_000,
        lambda: b"\xff\xfe\xfd",
        lambda: json.dumps(order(amount=1e308)).encode(),
        lambda: json.dumps(order(amount=10**40)).encode(),
        lambda: b'{"event_id":"n","customer_id":"h","ts":1700000000,"type":"order","amount":NaN}',
        lambda: b'{"event_id":"n","customer_id":"h","ts":1700000000,"type":"order","amount":1e400}',
        lambda: json.dumps(order(amount=-1)).encode(),
        lambda: json.dumps(order(ts="9999-12-31T23:59:59Z")).encode(),
        lambda: json.dumps(order(ts="9999-12-31T23:30:00-01:00")).encode(),
        lambda: json.dumps(order(ts="0001-01-01T00:00:00+01:00")).encode(),
        lambda: json.dumps(order(ts=1e20)).encode(),
        lambda: json.dumps(order(ts=-1e12)).encode(),
        lambda: json.dumps(order(ts="2024-01-01T00:00:00")).encode(),
        lambda: json.dumps(order(customer_id="x" * 1000)).encode(),
        lambda: json.dumps(order(customer_id="")).encode(),
        lambda: json.dumps(order(type="refund")).encode(),
        lambda: json.dumps(order(status="stolen")).encode(),
        lambda: json.dumps(order(items=-5)).encode(),
        lambda: json.dumps(order(currency="dollars")).encode(),
        lambda: json.dumps({"type": "login"}).encode(),
        lambda: json.dumps(order(pad="x" * 40_000)).encode(),
    ]
    out = []
    for _ in range(count):
        topic = rng.choice(topics.sources)
        value = rng.choice(makers)()
        # aiokafka refuses a message with neither key nor value
        key = rng.choice(
            [b"h", rng.randbytes(8)] if value is None else [b"h", None, rng.randbytes(8)]
        )
        out.append((topic, key, value))
    return out


async def test_hostile_messages_never_stop_a_worker(
    settings: Settings, store: Store, producer: EventProducer, workers: Workers
) -> None:
    assert settings.kafka_bootstrap
    topics = Topics.from_settings(settings)
    await ensure_topics(settings.kafka_bootstrap, topics, settings.partitions)
    rng = random.Random(8)
    hostile = hostile_messages(rng, topics, 10_000)
    valid = random_events(rng, customers=200, count=5000)
    raw = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap, max_request_size=4_000_000)
    await raw.start()
    worker = workers.start()
    started = time.monotonic()
    try:
        pending = list(hostile)
        for event in valid:
            await producer.send(event)
            for _ in range(2):
                topic, key, value = pending.pop()
                await raw.send(topic, value=value, key=key)
        for topic, key, value in pending:
            await raw.send(topic, value=value, key=key)
        await raw.flush()
        await producer.flush()
    finally:
        await raw.stop()

    async def all_seen() -> bool:
        stats = await store.stats()
        return sum(stats.rejected.values()) + sum(stats.accepted.values()) >= len(hostile) + len(
            valid
        )

    await wait_until(all_seen, 240, "every message accounted for", workers.logs)
    elapsed = time.monotonic() - started
    assert worker.poll() is None, "the worker stopped\n" + workers.logs()
    stats = await store.stats()
    assert sum(stats.rejected.values()) == len(hostile)
    await assert_exact(store, settings, valid)

    dlq = await read_topic(
        settings.kafka_bootstrap, topics.dlq, lambda got: len(got) >= len(hostile), timeout=60
    )
    assert len(dlq) == len(hostile)
    reasons = Counter(dict(m.headers)["x-reason"].decode() for m in dlq)
    assert set(reasons) <= set(REJECT_REASONS), reasons
    assert sum(n for (_, reason), n in stats.rejected.items()) == sum(reasons.values())
    report(
        "hostile-messages",
        hostile=len(hostile),
        valid=len(valid),
        lost=0,
        doubled=0,
        worker_alive=True,
        seconds=f"{elapsed:.1f}",
        reasons=dict(reasons),
    )
