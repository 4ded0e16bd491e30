"""Evaluations on the store: due customers, their stored results, and the totals readers use.

Due customers come from two queues per shard. The batch script appends every customer it
changed to the list ``dueq``, once until it is taken (the customer hash's ``q`` holds the
batch time of the first change since its last evaluation); each evaluation schedules the
customer's next recheck at its next threshold, so a customer who goes silent is noticed
without any event. The rechecks live in small sorted sets ``sched:<n>``, each kept in
Redis's compact encoding, indexed by ``sched:at`` (``sched_chunks.lua``); the customer
hash's ``r`` holds the customer's recheck time. ``take_due.lua`` gives each queue half of
a round and leases the customers taken; ``reschedule.lua`` moves each to its next recheck.
Stores written before keep their sorted sets ``due`` and ``sched``, read until empty.
Each result is the customer hash's ``ev`` field (``stored_evaluations`` reads it back);
``life:counts``, ``risk:reasons``, ``risk:high_value``, the
``atrisk`` ranking and the CLTV totals are kept in step for readers (CLI, exporter).
What an evaluation concludes is pure (``processors/evaluator.py``).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from importlib.resources import files
from typing import Any, cast

from contract.events import MICROS
from processors.alerts import Alert
from processors.evaluator import (
    Evaluation,
    Previous,
    Publish,
    as_of_day,
    at_risk_rank,
    evaluate_seen,
    explained,
    parse_previous,
    to_micros,
)
from processors.lifecycle import LifecyclePolicy, alerts_for, lookback_days, next_due_ms
from processors.outcomes import Raised
from processors.risk import RiskPolicy, value
from processors.state import CustomerState, iso
from store.models import SAMPLE_CUSTOMERS, read_histories, read_sample, stored_fit
from store.periods import WINDOW_KEEP_SECONDS, WINDOW_UNION
from store.store import PIECES, Store, writing_script

logger = logging.getLogger(__name__)

_RETURNED = WINDOW_UNION + files("store").joinpath("returned.lua").read_text()


_CHUNKS = files("store").joinpath("sched_chunks.lua").read_text()
# both scripts work on the rechecks' chunks: the shared functions come first
_RESCHEDULE = _CHUNKS + files("store").joinpath("reschedule.lua").read_text()
_TAKE = _CHUNKS + files("store").joinpath("take_due.lua").read_text()
_BACKLOG = files("store").joinpath("queue_backlog.lua").read_text()
_REQUEUE = files("store").joinpath("requeue_at_risk.lua").read_text()
_PREVIOUS = PIECES + files("store").joinpath("read_previous.lua").read_text()
_STORE = writing_script("store_evaluations.lua")


def _ms(at: datetime) -> int:
    return int(at.timestamp() * 1000)


#: How long taken customers are left to their evaluator before others may take them.
LEASE_MS = 60_000


class Evaluator:
    def __init__(
        self,
        store: Store,
        risk_policy: RiskPolicy,
        lifecycle: LifecyclePolicy,
        publish: Publish | None = None,
        currency: str = "USD",
        link_base: str | None = None,
    ) -> None:
        self.store = store
        self.risk_policy = risk_policy
        self.lifecycle = lifecycle
        self.publish = publish
        #: the reporting currency, named in the alerts' stakes
        self.currency = currency
        #: the web view's address: alerts link to the customer's page under it
        self.link_base = link_base
        self._take = store.redis.register_script(_TAKE)
        self._reschedule_script = store.redis.register_script(_RESCHEDULE)
        self._returned = store.redis.register_script(_RETURNED)
        self._store_script = store.redis.register_script(_STORE)

    async def high_value_threshold(self) -> float | None:
        return await high_value_threshold(self.store)

    async def run_once(
        self, now: datetime, limit: int = 1000, shards: Iterable[int] | None = None
    ) -> int:
        """Evaluate up to ``limit`` due customers of each of ``shards`` (default: all) as
        of ``now``, oldest due first; returns how many."""
        layout = await self.store.layout()
        chosen = range(layout.count) if shards is None else shards
        done = 0
        for shard in chosen:
            done += await self._run_shard(layout.prefixes[shard], now, limit)
        return done

    async def _run_shard(self, home: str, now: datetime, limit: int) -> int:
        now_ms = int(now.timestamp() * 1000)
        lease = now_ms + LEASE_MS
        route = [home + "ids"]
        taken = cast(list[str], await self._take(keys=route, args=[home, now_ms, limit, lease]))
        if not taken:
            return 0
        # leased until rescheduled: a crash here leaves them due again when the lease
        # ends, never lost
        read = await self.store.read_customers_with_fields(taken)
        states = [state for state, _ in read]
        found = {s.customer_id for s in states}
        gone = [cid for cid in taken if cid not in found]
        if gone:  # no state any more: nothing to evaluate, ever
            dropped = [part for cid in gone for part in (cid, "")]
            await self._reschedule_script(keys=route, args=[home, lease, *dropped])
        ids = [state.customer_id for state in states]
        previous = [parse_previous(raw) for raw in self._previous_evaluations(read)]
        model = await stored_fit(self.store)
        threshold = await self.high_value_threshold()
        start, stop = lookback_days(now_ms, self.lifecycle)
        indexes = [fields.get("ix", "") for _, fields in read]
        flags = (
            await self._returned(
                keys=[home + "ids"], args=[home, start, stop, WINDOW_KEEP_SECONDS, *indexes]
            )
            if ids
            else []
        )
        before = {cid: bool(flag) for cid, flag in zip(ids, flags, strict=True)}
        # the model's numbers for the whole chunk at once, on arrays (numpy loads with the
        # first chunk, not with this module, which the read commands import too)
        from processors.forecast import outlooks

        seen = [None] * len(states) if model is None else outlooks(states, model, as_of_day(now))
        alerts: list[Alert] = []
        results = []
        for state, prev, outlook in zip(states, previous, seen, strict=True):
            ev = evaluate_seen(
                state,
                now,
                self.risk_policy,
                self.lifecycle,
                outlook,
                threshold,
                before[state.customer_id],
            )
            raised = alerts_for(
                state,
                prev_ms=prev.at_ms,
                now_ms=now_ms,
                old=prev.status,
                new=ev.status,
                risk=ev.risk,
                previous_orders=prev.orders,
                p=self.lifecycle,
                bands=self.risk_policy.bands,
                previous_reasons=prev.reasons,
                previous_score=prev.score,
            )
            alerts.extend(explained(a, state, ev, self.risk_policy, self.currency) for a in raised)
            results.append((state, prev, ev))
        # published before the results are stored: after a crash the alerts are raised
        # again with the same keys, which subscribers drop; never the other way round
        if alerts and self.publish is not None:
            await self.publish(alerts)
        await self._store(home, results, now_ms, alerts)
        await self._reschedule(home, results, lease, now_ms)
        return len(states)

    @staticmethod
    def _previous_evaluations(
        read: Sequence[tuple[CustomerState, dict[str, str]]],
    ) -> list[dict[str, str]]:
        """Each customer's last evaluation, from its hash's ``ev`` field as just read."""
        return [evaluation_fields(fields.get("ev")) for _, fields in read]

    async def _reschedule(
        self,
        home: str,
        results: list[tuple[CustomerState, Previous, Evaluation]],
        lease: int,
        now_ms: int,
    ) -> None:
        args: list[str | int] = [home, lease]
        for state, _, _ in results:
            nxt = next_due_ms(state, now_ms, self.risk_policy, self.lifecycle)
            args.extend([state.customer_id, nxt])
        await self._reschedule_script(keys=[home + "ids"], args=args)

    async def _store(
        self,
        home: str,
        results: list[tuple[CustomerState, Previous, Evaluation]],
        now_ms: int,
        alerts: Sequence[Alert] = (),
    ) -> None:
        """Each customer's result in one script call, which also moves the totals kept in
        step, by each new result against the one stored at that moment
        (store_evaluations.lua): the totals stay the sum over the stored evaluations, even
        when another evaluator stored one since it was read here."""
        rows: list[list[str]] = []
        ranks: dict[str, str] = {}
        for state, _, ev in results:
            cid = state.customer_id
            at_risk = ev.status == "at_risk"
            # empty without a fitted model: "not predicted yet", not a CLTV of 0
            cltv = "" if ev.cltv is None else str(to_micros(ev.cltv))
            cltv_at_risk = "" if ev.cltv is None else "0"
            if at_risk and ev.cltv is not None:
                cltv_at_risk = str(to_micros(ev.cltv_at_risk()))
            band = self.risk_policy.bands.of(ev.risk.score) or ""
            rows.append(
                [
                    cid,
                    ev.status,
                    str(ev.risk.score),
                    ",".join(ev.risk.reasons),
                    "1" if ev.risk.high_value else "0",
                    str(now_ms),
                    str(state.orders),
                    cltv,
                    cltv_at_risk,
                    band[:1],
                ]
            )
            if at_risk:
                ranks[cid] = repr(at_risk_rank(state, ev))
        # logged for their outcomes (store/outcomes.py)
        logged = [
            [a.key, Raised(a.key, a.customer_id, a.kind, a.band or "", _ms(a.at)).encode()]
            for a in alerts
        ]
        # the totals are kept per shard, beside its customers: one slot, one script
        await self._store_script(
            keys=[home + "ids"],
            args=[home, json.dumps(rows), json.dumps(ranks), json.dumps(logged)],
        )


#: The fields of a stored evaluation, in the order the customer hash's ``ev`` joins them
#: with '|' (store_evaluations.lua).
EVALUATION_FIELDS = ("st", "sc", "rr", "hv", "at", "no", "cl", "cr", "bd")
#: the band's letter in ``bd``
BAND_LETTERS = {"l": "low", "m": "medium", "h": "high"}


def evaluation_fields(joined: str | None) -> dict[str, str]:
    """A customer hash's ``ev`` as fields by name (none without one)."""
    if not joined:
        return {}
    return dict(zip(EVALUATION_FIELDS, joined.split("|"), strict=False))


