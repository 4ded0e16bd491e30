"""Predicted CLTV on a real Redis: the leader's refit, the high-value threshold, and the
totals the evaluator keeps for the exporter."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

from redis.asyncio import Redis

from contract.events import build_event
from processors.forecast import ModelOptions
from processors.lifecycle import LifecyclePolicy
from processors.risk import RiskPolicy
from store.evaluations import (
    Evaluator,
    high_value_threshold,
    ranked_at_risk,
    stored_evaluations,
    update_high_value_threshold,
)
from store.models import refit, stored_fit
from store.store import Store, accepted_record

T0 = datetime(2024, 1, 1, tzinfo=UTC)


def history(rng: random.Random, customers: int) -> list[list[str]]:
    records, offset = [], 0
    for c in range(customers):
        cid = f"c{c:03d}"
        start = rng.randrange(0, 60)
        days = sorted({start, *(start + rng.randrange(1, 120) for _ in range(rng.randrange(0, 6)))})
        for n, day in enumerate(days):
            event = build_event(
                {"event_id": f"{cid}-{n}", "customer_id": cid, "type": "order",
                 "ts": (T0 + timedelta(days=day, hours=10)).isoformat(),
                 "amount": round(rng.uniform(5, 20) * (1 + c % 4), 2)}
            )  # fmt: skip
            records.append(accepted_record(event, "orders", 0, offset))
            offset += 1
    return records


async def totals_equal_the_evaluations(redis: Redis, prefix: str) -> None:
    """The kept totals are exactly the sums of what each customer's evaluation stored."""
    store = Store(redis, prefix)
    evaluations = list((await stored_evaluations(store, await store.customer_ids())).values())
    assert evaluations
    assert int(await redis.get(prefix + "cltv:total") or 0) == sum(
        int(e["cl"] or 0) for e in evaluations
    )
    want: dict[str, int] = {}
    for e in evaluations:
        if e["st"] == "at_risk":
            for reason in filter(None, e["rr"].split(",")):
                want[reason] = want.get(reason, 0) + int(e["cr"] or 0)
    got = {r: int(n) for r, n in (await redis.hgetall(prefix + "cltv:at_risk")).items()}
    assert {r: n for r, n in got.items() if n} == {r: n for r, n in want.items() if n}


async def test_cltv_totals_threshold_and_ranking(redis: Redis) -> None:
    store = Store(redis, "cltv1:", ("order",))
    await store.apply_batch(history(random.Random(7), 120))
    as_of = (T0 + timedelta(days=200)).date()
    fit = await refit(store, as_of, ModelOptions("mbgnbd", 12, 0.01))
    assert fit is not None and fit.spend is not None
    stored = await stored_fit(store)
    assert stored is not None and stored.model == "mbgnbd" and stored.spend == fit.spend

    threshold = await update_high_value_threshold(store, 0.8)
    assert threshold is not None and threshold > 0
    assert await high_value_threshold(store) == threshold

    evaluator = Evaluator(store, RiskPolicy(), LifecyclePolicy())
    first = T0 + timedelta(days=201)
    assert await evaluator.run_once(first) == 120
    await totals_equal_the_evaluations(redis, "cltv1:")
    stored = await stored_evaluations(store, [f"c{c:03d}" for c in range(120)])
    cltvs = [int(stored[f"c{c:03d}"]["cl"]) / 1e6 for c in range(120)]
    assert all(v > 0 for v in cltvs)
    high = [stored[f"c{c:03d}"]["hv"] == "1" for c in range(120)]
    # the top fifth by predicted CLTV, as of the fit's day (an evaluation a day later moves
    # values a little, so compare away from the threshold)
    for value, flag in zip(cltvs, high, strict=True):
        if abs(value - threshold) > 0.05 * threshold:
            assert flag == (value >= threshold)
    assert 0 < sum(high) < 120

    ranked = await ranked_at_risk(store, 200)
    assert ranked, "a silent stretch of 80+ days puts customers at risk"
    ranks = [r["rank"] for r in ranked]
    assert ranks == sorted(ranks, reverse=True)
    for row in ranked:
        # the rank is CLTV at risk: predicted CLTV x risk score (stored in micros)
        product = row["cltv"] * row["risk_score"]
        assert abs(row["cltv_at_risk"] - product) < 1e-5
        assert abs(row["rank"] - product) < 1e-5

    # later evaluations take back what earlier ones added: the totals stay exact
    for day in (230, 300, 400):
        await redis.zadd("cltv1:due", {f"c{c:03d}": 0 for c in range(120)})
        await evaluator.run_once(T0 + timedelta(days=day))
        await totals_equal_the_evaluations(redis, "cltv1:")
