"""Lifecycle under event time (the evaluator with a chosen clock) and live (a real worker)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, date, datetime, timedelta

import pytest
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from contract.events import build_event
from processors.alerts import Alert
from processors.lifecycle import LifecyclePolicy, lookback_days
from processors.risk import RiskPolicy
from retention.config import Settings
from store.evaluations import (
    _STORE,
    EVALUATION_FIELDS,
    Evaluator,
    active_before,
    due_backlog,
    evaluation_fields,
    ranked_at_risk,
    stored_evaluations,
)
from store.store import Store, accepted_record
from streams.producer import EventProducer
from streams.topics import Topics
from tests.integration.conftest import Workers, read_topic, wait_until
from tests.integration.queue_state import changed_queue, rechecks
from tests.integration.recount import kept_and_recounted

T0 = datetime(2024, 1, 1, tzinfo=UTC)


def orders(customer: str, days: Sequence[int], first_offset: int = 0) -> list[list[str]]:
    out = []
    for n, day in enumerate(days):
        event = build_event(
            {"event_id": f"{customer}-{n}", "customer_id": customer, "ts": (T0 + timedelta(days=day)).isoformat(),
             "type": "order", "amount": 30}
        )  # fmt: skip
        out.append(accepted_record(event, "orders", 0, first_offset + n))
    return out


async def evaluated(store: Store, customer_id: str, name: str) -> str | None:
    """A field of the customer's stored evaluation."""
    return (await stored_evaluations(store, [customer_id])).get(customer_id, {}).get(name)


async def test_silence_is_noticed_by_the_clock_without_events(redis: Redis) -> None:
    store = Store(redis, "life1:", ("order",))
    published: list[Alert] = []

    async def publish(alerts: Sequence[Alert]) -> None:
        published.extend(alerts)

    evaluator = Evaluator(store, RiskPolicy(), LifecyclePolicy(), publish)
    await store.apply_batch(
        orders("steady", [0, 10, 20, 30]) + orders("quiet", [0], first_offset=4)
    )

    assert await evaluator.run_once(T0 + timedelta(days=31)) == 2
    assert await evaluated(store, "steady", "st") == "active"
    # "quiet" ordered once, 31 days ago: past new_days (30), not yet silent for long
    assert await redis.hgetall("life1:life:counts") == {"active": "2"}

    # nothing arrives any more; the clock alone moves the customers along
    for day in range(32, 200):
        await evaluator.run_once(T0 + timedelta(days=day))
    assert await evaluated(store, "steady", "st") == "churned"
    assert await evaluated(store, "quiet", "st") == "churned"
    counts = await redis.hgetall("life1:life:counts")
    assert {k: v for k, v in counts.items() if v != "0"} == {"churned": "2"}
    kinds = sorted((a.customer_id, a.kind) for a in published)
    assert ("steady", "at_risk") in kinds and ("steady", "churned") in kinds
    assert ("quiet", "churned") in kinds and ("quiet", "winback_due") in kinds
    assert ("steady", "post_purchase_followup") in kinds
    assert len({a.key for a in published}) == len(published), "an alert was raised twice"
    assert await ranked_at_risk(store, 10) == []  # churned customers leave the at-risk ranking


async def test_at_risk_ranking_carries_reasons(redis: Redis) -> None:
    store = Store(redis, "life2:", ("order",))
    evaluator = Evaluator(store, RiskPolicy(), LifecyclePolicy())
    await store.apply_batch(
        orders("a", [0, 10, 20]) + orders("b", [0, 5, 10, 15, 20, 25], first_offset=3)
    )
    await evaluator.run_once(T0 + timedelta(days=50))
    ranked = await ranked_at_risk(store, 10)
    assert [r["customer_id"] for r in ranked] == ["b", "a"]  # same risk, b brought more revenue
    assert all(r["risk_reasons"] == ["silence"] for r in ranked)
    assert await redis.hgetall("life2:risk:reasons") == {"silence": "2"}


async def test_live_worker_marks_a_lapsed_customer_and_publishes_the_alert(
    settings: Settings, store: Store, producer: EventProducer, workers: Workers
) -> None:
    now = datetime.now(UTC)
    # churned half a day ago (W = 90 days): news, unlike a churn long past
    for n, days_ago in enumerate((200, 150, 90.5)):
        await producer.send(
            {"event_id": f"lapsed-{n}", "customer_id": "lapsed", "ts": (now - timedelta(days=days_ago)).isoformat(),
             "type": "order", "amount": 40}
        )  # fmt: skip
    await producer.send(
        {"event_id": "fresh-0", "customer_id": "fresh", "ts": now.isoformat(), "type": "login"}
    )
    await producer.flush()
    workers.start()

    async def lapsed() -> bool:
        return await evaluated(store, "lapsed", "st") == "churned"

    await wait_until(lapsed, 60, "the worker to evaluate the lapsed customer", workers.logs)
    assert await evaluated(store, "fresh", "st") == "new"

    assert settings.kafka_bootstrap
    messages = await read_topic(
        settings.kafka_bootstrap,
        Topics.from_settings(settings).alerts,
        lambda got: any(json.loads(m.value)["kind"] == "churned" for m in got),
        timeout=20,
    )
    alerts = [json.loads(m.value) for m in messages]
    churned = [a for a in alerts if a["kind"] == "churned"]
    assert [a["customer_id"] for a in churned] == ["lapsed"]
    assert churned[0]["key"].startswith("churned:lapsed:")

    async def fitted() -> bool:
        return await store.redis.get(store.key("fit")) is not None

    await wait_until(fitted, 30, "the leader's first BG/NBD fit", workers.logs)
    block = json.loads(await store.redis.get(store.key("fit")))
    assert block["customers"] == 1 and block["as_of"] == now.date().isoformat()