@dataclass(frozen=True, slots=True)
class EvaluationTotals:
    """What the evaluator keeps in step over all customers, for readers (the exporter)."""

    lifecycle: dict[str, int]
    at_risk: dict[str, int]
    #: evaluated customers by risk band (low, medium, high)
    bands: dict[str, int]
    high_value_at_risk: int
    #: in the reporting currency's millionths, so additions and take-backs stay exact
    predicted_cltv_micros: int
    cltv_at_risk_micros: dict[str, int]


async def evaluation_totals(store: Store) -> EvaluationTotals:
    return EvaluationTotals(
        lifecycle=await store.counters("life:counts"),
        at_risk=await store.counters("risk:reasons"),
        bands={BAND_LETTERS.get(k, k): n for k, n in (await store.counters("risk:bands")).items()},
        high_value_at_risk=await _summed_number(store, "risk:high_value"),
        predicted_cltv_micros=await _summed_number(store, "cltv:total"),
        cltv_at_risk_micros=await store.counters("cltv:at_risk"),
    )


async def _summed_number(store: Store, name: str) -> int:
    """A number kept per shard, summed."""
    homes = (await store.layout()).prefixes
    raw = await asyncio.gather(*(store.redis.get(home + name) for home in homes))
    return sum(int(value) for value in raw if value)


