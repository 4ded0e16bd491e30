"""BG/NBD on the store: sufficient statistics from Redis, refits, per-customer outlook.

The statistics come from each customer's placed orders per day (``od:<id>``), which the
batch script keeps live: x = days with an order − 1, t_x and T in weeks from the first
order day (METRICS.md, BG/NBD). A fit is stored under ``bgnbd`` with its as-of day, so every
reader computes P(alive) and expected purchases against the same parameters.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date
from typing import Any, cast

import numpy as np

from processors.bgnbd import BgNbdParams, FitError, expected_purchases, fit, p_alive
from processors.state import CustomerState
from processors.store import Store

logger = logging.getLogger(__name__)

_EPOCH = date(1970, 1, 1)
DAYS_PER_WEEK = 7.0


@dataclass(frozen=True, slots=True)
class Fit:
    params: BgNbdParams
    as_of: date
    customers: int

    def as_dict(self) -> dict[str, Any]:
        return {
            **self.params.as_dict(),
            "as_of": self.as_of.isoformat(),
            "customers": self.customers,
        }

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Fit:
        params = BgNbdParams(raw["r"], raw["alpha"], raw["a"], raw["b"])
        return cls(params, date.fromisoformat(raw["as_of"]), int(raw["customers"]))


@dataclass(frozen=True, slots=True)
class Outlook:
    p_alive: float
    expected_purchases_30d: float
    expected_purchases_90d: float


def day_number(day: date) -> int:
    return (day - _EPOCH).days


def stats_from_days(days: list[int], as_of: int) -> tuple[int, float, float] | None:
    """(x, t_x, T) from a customer's order days, or None without an order by ``as_of``."""
    kept = [d for d in days if d <= as_of]
    if not kept:
        return None
    first, last = min(kept), max(kept)
    return len(set(kept)) - 1, (last - first) / DAYS_PER_WEEK, (as_of - first) / DAYS_PER_WEEK


def spend_from_days(amounts: Mapping[int, float], as_of: int) -> float:
    """Mean value of the repeat purchases: amounts summed per day, the first day left out,
    days after ``as_of`` ignored; 0 without a repeat purchase (the Gamma-Gamma data)."""
    kept = sorted(d for d in amounts if d <= as_of)
    repeat = [amounts[d] for d in kept[1:]]
    return sum(repeat) / len(repeat) if repeat else 0.0


async def sufficient_stats(
    store: Store, as_of: date, chunk: int = 1000
) -> list[tuple[int, float, float]]:
    """Every buyer's (x, t_x, T) as of the end of ``as_of``, read in pipelined chunks."""
    ids = await store.customer_ids()
    limit = day_number(as_of)
    stats: list[tuple[int, float, float]] = []
    for i in range(0, len(ids), chunk):
        async with store.redis.pipeline(transaction=False) as pipe:
            for customer_id in ids[i : i + chunk]:
                pipe.hkeys(store.key("od", customer_id))
            replies = await pipe.execute()
        for days in replies:
            found = stats_from_days([int(d) for d in days], limit)
            if found is not None:
                stats.append(found)
    return stats


async def refit(store: Store, as_of: date) -> Fit | None:
    """Fit the model to the store's buyers and keep the result; None without buyers."""
    stats = await sufficient_stats(store, as_of)
    if not stats:
        return None
    x, t_x, T = (np.array(column, dtype=np.float64) for column in zip(*stats, strict=True))
    # the fit is CPU-bound for a moment: keep the event loop (and the worker) responsive
    try:
        params = await asyncio.get_running_loop().run_in_executor(None, fit, x, t_x, T)
    except FitError as exc:
        # data far from the model's assumptions: keep the best point found, and say so
        logger.warning("BG/NBD fit did not converge", extra={"error": str(exc)})
        params = exc.best
    result = Fit(params, as_of, len(stats))
    await store.redis.set(store.key("bgnbd"), json.dumps(result.as_dict()))
    await store.redis.set(store.key("bgnbd:at"), str(time.time()))
    return result


async def fit_age_seconds(store: Store) -> float | None:
    """Wall seconds since the last refit, None when there was none."""
    raw = await store.redis.get(store.key("bgnbd:at"))
    return None if raw is None else time.time() - float(raw)


async def stored_fit(store: Store) -> Fit | None:
    raw = cast(str | None, await store.redis.get(store.key("bgnbd")))
    return None if raw is None else Fit.from_dict(json.loads(raw))


def outlook(state: CustomerState, model: Fit, as_of: date) -> Outlook | None:
    """P(alive) and purchases expected in 30 and 90 days, for a customer who has ordered."""
    stats = stats_from_days(list(state.orders_by_day), day_number(as_of))
    if stats is None:
        return None
    x, t_x, T = stats
    p = model.params
    with np.errstate(all="ignore"):
        values = (
            float(p_alive(p, [x], [t_x], [T])[0]),
            float(expected_purchases(p, 30 / DAYS_PER_WEEK, [x], [t_x], [T])[0]),
            float(expected_purchases(p, 90 / DAYS_PER_WEEK, [x], [t_x], [T])[0]),
        )
    if not all(np.isfinite(values)):
        return None  # parameters from a fit that went astray: no number beats a wrong one
    return Outlook(*values)