async def test_a_return_after_the_churn_window_is_a_reactivation(redis: Redis) -> None:
    store = Store(redis, "life3:", ("order",))
    published: list[Alert] = []

    async def publish(alerts: Sequence[Alert]) -> None:
        published.extend(alerts)

    evaluator = Evaluator(store, RiskPolicy(), LifecyclePolicy(), publish)
    # the late event arrives first: the bitmaps, not the arrival order, decide
    await store.apply_batch(
        orders("back", [150, 0]) + orders("steady", [0, 60, 120, 150], first_offset=2)
    )
    await evaluator.run_once(T0 + timedelta(days=155))
    assert await evaluated(store, "back", "st") == "reactivated"
    assert await evaluated(store, "steady", "st") == "active"
    assert [(a.customer_id, a.kind) for a in published if a.kind == "reactivated"] == [
        ("back", "reactivated")
    ]


async def test_a_customer_changed_during_evaluation_stays_due(redis: Redis) -> None:
    store = Store(redis, "life4:", ("order",))
    late = orders("busy", [0, 1, 2, 3, 4, 5])

    async def publish(alerts: Sequence[Alert]) -> None:
        # an event for the same customer lands while its evaluation is under way
        await store.apply_batch(late[5:])

    evaluator = Evaluator(store, RiskPolicy(), LifecyclePolicy(), publish)
    await store.apply_batch(late[:5])  # the 5th order raises a milestone: publish runs
    assert await evaluator.run_once(T0 + timedelta(days=6)) == 1
    # changed while evaluated: back in the changed queue, taken again at any clock
    assert await changed_queue(redis, "life4:") == ["busy"]
    assert await evaluator.run_once(T0 + timedelta(days=6)) == 1
    assert await changed_queue(redis, "life4:") == []
    # now only its next recheck is scheduled, ahead of the evaluation clock
    recheck = (await rechecks(redis, "life4:"))["busy"]
    assert recheck > (T0 + timedelta(days=6)).timestamp() * 1000
    assert await evaluated(store, "busy", "no") == "6"


async def test_a_total_that_would_overflow_refuses_the_whole_store_call(redis: Redis) -> None:
    store = Store(redis, "life9:", ("order",))
    evaluator = Evaluator(store, RiskPolicy(), LifecyclePolicy())
    await redis.set("life9:cltv:total", str(5 * 10**18))
    await store.apply_batch(orders("c", [0]))
    row = ["c", "active", "0", "", "0", "1", "1", str(5 * 10**18), "0"]
    with pytest.raises(ResponseError, match="OVERFLOW"):
        await evaluator._store_script(
            keys=["life9:ids"], args=["life9:", json.dumps([row]), json.dumps({})]
        )
    # refused before anything was written
    assert await stored_evaluations(store, ["c"]) == {}
    assert await redis.get("life9:cltv:total") == str(5 * 10**18)


async def test_rechecks_are_not_starved_by_a_stream_of_changes(redis: Redis) -> None:
    """Half of each evaluation round goes to rechecks that are due, however many changed
    customers wait; and the backlog says how many wait and for how long."""
    store = Store(redis, "life10:", ("order",))
    evaluator = Evaluator(store, RiskPolicy(), LifecyclePolicy())
    quiet = [c for n in range(10) for c in orders(f"quiet{n}", [0], first_offset=n)]
    await store.apply_batch(quiet)
    assert await evaluator.run_once(T0 + timedelta(days=1)) == 10
    # their rechecks fall due later; meanwhile a stream of changes arrives
    busy = [c for n in range(200) for c in orders(f"busy{n}", [40], first_offset=10 + n)]
    await store.apply_batch(busy)
    later = T0 + timedelta(days=60)
    waiting, waited = await due_backlog(store, int(later.timestamp() * 1000))
    assert waiting == 210 and waited > 0
    taken = await rechecks(redis, "life10:")
    assert await evaluator.run_once(later, limit=10) == 10
    # five of the ten places went to the quiet customers' rechecks
    rechecked = [
        c for c, at in (await rechecks(redis, "life10:")).items()
        if c.startswith("quiet") and taken.get(c) != at
    ]  # fmt: skip
    assert len(rechecked) == 5