async def due_backlog(store: Store, now_ms: int) -> tuple[int, float]:
    """Customers waiting for an evaluation (changed, or with a recheck due by ``now``),
    and how long the one waiting longest has waited (s)."""
    homes = (await store.layout()).prefixes
    script = store.redis.register_script(_BACKLOG)
    replies = await asyncio.gather(
        *(script(keys=[home + "ids"], args=[home, now_ms]) for home in homes)
    )
    waiting, oldest = 0, float(now_ms)
    for changed, first_changed, scheduled, first_scheduled in replies:
        waiting += int(changed) + int(scheduled)
        for count, first in ((changed, first_changed), (scheduled, first_scheduled)):
            if int(count) and first:
                oldest = min(oldest, float(first))
    return waiting, max(0.0, (now_ms - oldest) / 1000) if waiting else 0.0


async def requeue_at_risk(store: Store, now_ms: int, page: int = 1000) -> int:
    """Queue every customer in the at-risk ranking for an evaluation, a page per call:
    after a refit, the list, the customers' views and the alerts then show the new
    predicted CLTV within one round of evaluations instead of at each customer's next
    recheck. Returns how many were queued."""
    script = store.redis.register_script(_REQUEUE)
    queued = 0
    for home in (await store.layout()).prefixes:
        start, more = 0, 1
        while more:
            n, more = await script(keys=[home + "ids"], args=[home, now_ms, start, page])
            queued += int(n)
            start += page
    return queued


async def high_value_threshold(store: Store) -> float | None:
    raw = await store.redis.get(store.key("hv:cltv"))
    return None if raw is None else float(raw)


async def update_high_value_threshold(
    store: Store,
    quantile: float,
    spend: Mapping[str, float] | None = None,
    sample: int = SAMPLE_CUSTOMERS,
) -> float | None:
    """Predicted CLTV at ``quantile`` over buyers: customers at or above it are high-value.

    Computed from the stored fit as of its own day over the buyers among about ``sample``
    customers (a uniform sample, :func:`store.models.read_sample`; every buyer in a store
    that small); None (and no threshold kept) without a fit, a spend model or a positive
    CLTV. ``spend`` gives exact repeat-purchase means by customer (a backtest), which
    reads every customer instead.
    """
    from processors.fit_grid import cltv_quantile

    model = await stored_fit(store)
    threshold: float | None = None
    if model is not None:
        if spend is None:
            found, sampled = await read_sample(store, model.as_of, sample)
        else:
            found = await read_histories(store, model.as_of)
            sampled = await store.customer_count()
        threshold = cltv_quantile(model, found, quantile, spend)
        logger.info(
            "high-value threshold",
            extra={"threshold": threshold, "customers": sampled, "buyers": len(found)},
        )
    if threshold is None or threshold <= 0:
        await store.redis.delete(store.key("hv:cltv"))
        return None
    await store.redis.set(store.key("hv:cltv"), repr(threshold))
    return threshold


