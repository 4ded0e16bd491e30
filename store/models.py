"""Fitted models on the store: reading every buyer's history, refitting, keeping the fit.

The statistics come from each customer's placed orders per day (``od:<id>``) and money
totals, which the batch script keeps live; the fit is stored under ``bgnbd`` with its
as-of day, so every reader computes P(alive), spend and CLTV against the same parameters.
The models themselves are pure (``processors/forecast.py``).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Mapping
from datetime import date
from typing import cast

from processors.forecast import (
    Fit,
    History,
    ModelOptions,
    approximate_spend,
    day_number,
    fit_histories,
    stats_from_days,
)
from store.store import Store


async def read_histories(store: Store, as_of: date, chunk: int = 1000) -> list[History]:
    """Every buyer's statistics as of the end of ``as_of``, read in pipelined chunks."""
    ids = await store.customer_ids()
    limit = day_number(as_of)
    found: list[History] = []
    for i in range(0, len(ids), chunk):
        part = ids[i : i + chunk]
        async with store.redis.pipeline(transaction=False) as pipe:
            for customer_id in part:
                # days with orders: the customer hash's fields named by a day number,
                # and the od: hash of earlier versions
                pipe.hkeys(store.key("od", customer_id))
                pipe.hkeys(store.key("c", customer_id))
                pipe.hmget(store.key("c", customer_id), ["pm", "rm"])
            replies = await pipe.execute()
        for n, customer_id in enumerate(part):
            old_days, names, (placed, refunded) = replies[3 * n : 3 * n + 3]
            days = {int(d) for d in old_days} | {int(d) for d in names if d.isdigit()}
            stats = stats_from_days(sorted(days), limit)
            if stats is not None:
                revenue = int(placed or 0) - int(refunded or 0)
                spend = approximate_spend(revenue, len(days))
                found.append(History(customer_id, *stats, spend))
    return found


async def sufficient_stats(store: Store, as_of: date) -> list[tuple[int, float, float]]:
    """Every buyer's (x, t_x, T) as of the end of ``as_of``."""
    return [(h.x, h.t_x, h.T) for h in await read_histories(store, as_of)]


async def save_fit(store: Store, fit: Fit) -> None:
    await store.redis.set(store.key("bgnbd"), json.dumps(fit.as_dict()))
    await store.redis.set(store.key("bgnbd:at"), str(time.time()))


async def refit(
    store: Store,
    as_of: date,
    options: ModelOptions | None = None,
    spend: Mapping[str, float] | None = None,
) -> Fit | None:
    """Fit the models to the store's buyers and keep the result; None without buyers.

    ``spend`` gives exact repeat-purchase means by customer (a backtest has them); without
    it each customer's :func:`approximate_spend` is used.
    """
    histories = await read_histories(store, as_of)
    if not histories:
        return None
    # the fit is CPU-bound for a moment: keep the event loop (and the worker) responsive
    result = await asyncio.get_running_loop().run_in_executor(
        None, fit_histories, histories, as_of, options or ModelOptions(), spend
    )
    await save_fit(store, result)
    return result


async def fit_age_seconds(store: Store) -> float | None:
    """Wall seconds since the last refit, None when there was none."""
    raw = await store.redis.get(store.key("bgnbd:at"))
    return None if raw is None else time.time() - float(raw)


async def stored_fit(store: Store) -> Fit | None:
    raw = cast(str | None, await store.redis.get(store.key("bgnbd")))
    return None if raw is None else Fit.from_dict(json.loads(raw))