async def test_a_long_evaluation_is_kept_in_pieces_a_listpack_keeps(redis: Redis) -> None:
    """An evaluation longer than 64 bytes (several reasons, a large CLTV) is kept in pieces
    of at most 64 bytes, so that Redis keeps the customer hash as a compact listpack; both
    readers get it whole, and a shorter one after it leaves no piece behind."""
    store = Store(redis, "life13:", ("order",))
    await store.apply_batch(orders("long", [0, 10]))
    write = redis.register_script(_STORE)
    no_moves = json.dumps({})  # no rank: the customer is not at risk in the ranking
    reasons = "silence,frequency_drop,low_p_alive,ticket_unresolved,refunds"
    long_row = ["long", "at_risk", "0.6666666666666666", reasons, "1", "1796021590393", "12",
                "123456789012345", "123456789012345", "m"]  # fmt: skip
    short_row = ["long", "active", "0", "", "0", "1796021590394", "12", "5", "0", "l"]
    for row, pieces in ((long_row, 3), (short_row, 1)):
        await write(keys=["life13:ids"], args=["life13:", json.dumps([row]), no_moves])
        want = dict(zip(EVALUATION_FIELDS, row[1:], strict=True))
        assert await stored_evaluations(store, ["long"]) == {"long": want}
        [(_, fields)] = await store.read_customers_with_fields(["long"])
        assert evaluation_fields(fields["ev"]) == want
        names = [n for n in await redis.hkeys("life13:c:long") if n.startswith("ev")]
        assert sorted(names) == ["ev", *(f"ev{i}" for i in range(2, pieces + 1))]
        assert all([await redis.hstrlen("life13:c:long", n) <= 64 for n in names])
        assert await redis.object("encoding", "life13:c:long") == "listpack"
    # the batch script's next write of the customer's state leaves the pieces in place
    await write(keys=["life13:ids"], args=["life13:", json.dumps([long_row]), no_moves])
    await store.apply_batch(orders("long", [20], first_offset=2))
    want = dict(zip(EVALUATION_FIELDS, long_row[1:], strict=True))
    assert await stored_evaluations(store, ["long"]) == {"long": want}
    assert await redis.object("encoding", "life13:c:long") == "listpack"


async def test_the_lookback_union_follows_late_events(redis: Redis) -> None:
    """Whether a customer was active ``new_days`` ago is one bit of the union of the
    lookback window's day bitmaps, kept between rounds: an activity that arrives late, into
    a window already kept, is in the next answer."""
    store = Store(redis, "life12:", ("order",))
    lifecycle = LifecyclePolicy(churn_after_days=30)
    now_ms = int((T0 + timedelta(days=100)).timestamp() * 1000)
    start, stop = lookback_days(now_ms, lifecycle)
    first = start - (T0.date() - date(1970, 1, 1)).days  # the window's first day, from T0
    await store.apply_batch(orders("inside", [first + 3]) + orders("late", [0], first_offset=1))
    states = [s for s in [await store.read_customer(c) for c in ("inside", "late")] if s]
    assert await active_before(store, states, now_ms, lifecycle) == {"inside": True, "late": False}
    window = f"life12:win:{start}:{stop}"
    assert await redis.exists(window) == 1  # kept for the next round

    # a late order lands in the window: the kept union takes it in
    late = orders("late", [0, first + stop - start - 1], first_offset=1)[1]
    await store.apply_batch([late])
    states = [s for s in [await store.read_customer(c) for c in ("inside", "late")] if s]
    assert await active_before(store, states, now_ms, lifecycle) == {"inside": True, "late": True}
    assert await redis.ttl(window) > 0


async def test_totals_stay_a_recount_when_another_evaluator_stores_in_between(
    redis: Redis,
) -> None:
    """Two evaluators on one customer (during a rebalance, or after a lease ran out): one
    stores its result between the other's read and store. The totals move against what is
    stored at that moment, so they stay the sum over the stored evaluations."""
    store = Store(redis, "life14:", ("order",))
    await store.apply_batch(orders("c", [0, 10, 20, 30, 40]) + orders("d", [0, 1], 10))
    other = Evaluator(store, RiskPolicy(), LifecyclePolicy())
    raced = False

    async def publish(alerts: Sequence[Alert]) -> None:
        nonlocal raced
        if raced:
            return
        raced = True
        # the other evaluator stores its own result for "c" now
        row = ["c", "at_risk", "0.9", "silence,frequency_drop", "1", "1", "5", "7000000", "6300000"]
        await other._store_script(
            keys=["life14:ids"], args=["life14:", json.dumps([row]), json.dumps({"c": "9.5"})]
        )

    first = Evaluator(store, RiskPolicy(), LifecyclePolicy(), publish)
    assert await first.run_once(T0 + timedelta(days=41)) == 2
    assert raced
    kept, recount = await kept_and_recounted(store)
    assert kept == recount
    assert sum(kept.lifecycle.values()) == 2
    # and again later, with a chunk that takes back what the other one stored
    await store.apply_batch(orders("c", [45], 5))
    await first.run_once(T0 + timedelta(days=200))
    kept, recount = await kept_and_recounted(store)
    assert kept == recount