async def stored_evaluations(
    store: Store, customer_ids: Sequence[str]
) -> dict[str, dict[str, str]]:
    """The last evaluation stored for each of the customers that has one, by field (``st``
    status, ``sc`` risk score, ``rr`` reasons, ``hv`` high value, ``at`` when, ``no``
    orders, ``cl`` predicted CLTV and ``cr`` CLTV at risk, in micros, empty without a
    fitted model, ``bd`` the band's letter), one script call per shard."""
    layout = await store.layout()
    by_shard: dict[str, list[str]] = {}
    for cid in customer_ids:
        by_shard.setdefault(layout.prefix_of(cid), []).append(cid)
    read = store.redis.register_script(_PREVIOUS)
    homes = list(by_shard)
    replies = await asyncio.gather(
        *(read(keys=[home + "ids"], args=[home, *by_shard[home]]) for home in homes)
    )
    found: dict[str, dict[str, str]] = {}
    for home, reply in zip(homes, replies, strict=True):
        for n, cid in enumerate(by_shard[home]):
            fields = evaluation_fields(reply[n])
            if fields:
                found[cid] = fields
    return found


async def ranked_at_risk(
    store: Store, limit: int, wanted: Callable[[CustomerState], bool] | None = None
) -> list[dict[str, object]]:
    """At-risk customers by CLTV at risk (predicted CLTV × risk score), with reasons;
    ``wanted`` keeps only the customers whose state it accepts (e.g. by attribute), read
    down the ranking until ``limit`` are found or it ends."""
    layout = await store.layout()
    reach = limit
    while True:
        tops = await asyncio.gather(
            *(
                store.redis.zrevrange(home + "atrisk", 0, reach - 1, withscores=True)
                for home in layout.prefixes
            )
        )
        # each shard's best, merged: the overall best are among them
        pairs = [(str(pair[0]), float(pair[1])) for top in tops for pair in cast(list[Any], top)]
        ranked = sorted(pairs, key=lambda p: (-p[1], p[0]))
        ended = all(len(cast(list[Any], top)) < reach for top in tops)
        if wanted is None:
            ranked = ranked[:limit]
            break
        found = {s.customer_id: s for s in await store.read_customers([c for c, _ in ranked])}
        ranked = [(c, r) for c, r in ranked if c in found and wanted(found[c])]
        # a customer not read yet ranks below the lowest score read from its shard: only
        # those above every such bound are sure of their place
        bounds = [
            float(cast(list[Any], top)[-1][1]) for top in tops if len(cast(list[Any], top)) >= reach
        ]
        sure = ranked if ended else [(c, r) for c, r in ranked if r > max(bounds)]
        if len(sure) >= limit or ended:
            ranked = sure[:limit]
            break
        reach *= 4
    ids = [c for c, _ in ranked]
    states = {s.customer_id: s for s in await store.read_customers(ids)}
    evaluations = await stored_evaluations(store, ids)
    rows: list[dict[str, object]] = []
    for cid, rank in ranked:
        ev = evaluations.get(cid, {})
        state = states.get(cid)
        rows.append(
            {
                "customer_id": cid,
                "rank": rank,
                "risk_score": float(ev.get("sc", 0)),
                "risk_reasons": [r for r in ev.get("rr", "").split(",") if r],
                "high_value": ev.get("hv") == "1",
                "band": BAND_LETTERS.get(ev.get("bd", "")),
                "cltv": int(ev["cl"]) / MICROS if ev.get("cl") else None,
                "cltv_at_risk": int(ev["cr"]) / MICROS if ev.get("cl") and ev.get("cr") else None,
                "evaluated_at": iso(int(ev["at"])) if ev.get("at") else None,
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
    layout = await store.layout()
    by_shard: dict[str, list[CustomerState]] = {}
    for state in states:
        by_shard.setdefault(layout.prefix_of(state.customer_id), []).append(state)
    start, stop = lookback_days(now_ms, lifecycle)
    found: dict[str, bool] = {}
    for home, members in by_shard.items():
        async with store.redis.pipeline(transaction=False) as pipe:
            for state in members:
                pipe.hget(home + "c:" + state.customer_id, "ix")
            indexes = [ix or "" for ix in await pipe.execute()]
        flags = await store.redis.register_script(_RETURNED)(
            keys=[home + "ids"], args=[home, start, stop, WINDOW_KEEP_SECONDS, *indexes]
        )
        found.update((s.customer_id, bool(f)) for s, f in zip(members, flags, strict=True))
    return found
