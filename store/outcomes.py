"""The alerts raised, as logged by the evaluations (``alog``, one hash per shard), and their
outcomes counted from the customers' stored orders (``processors/outcomes.py``).

Counting reads every logged alert and its customer: the command line does it when asked;
the leader does it every few minutes and keeps the result (``alerts:outcomes``, JSON) for
the exporter. Alerts older than ``keep_days`` leave the log then.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import cast

from contract.events import MS_PER_DAY
from processors.outcomes import DEFAULT_WINDOW_DAYS, OUTCOMES, Outcome, Raised, Tally, tally
from processors.state import CustomerState
from store.store import Store

#: alerts are kept in the log this long, then left out of the outcomes
KEEP_DAYS = 400
_READ_CHUNK = 500


async def logged_alerts(store: Store, now_ms: int, keep_days: int = KEEP_DAYS) -> list[Raised]:
    """Every alert in the log of every shard; those older than ``keep_days`` are dropped
    from it on the way."""
    horizon = now_ms - keep_days * MS_PER_DAY
    found: list[Raised] = []
    for home in (await store.layout()).prefixes:
        key = home + "alog"
        stale: list[str] = []
        async for name, value in store.redis.hscan_iter(key, count=1000):
            alert_key = name.decode() if isinstance(name, bytes) else str(name)
            text = value.decode() if isinstance(value, bytes) else str(value)
            try:
                raised = Raised.decode(alert_key, text)
            except ValueError:
                stale.append(alert_key)  # not a log entry this version can read
                continue
            if raised.at_ms < horizon:
                stale.append(alert_key)
            else:
                found.append(raised)
        for start in range(0, len(stale), 1000):
            await store.redis.hdel(key, *stale[start : start + 1000])
    return found


async def alerts_about(store: Store, customer_id: str) -> list[Raised]:
    """The logged alerts about one customer: Redis matches their keys
    (``kind:customer:occasion``), so only those come back to be read."""
    home = (await store.layout()).prefix_of(customer_id)
    pattern = "*:" + "".join(f"[{c}]" if c in "*?[]\\" else c for c in customer_id) + ":*"
    found: list[Raised] = []
    async for name, value in store.redis.hscan_iter(home + "alog", match=pattern, count=1000):
        try:
            raised = Raised.decode(str(name), str(value))
        except ValueError:
            continue
        if raised.customer_id == customer_id:
            found.append(raised)
    return found


async def read_states(store: Store, ids: Sequence[str]) -> dict[str, CustomerState]:
    """The states of the customers that exist, read in chunks."""
    states: dict[str, CustomerState] = {}
    for start in range(0, len(ids), _READ_CHUNK):
        for state in await store.read_customers(ids[start : start + _READ_CHUNK]):
            states[state.customer_id] = state
    return states


async def count_outcomes(
    store: Store, now_ms: int, window_days: int = DEFAULT_WINDOW_DAYS
) -> Tally:
    """Every logged alert's outcome as of ``now_ms``, counted by kind, band and outcome."""
    raised = await logged_alerts(store, now_ms)
    ids = sorted({r.customer_id for r in raised})
    return tally(raised, await read_states(store, ids), window_days, now_ms)


async def keep_outcomes(store: Store, now_ms: int, window_days: int = DEFAULT_WINDOW_DAYS) -> None:
    """Count the outcomes and keep them for the exporter."""
    counted = await count_outcomes(store, now_ms, window_days)
    rows = [[k, b, o, n] for (k, b, o), n in sorted(counted.counts.items())]
    await store.redis.set(
        store.key("alerts:outcomes"), json.dumps({"window_days": window_days, "counts": rows})
    )


async def kept_outcomes(store: Store) -> dict[tuple[str, str, Outcome], int]:
    """The outcomes the leader counted last (none before the first count)."""
    raw = await store.redis.get(store.key("alerts:outcomes"))
    if not raw:
        return {}
    data = json.loads(raw)
    return {
        (str(k), str(b), cast(Outcome, o)): int(n)
        for k, b, o, n in data.get("counts", [])
        if o in OUTCOMES
    }
