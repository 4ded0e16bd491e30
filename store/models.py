"""Fitted models on the store: reading the buyers' statistics, refitting, keeping the fit.

A live refit does not read every customer. The P(alive) model fits on the fit grid, which
the batch script keeps per shard (``fitgrid``: buyers counted by first and last order day
and distinct order days, :mod:`processors.fit_grid`): exact, and its size grows with
distinct cells, not customers. The spend model and the high-value threshold need each
buyer's money, so they use a bounded sample of customers (:func:`read_sample`), read per
customer. Both are read in bounded slices (HSCAN), and the CPU work runs off the event
loop. The fit is stored under ``fit`` with its as-of day and a report of what it read
and how long that took, so every reader computes P(alive), spend and CLTV against the same
parameters. The models themselves are pure (``processors/forecast.py``,
``processors/fit_grid.py``).

:func:`read_histories` reads every customer's orders per day and money: a
backtest needs its buyers by id for their exact spend, and a store filled before the grid
existed falls back to it until ``retention rebuild`` fills the grid.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Mapping, Sequence
from datetime import date
from typing import TYPE_CHECKING, Any, cast

from processors.fits import (
    Fit,
    History,
    ModelOptions,
    approximate_spend,
    day_number,
    stats_from_days,
)
from store.layout import money_micros
from store.store import Store

if TYPE_CHECKING:
    from processors.fit_grid import GridRows

logger = logging.getLogger(__name__)

#: The per-shard hash of buyers per cell ``first:last:days`` (docs/store.md).
GRID = "fitgrid"
#: Customers read for the spend model and the high-value threshold (docs/metrics.md).
SAMPLE_CUSTOMERS = 50_000
#: Fields asked for per HSCAN call: each reply stays small, so no reader waits long.
SCAN_SLICE = 5_000
#: Customers read per pipelined round trip.
CHUNK = 1_000


async def _scan(store: Store, key: str, enough: int | None = None) -> list[dict[str, str]]:
    """A hash read in HSCAN slices (each slice one short command), up to about ``enough``
    fields. A field may come twice when Redis resizes the hash during the scan: the
    slices are merged later, a later value replacing an earlier one."""
    slices: list[dict[str, str]] = []
    cursor, got = 0, 0
    while True:
        cursor, part = await store.redis.hscan(key, cursor, count=SCAN_SLICE)
        slices.append(cast(dict[str, str], part))
        got += len(part)
        if cursor == 0 or (enough is not None and got >= enough):
            return slices


def _merged(slices: Sequence[dict[str, str]]) -> dict[str, str]:
    merged: dict[str, str] = {}
    for part in slices:
        merged.update(part)
    return merged


def _grid_rows(shards: list[list[dict[str, str]]], as_of: int) -> tuple[GridRows, int]:
    from processors.fit_grid import Cells, grid_rows, parse_cells

    parts = []
    for slices in shards:
        merged = _merged(slices)
        parts.append(parse_cells(list(merged), list(merged.values())))
    cells = Cells.joined(parts)
    return grid_rows(cells, as_of), len(cells)


async def read_grid(store: Store, as_of: date) -> tuple[GridRows, int]:
    """The buyers as of the end of ``as_of`` as weighted rows of the fit grid summed over
    shards, and how many cells the shards hold (a cell counted once per shard)."""
    homes = (await store.layout()).prefixes
    shards = await asyncio.gather(*(_scan(store, home + GRID) for home in homes))
    loop = asyncio.get_running_loop()
    rows, cells = await loop.run_in_executor(None, _grid_rows, list(shards), day_number(as_of))
    if rows.malformed:
        logger.warning("fit grid cells unreadable", extra={"cells": rows.malformed})
    return rows, cells


def _histories(ids: Sequence[str], replies: Sequence[dict[str, str]], as_of: int) -> list[History]:
    """Buyers' statistics from each customer's fields, as
    :meth:`store.store.Store.customer_fields` reads them."""
    found: list[History] = []
    for customer_id, fields in zip(ids, replies, strict=True):
        # days with orders: the fields named by a day number
        days = {int(d) for d in fields if d.isdigit()}
        stats = stats_from_days(sorted(days), as_of)
        if stats is not None:
            revenue = money_micros(fields.get("pm"), fields.get("ph")) - money_micros(
                fields.get("rm"), fields.get("rh")
            )
            found.append(History(customer_id, *stats, approximate_spend(revenue, len(days))))
    return found


async def _read_shard(store: Store, home: str, ids: Sequence[str], as_of: int) -> list[History]:
    replies: list[dict[str, str]] = []
    for i in range(0, len(ids), CHUNK):
        replies.extend(await store.customer_fields(home, ids[i : i + CHUNK]))
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(None, _histories, ids, replies, as_of)


async def read_histories(store: Store, as_of: date) -> list[History]:
    """Every buyer's statistics as of the end of ``as_of``, by customer id.

    Scans every customer: for backtests and for a store without a fit grid, not for a
    live refit (see :func:`read_grid` and :func:`read_sample`)."""
    layout = await store.layout()
    by_shard: dict[str, list[str]] = {home: [] for home in layout.prefixes}
    for customer_id in await store.customer_ids():
        by_shard[layout.prefix_of(customer_id)].append(customer_id)
    limit = day_number(as_of)
    parts = await asyncio.gather(
        *(_read_shard(store, home, ids, limit) for home, ids in by_shard.items())
    )
    return sorted((h for part in parts for h in part), key=lambda h: h.customer_id)


async def read_sample(
    store: Store, as_of: date, size: int = SAMPLE_CUSTOMERS
) -> tuple[list[History], int]:
    """About ``size`` customers spread evenly over the shards, and the buyers among them.

    Each shard's customers are the first found by a SCAN of its customer hashes
    (:meth:`store.store.Store.shard_customers`): a uniform sample, or the whole shard when
    it holds fewer. Returns the buyers' statistics and how many customers were read."""
    layout = await store.layout()
    per_shard = max(1, -(-size // layout.count))
    scans = await asyncio.gather(
        *(store.shard_customers(home, per_shard) for home in layout.prefixes)
    )
    limit = day_number(as_of)
    picked = [ids[:per_shard] for ids in scans]
    parts = await asyncio.gather(
        *(
            _read_shard(store, home, ids, limit)
            for home, ids in zip(layout.prefixes, picked, strict=True)
        )
    )
    return [h for part in parts for h in part], sum(len(ids) for ids in picked)


async def save_fit(store: Store, fit: Fit, report: Mapping[str, Any] | None = None) -> None:
    """Keep the fit; ``report`` adds how it was made (what it read, seconds)."""
    await store.redis.set(store.key("fit"), json.dumps({**fit.as_dict(), **(report or {})}))
    await store.redis.set(store.key("fit:at"), str(time.time()))


async def refit(
    store: Store,
    as_of: date,
    options: ModelOptions | None = None,
    spend: Mapping[str, float] | None = None,
    sample: int = SAMPLE_CUSTOMERS,
) -> Fit | None:
    """Fit the models to the store's buyers and keep the result; None without buyers.

    The P(alive) model fits on the fit grid, the spend model on about ``sample``
    customers' live spend. ``spend`` gives exact repeat-purchase means by customer (a
    backtest has them), which needs every customer's history instead; so does a store
    whose grid is empty while sampled customers have bought (filled before the grid
    existed: ``retention rebuild`` fills it).
    """
    # numpy and scipy load here, not with the module: readers of the stored fit
    # (retention customer) need neither
    from processors.fit_grid import fit_grid, warm_start
    from processors.forecast import fit_histories

    started = time.monotonic()
    options = options or ModelOptions()
    loop = asyncio.get_running_loop()
    if spend is None:
        # both are mostly waiting on Redis: read them side by side
        (rows, cells), (found, sampled) = await asyncio.gather(
            read_grid(store, as_of), read_sample(store, as_of, sample)
        )
        if cells or not found:
            if rows.customers == 0:
                return None
            previous = await _previous_fit(store)
            read = time.monotonic() - started
            _check_complete(rows, found, sampled, await store.customer_count())
            fitted = await loop.run_in_executor(
                None, fit_grid, rows, found, as_of, options, previous
            )
            report = {"source": "grid", "cells": rows.cells, "left_out": rows.left_out}
            report["start"] = "cold" if warm_start(previous, options) is None else "warm"
            report |= {"sampled": sampled, "sampled_buyers": len(found)}
            return await _keep(store, fitted, report, started, read)
        logger.warning(
            "fit grid empty while customers have bought: reading every customer; "
            "retention rebuild fills the grid",
            extra={"sampled_buyers": len(found)},
        )
    histories = await read_histories(store, as_of)
    if not histories:
        return None
    read = time.monotonic() - started
    result = await loop.run_in_executor(None, fit_histories, histories, as_of, options, spend)
    report = {"source": "customers", "cells": None, "left_out": 0, "start": "cold"}
    report |= {"sampled": None, "sampled_buyers": None}
    return await _keep(store, result, report, started, read)


async def _previous_fit(store: Store) -> Fit | None:
    """The stored fit a live refit starts its search from; None when there is none or it
    cannot be read (the refit then starts cold and overwrites it)."""
    try:
        return await stored_fit(store)
    except (ValueError, KeyError, TypeError) as exc:
        logger.warning("stored fit unreadable: refitting from scratch", extra={"error": str(exc)})
        return None


def _check_complete(rows: GridRows, found: list[History], sampled: int, customers: int) -> None:
    """Warn when the grid holds far fewer buyers than the sample says the store has: cells
    are missing for buyers who have not ordered on a new day since the grid was added."""
    if not sampled or not found:
        return
    expected = len(found) / sampled * customers
    if rows.customers + rows.left_out < expected / 2:
        logger.warning(
            "fit grid holds fewer buyers than the store; retention rebuild fills it",
            extra={"grid_buyers": rows.customers, "expected_buyers": round(expected)},
        )


async def _keep(store: Store, fit: Fit, report: dict[str, Any], started: float, read: float) -> Fit:
    total = time.monotonic() - started
    report |= {
        "read_seconds": round(read, 3),
        "fit_seconds": round(total - read, 3),
        "seconds": round(total, 3),
    }
    await save_fit(store, fit, report)
    logger.info("models refitted", extra={"model": fit.model, "customers": fit.customers, **report})
    return fit


async def fit_report(store: Store) -> dict[str, Any] | None:
    """How the stored fit was made: buyers used, what was read, seconds."""
    raw = cast(str | None, await store.redis.get(store.key("fit")))
    if raw is None:
        return None
    stored = json.loads(raw)
    names = (
        "customers",
        "source",
        "start",
        "cells",
        "left_out",
        "sampled",
        "sampled_buyers",
        "read_seconds",
        "fit_seconds",
        "seconds",
    )
    report = {name: stored.get(name) for name in names}
    spend = stored.get("gamma_gamma")
    report["spend_customers"] = None if spend is None else spend.get("customers")
    return report


async def fit_age_seconds(store: Store) -> float | None:
    """Wall seconds since the last refit, None when there was none."""
    raw = await store.redis.get(store.key("fit:at"))
    return None if raw is None else time.time() - float(raw)


async def stored_fit(store: Store) -> Fit | None:
    raw = cast(str | None, await store.redis.get(store.key("fit")))
    return None if raw is None else Fit.from_dict(json.loads(raw))
