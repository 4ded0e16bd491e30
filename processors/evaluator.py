"""Evaluates customers that are due: lifecycle status, risk, alerts, and the next look.

Due customers come from the ``due`` index (score = when to look, 0 = now): the batch script
puts every customer it changed there, and each evaluation puts the customer back at its
next threshold, so a customer who goes silent is noticed without any event. Results live
in ``ev:<customer>``; ``life:counts``, ``risk:reasons``, ``risk:high_value`` and the
``atrisk`` ranking are kept in step for readers (CLI, exporter).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from importlib.resources import files
from typing import cast

import numpy as np

from processors.alerts import Alert
from processors.alive import Fit, outlook, stored_fit
from processors.lifecycle import (
    LifecyclePolicy,
    Status,
    alerts_for,
    classify,
    lookback_days,
    next_due_ms,
)
from processors.risk import Assessment, RiskPolicy, assess, value
from processors.state import CustomerState, iso
from processors.store import Store

Publish = Callable[[Sequence[Alert]], Awaitable[None]]
_RETURNED = files("processors").joinpath("returned.lua").read_text()
_RESCHEDULE = files("processors").joinpath("reschedule.lua").read_text()


@dataclass(frozen=True, slots=True)
class Evaluation:
    status: Status
    risk: Assessment
    p_alive: float | None
    expected_purchases_90d: float | None


def evaluate(
    state: CustomerState,
    now: datetime,
    risk_policy: RiskPolicy,
    lifecycle: LifecyclePolicy,
    model: Fit | None,
    high_value_micros: int | None,
    active_before: bool = True,
) -> Evaluation:
    """Status and risk of one customer at ``now`` (pure; the backtest uses it directly)."""
    now_ms = int(now.timestamp() * 1000)
    seen = (
        None if model is None else outlook(state, model, (now - timedelta(milliseconds=1)).date())
    )
    p_alive = None if seen is None else seen.p_alive
    risk = assess(state, now_ms, risk_policy, p_alive, high_value_micros)
    status = classify(state, now_ms, risk, risk_policy, lifecycle, active_before)
    return Evaluation(status, risk, p_alive, None if seen is None else seen.expected_purchases_90d)


@dataclass(frozen=True, slots=True)
class Previous:
    status: Status | None
    reasons: tuple[str, ...]
    high_value: bool
    at_ms: int | None
    orders: int


def _previous(raw: dict[str, str]) -> Previous:
    return Previous(
        status=cast(Status, raw["st"]) if "st" in raw else None,
        reasons=tuple(r for r in raw.get("rr", "").split(",") if r),
        high_value=raw.get("hv") == "1",
        at_ms=int(raw["at"]) if "at" in raw else None,
        orders=int(raw.get("no", 0)),
    )


def _text(raw: bytes | str) -> str:
    """A score exactly as Redis wrote it, so the reschedule script can compare it."""
    return raw.decode() if isinstance(raw, bytes) else raw


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

    async def high_value_micros(self) -> int | None:
        raw = await self.store.redis.get(self.store.key("hv:threshold"))
        return None if raw is None else int(raw)

    async def run_once(self, now: datetime, limit: int = 1000) -> int:
        """Evaluate up to ``limit`` due customers as of ``now``; returns how many."""
        key = self.store.key
        now_ms = int(now.timestamp() * 1000)
        read = cast(
            list[tuple[str, float]],
            await self.store.redis.zrangebyscore(
                key("due"), "-inf", now_ms, 0, limit, withscores=True, score_cast_func=_text
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
            previous = [_previous(raw) for raw in await pipe.execute()]
        model = await stored_fit(self.store)
        threshold = await self.high_value_micros()
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
                pipe.hset(
                    key("ev", cid),
                    mapping={
                        "st": ev.status,
                        "sc": str(ev.risk.score),
                        "rr": ",".join(ev.risk.reasons),
                        "hv": "1" if ev.risk.high_value else "0",
                        "at": str(now_ms),
                        "no": str(state.orders),
                    },
                )
                if prev.status is not None:
                    pipe.hincrby(key("life:counts"), prev.status, -1)
                pipe.hincrby(key("life:counts"), ev.status, 1)
                if prev.status == "at_risk":
                    for reason in prev.reasons:
                        pipe.hincrby(key("risk:reasons"), reason, -1)
                    if prev.high_value:
                        pipe.decr(key("risk:high_value"))
                if at_risk:
                    for reason in ev.risk.reasons:
                        pipe.hincrby(key("risk:reasons"), reason, 1)
                    if ev.risk.high_value:
                        pipe.incr(key("risk:high_value"))
                    pipe.zadd(key("atrisk"), {cid: ev.risk.score * max(value(state), 1.0)})
                else:
                    pipe.zrem(key("atrisk"), cid)
            await pipe.execute()


async def update_high_value_threshold(
    store: Store, quantile: float, chunk: int = 1000
) -> int | None:
    """Revenue at ``quantile`` over buyers: customers at or above it are high-value."""
    ids = await store.customer_ids()
    revenues: list[int] = []
    for i in range(0, len(ids), chunk):
        async with store.redis.pipeline(transaction=False) as pipe:
            for cid in ids[i : i + chunk]:
                pipe.hmget(store.key("c", cid), ["pm", "rm"])
            for placed, refunded in await pipe.execute():
                if placed:
                    revenues.append(int(placed) - int(refunded or 0))
    if not revenues:
        return None
    threshold = int(np.quantile(np.array(revenues), quantile))
    await store.redis.set(store.key("hv:threshold"), str(max(threshold, 1)))
    return threshold


async def ranked_at_risk(store: Store, limit: int) -> list[dict[str, object]]:
    """At-risk customers by risk × value (revenue to date), with their reasons."""
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
