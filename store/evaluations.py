"""Evaluations on the store: due customers, their stored results, and the totals readers use.

Due customers come from the ``due`` index (score = when to look, 0 = now): the batch script
puts every customer it changed there, and each evaluation puts the customer back at its
next threshold, so a customer who goes silent is noticed without any event. Results live
in ``ev:<customer>``; ``life:counts``, ``risk:reasons``, ``risk:high_value``, the
``atrisk`` ranking and the CLTV totals are kept in step for readers (CLI, exporter).
What an evaluation concludes is pure (``processors/evaluator.py``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from importlib.resources import files
from typing import cast

import numpy as np

from processors.alerts import Alert
from processors.evaluator import (
    Evaluation,
    Previous,
    Publish,
    as_text,
    at_risk_rank,
    evaluate,
    parse_previous,
    to_micros,
)
from processors.forecast import values
from processors.lifecycle import LifecyclePolicy, alerts_for, lookback_days, next_due_ms
from processors.risk import RiskPolicy, value
from processors.state import CustomerState, iso
from store.models import read_histories, stored_fit
from store.store import Store
from streams.events import MICROS

_RETURNED = files("store").joinpath("returned.lua").read_text()


_RESCHEDULE = files("store").joinpath("reschedule.lua").read_text()


class Evaluator:
    def __init__(
        self,
        store: Store,
        risk_policy: RiskPolicy,
        lifecycle: LifecyclePolicy,
        publish: Publish | None = None,
    ) -> None:
        self.store = store
        self.risk_policy = risk_policy
        self.lifecycle = lifecycle
        self.publish = publish

    async def high_value_threshold(self) -> float | None:
        return await high_value_threshold(self.store)

    async def run_once(self, now: datetime, limit: int = 1000) -> int:
        """Evaluate up to ``limit`` due customers as of ``now``; returns how many."""
        key = self.store.key
        now_ms = int(now.timestamp() * 1000)
        read = cast(
            list[tuple[str, float]],
            await self.store.redis.zrangebyscore(
                key("due"), "-inf", now_ms, 0, limit, withscores=True, score_cast_func=as_text
            ),
        )
        if not read:
            return 0
        # they stay on the index until rescheduled: a crash here leaves them due, not lost
        seen = dict(read)
        states = await self.store.read_customers(list(seen))
        gone = set(seen) - {s.customer_id for s in states}
        if gone:  # no state any more: nothing to evaluate, ever
            await self.store.redis.zrem(key("due"), *gone)
        async with self.store.redis.pipeline(transaction=False) as pipe:
            for state in states:
                pipe.hgetall(key("ev", state.customer_id))
            previous = [parse_previous(raw) for raw in await pipe.execute()]
        model = await stored_fit(self.store)
        threshold = await self.high_value_threshold()
        before = await active_before(self.store, states, now_ms, self.lifecycle)
        alerts: list[Alert] = []
        results = []
        for state, prev in zip(states, previous, strict=True):
            ev = evaluate(
                state,
                now,
                self.risk_policy,
                self.lifecycle,
                model,
                threshold,
                before[state.customer_id],
            )
            alerts.extend(
                alerts_for(
                    state,
                    prev_ms=prev.at_ms,
                    now_ms=now_ms,
                    old=prev.status,
                    new=ev.status,
                    risk=ev.risk,
                    previous_orders=prev.orders,
                    p=self.lifecycle,
                )
            )
            results.append((state, prev, ev))
        # published before the results are stored: after a crash the alerts are raised
        # again with the same keys, which subscribers drop; never the other way round
        if alerts and self.publish is not None:
            await self.publish(alerts)
        await self._store(results, now_ms)
        await self._reschedule(results, seen, now_ms)
        return len(states)

    async def _reschedule(
        self,
        results: list[tuple[CustomerState, Previous, Evaluation]],
        seen: dict[str, float],
        now_ms: int,
    ) -> None:
        args = [self.store.key("due")]
        for state, _, _ in results:
            nxt = next_due_ms(state, now_ms, self.risk_policy, self.lifecycle)
            args.extend([state.customer_id, str(seen[state.customer_id]), str(nxt)])
        await self.store.redis.register_script(_RESCHEDULE)(args=args)

    async def _store(
        self, results: list[tuple[CustomerState, Previous, Evaluation]], now_ms: int
    ) -> None:
        key = self.store.key
        async with self.store.redis.pipeline(transaction=True) as pipe:
            for state, prev, ev in results:
                cid = state.customer_id
                at_risk = ev.status == "at_risk"
                cltv = to_micros(ev.cltv)
                cltv_at_risk = to_micros(ev.cltv_at_risk()) if at_risk else 0
                pipe.hset(
                    key("ev", cid),
                    mapping={
                        "st": ev.status,
                        "sc": str(ev.risk.score),
                        "rr": ",".join(ev.risk.reasons),
                        "hv": "1" if ev.risk.high_value else "0",
                        "at": str(now_ms),
                        "no": str(state.orders),
                        "cl": str(cltv),
                        "cr": str(cltv_at_risk),
                    },
                )
                if cltv != prev.cltv_micros:
                    pipe.incrby(key("cltv:total"), cltv - prev.cltv_micros)
                if prev.status is not None:
                    pipe.hincrby(key("life:counts"), prev.status, -1)
                pipe.hincrby(key("life:counts"), ev.status, 1)
                if prev.status == "at_risk":
                    for reason in prev.reasons:
                        pipe.hincrby(key("risk:reasons"), reason, -1)
                        if prev.cltv_at_risk_micros:
                            pipe.hincrby(key("cltv:at_risk"), reason, -prev.cltv_at_risk_micros)
                    if prev.high_value:
                        pipe.decr(key("risk:high_value"))
                if at_risk:
                    for reason in ev.risk.reasons:
                        pipe.hincrby(key("risk:reasons"), reason, 1)
                        if cltv_at_risk:
                            pipe.hincrby(key("cltv:at_risk"), reason, cltv_at_risk)
                    if ev.risk.high_value:
                        pipe.incr(key("risk:high_value"))
                    pipe.zadd(key("atrisk"), {cid: at_risk_rank(state, ev)})
                else:
                    pipe.zrem(key("atrisk"), cid)
            await pipe.execute()


@dataclass(frozen=True, slots=True)
class EvaluationTotals:
    """What the evaluator keeps in step over all customers, for readers (the exporter)."""

    lifecycle: dict[str, int]
    at_risk: dict[str, int]
    high_value_at_risk: int
    #: in the reporting currency's millionths, so additions and take-backs stay exact
    predicted_cltv_micros: int
    cltv_at_risk_micros: dict[str, int]


async def evaluation_totals(store: Store) -> EvaluationTotals:
    high_value = cast(str | None, await store.redis.get(store.key("risk:high_value")))
    cltv_total = cast(str | None, await store.redis.get(store.key("cltv:total")))
    return EvaluationTotals(
        lifecycle=await store.counters("life:counts"),
        at_risk=await store.counters("risk:reasons"),
        high_value_at_risk=int(float(high_value)) if high_value else 0,
        predicted_cltv_micros=int(cltv_total) if cltv_total else 0,
        cltv_at_risk_micros=await store.counters("cltv:at_risk"),
    )


async def high_value_threshold(store: Store) -> float | None:
    raw = await store.redis.get(store.key("hv:cltv"))
    return None if raw is None else float(raw)


async def update_high_value_threshold(
    store: Store, quantile: float, spend: Mapping[str, float] | None = None
) -> float | None:
    """Predicted CLTV at ``quantile`` over buyers: customers at or above it are high-value.

    Computed from the stored fit as of its own day; None (and no threshold kept) without
    a fit, a spend model or a positive CLTV. ``spend`` gives exact repeat-purchase means by
    customer (a backtest), else the live approximation is used.
    """
    model = await stored_fit(store)
    found = [] if model is None else await read_histories(store, model.as_of)
    threshold: float | None = None
    if model is not None and found:
        x, t_x, T, means = (
            np.array(column, dtype=np.float64)
            for column in zip(
                *(
                    (h.x, h.t_x, h.T, h.spend if spend is None else spend.get(h.customer_id, 0.0))
                    for h in found
                ),
                strict=True,
            )
        )
        _, totals = values(model, x, t_x, T, means)
        totals = totals[np.isfinite(totals)]
        if totals.size:
            threshold = float(np.quantile(totals, quantile))
    if threshold is None or threshold <= 0:
        await store.redis.delete(store.key("hv:cltv"))
        return None
    await store.redis.set(store.key("hv:cltv"), repr(threshold))
    return threshold


async def ranked_at_risk(store: Store, limit: int) -> list[dict[str, object]]:
    """At-risk customers by CLTV at risk (predicted CLTV × risk score), with reasons."""
    ranked = cast(
        list[tuple[str, float]],
        await store.redis.zrevrange(store.key("atrisk"), 0, limit - 1, withscores=True),
    )
    states = {s.customer_id: s for s in await store.read_customers([c for c, _ in ranked])}
    rows: list[dict[str, object]] = []
    for cid, rank in ranked:
        ev = cast(dict[str, str], await store.redis.hgetall(store.key("ev", cid)))
        state = states.get(cid)
        rows.append(
            {
                "customer_id": cid,
                "rank": rank,
                "risk_score": float(ev.get("sc", 0)),
                "risk_reasons": [r for r in ev.get("rr", "").split(",") if r],
                "high_value": ev.get("hv") == "1",
                "cltv": int(ev["cl"]) / MICROS if "cl" in ev else None,
                "cltv_at_risk": int(ev["cr"]) / MICROS if "cr" in ev else None,
                "revenue": None if state is None else value(state),
                "last_activity_at": None if state is None else iso(state.last_activity_ms),
            }
        )
    return rows


async def active_before(
    store: Store, states: Sequence[CustomerState], now_ms: int, lifecycle: LifecyclePolicy
) -> dict[str, bool]:
    """Per customer, whether it was active ``new_days`` before ``now`` (day bitmaps)."""
    if not states:
        return {}
    async with store.redis.pipeline(transaction=False) as pipe:
        for state in states:
            pipe.hget(store.key("c", state.customer_id), "ix")
        indexes = [ix or "" for ix in await pipe.execute()]
    start, stop = lookback_days(now_ms, lifecycle)
    flags = await store.redis.register_script(_RETURNED)(
        args=[store.prefix, str(start), str(stop), *indexes]
    )
    return {s.customer_id: bool(f) for s, f in zip(states, flags, strict=True)}
