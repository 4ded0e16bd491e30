"""Erasing a customer: after `forget`, then new events, then a rebuild, the customer is in no
key, list, page, export or notifier record; the others are exactly as before, and the
totals kept in step with the evaluations equal their recount."""

from __future__ import annotations

import random
from datetime import UTC, datetime
from typing import Any

from redis.asyncio import Redis

from processors.alerts import Alert
from processors.segments import SEGMENTS, Filters
from retention import queries
from retention.config import Settings
from retention.rebuild import rebuild
from retention.segments import every_member
from store.deliveries import Deliveries
from store.evaluations import stored_evaluations
from store.store import Store
from streams.producer import EventProducer
from tests.eventgen import fold, random_events, worker_rates
from tests.integration.conftest import Workers, wait_until
from tests.integration.recount import kept_and_recounted
from tests.integration.test_pipeline import send_all

VICTIM = "cust-0007"


def distinct(events: list[dict[str, Any]]) -> int:
    return len({(e["type"], e["customer_id"], e["event_id"]) for e in events})


async def seen(store: Store) -> int:
    stats = await store.stats()
    return sum(stats.accepted.values()) + sum(stats.rejected.values())


async def notifier_records(deliveries: Deliveries, customer: str, other: str) -> None:
    """What the notifier would have kept about two customers."""
    for cid in (customer, other):
        alert = Alert("at_risk", cid, datetime(2026, 3, 1, 9, tzinfo=UTC), "2026-03-01")
        await deliveries.record(
            "crm", "webhook", "at_risk", cid, alert.key,
            delivered_ms=1, alert_ms=1, cooldown_ms=86_400_000, horizon_ms=9e15,
        )  # fmt: skip
        await deliveries.collect("morning", alert.key, alert.encode())
        await deliveries.push_dead_letter(
            {"reason": "delivery_failed", "alert": alert.as_dict()}, 100
        )


async def keys_naming(redis: Redis, prefix: str, customer: str) -> list[str]:
    return [k async for k in redis.scan_iter(match=f"{prefix}*", count=1000) if customer in k]


async def test_a_forgotten_customer_stays_gone_through_new_events_and_a_rebuild(
    settings: Settings, store: Store, redis: Redis, producer: EventProducer, workers: Workers
) -> None:
    rng = random.Random(17)
    events = random_events(rng, customers=40, count=1500)
    mine = [e for e in events if e["customer_id"] == VICTIM]
    assert mine
    workers.start()
    await send_all(producer, events)
    await producer.flush()

    async def settled(expected: int) -> None:
        async def done() -> bool:
            return await seen(store) >= expected

        await wait_until(done, 120, f"{expected} events seen", workers.logs)

    await settled(distinct(events))

    async def evaluated() -> bool:
        ids = await store.customer_ids()
        return len(await stored_evaluations(store, ids)) == len(ids)

    await wait_until(evaluated, 60, "every customer evaluated", workers.logs)
    deliveries = Deliveries(redis, settings.key_prefix)
    await notifier_records(deliveries, VICTIM, "cust-0008")
    assert await keys_naming(redis, settings.key_prefix, VICTIM)

    erased = await queries.forget(settings, VICTIM)
    assert erased.stored and erased.notifier_records >= 4

    async def gone() -> None:
        assert await store.read_customer(VICTIM) is None
        assert await keys_naming(redis, settings.key_prefix, VICTIM) == []
        assert VICTIM not in await store.customer_ids()
        assert VICTIM not in {r["customer_id"] for r in await queries.at_risk(settings, 1000)}
        for segment in SEGMENTS:
            members = every_member(store, segment, Filters(), "USD")
            assert VICTIM not in {r["customer_id"] async for r in members}
        listed, _ = await queries.alert_outcomes(settings)
        assert VICTIM not in {a["customer_id"] for a in listed}
        raw = " ".join(map(str, await redis.lrange(deliveries.dead_key, 0, -1)))
        assert VICTIM not in raw and "cust-0008" in raw
        delivered = [m async for m, _ in redis.zscan_iter(deliveries.delivered_key("crm"))]
        assert delivered and not [m for m in delivered if VICTIM in m]
        kept = await deliveries.digest("morning")
        assert kept[1] and not [k for k in kept[1] if VICTIM in k]
        totals, recount = await kept_and_recounted(store)
        assert totals == recount

    await gone()

    # new events for them are skipped, counted, and bring nothing back
    late = [{**e, "event_id": e["event_id"] + "-late"} for e in mine[:3]]
    await send_all(producer, late)
    await producer.flush()
    await settled(distinct(events) + len(late))
    stats = await store.stats()
    assert sum(n for (_, reason), n in stats.rejected.items() if reason == "forgotten") == 3
    await gone()

    # a rebuild replays every topic: the tombstone keeps them out; the others are exact
    assert await rebuild(settings, write=lambda _: None, timeout=120, poll_seconds=0.5) == 0
    await settled(distinct(events) + len(late))
    await wait_until(evaluated, 60, "every customer evaluated again", workers.logs)
    expected = fold(
        [e for e in events if e["customer_id"] != VICTIM],
        frozenset(settings.activity_kinds),
        worker_rates(settings),
    )
    assert await store.customer_ids() == sorted(expected)
    for cid, state in expected.items():
        assert await store.read_customer(cid) == state, cid
    await gone()
