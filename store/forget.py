"""Erasing one customer (``retention forget``, ``DELETE /v1/customers/{id}``).

What names the customer goes: its state, evaluation, tickets, queue entries, ranking,
logged alerts, and the notifier's delivery records, digests and dead letters about it. A
tombstone keeps it from coming back: the keyed hash (SHA-1 of the store's tombstone key
and the id) in ``forgotten``, one hash at the store's prefix, kept by a rebuild, and a copy
in each shard's, where the batch script looks (``forget_customer.lua``). Aggregates hold
no id and stay as anonymous numbers: period bitmaps and sums, cohorts, the fit grid.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass
from importlib.resources import files
from typing import Any

from processors.outcomes import Raised
from store.deliveries import Deliveries
from store.store import Store, writing_script

_FORGET = writing_script("sched_chunks.lua", "forget_customer.lua")
_DEAD = files("store").joinpath("forget_dead_letters.lua").read_text()
FORGOTTEN = "forgotten"
KEY_FIELD = "\0key"


@dataclass(frozen=True, slots=True)
class Erased:
    """What an erase found and removed."""

    stored: bool
    alerts_logged: int
    notifier_records: int


def tombstone(secret: str, customer_id: str) -> str:
    """The keyed hash a tombstone holds instead of the id (as the batch script computes it:
    ``redis.sha1hex(secret .. id)``)."""
    return hashlib.sha1((secret + customer_id).encode("utf-8", "surrogatepass")).hexdigest()


async def tombstone_key(store: Store) -> str:
    """The store's tombstone key, made on first use."""
    key = store.key(FORGOTTEN)
    await store.redis.hsetnx(key, KEY_FIELD, secrets.token_hex(32))
    return str(await store.redis.hget(key, KEY_FIELD))


async def is_forgotten(store: Store, customer_id: str) -> bool:
    secret = await store.redis.hget(store.key(FORGOTTEN), KEY_FIELD)
    if secret is None:
        return False
    tomb = tombstone(str(secret), customer_id)
    return bool(await store.redis.hexists(store.key(FORGOTTEN), tomb))


async def forget_customer(
    store: Store, deliveries: Deliveries, customer_id: str, now_ms: int
) -> Erased:
    """Erase ``customer_id``; safe to run again (a second run finds nothing more)."""
    secret = await tombstone_key(store)
    tomb = tombstone(secret, customer_id)
    await store.redis.hset(store.key(FORGOTTEN), tomb, str(now_ms))
    home = (await store.layout()).prefix_of(customer_id)
    script = store.redis.register_script(_FORGET)
    found = await script(keys=[home + "ids"], args=[home, customer_id, tomb, now_ms, secret])
    logged = 0
    for shard in (await store.layout()).prefixes:
        logged += await _forget_logged(store, shard + "alog", customer_id)
    notified = await forget_notified(deliveries, customer_id)
    return Erased(bool(int(found)), logged, notified)


async def _forget_logged(store: Store, key: str, customer_id: str) -> int:
    doomed: list[str] = []
    async for name, value in store.redis.hscan_iter(key, count=1000):
        try:
            logged = Raised.decode(str(name), str(value))
        except ValueError:
            continue  # not an entry this version wrote: counting outcomes drops it
        if logged.customer_id == customer_id:
            doomed.append(str(name))
    for start in range(0, len(doomed), 1000):
        await store.redis.hdel(key, *doomed[start : start + 1000])
    return len(doomed)


async def forget_notified(deliveries: Deliveries, customer_id: str) -> int:
    """The notifier's records naming the customer: delivered keys, cool-downs, kept
    digest entries and dead letters. Returns how many went."""
    redis: Any = deliveries.redis
    removed = 0
    base = deliveries.key("")
    async for raw in redis.scan_iter(match=_glob(base) + "*", count=1000):
        key = raw.decode() if isinstance(raw, bytes) else str(raw)
        family = key[len(base) :].split(":", 1)[0]
        if family == "delivered":
            members = [m async for m, _ in redis.zscan_iter(key, count=1000)]
            mine = [m for m in members if _names(m, customer_id)]
            if mine:
                removed += int(await redis.zrem(key, *mine))
        elif family == "digest":
            fields = [f async for f, _ in redis.hscan_iter(key, count=1000)]
            mine = [f for f in fields if _names(f, customer_id)]
            if mine:
                removed += int(await redis.hdel(key, *mine))
        elif family == "last" and key.endswith(":" + customer_id):
            removed += int(await redis.delete(key))
    dead = redis.register_script(_DEAD)
    removed += int(await dead(keys=[deliveries.dead_key], args=[customer_id]))
    return removed


#: what follows the customer in an alert key: a day (with a band and reasons for an
#: escalation) or a milestone's order count (processors/lifecycle.py)
_OCCASION = re.compile(r"\d{4}-\d{2}-\d{2}(:(low|medium|high):[a-z_+]*)?|\d+")


def _names(alert_key: Any, customer_id: str) -> bool:
    """Whether an alert key (``kind:customer:occasion``) is about the customer, and not
    about another whose id starts the same."""
    text = alert_key.decode("utf-8", "surrogatepass") if isinstance(alert_key, bytes) else alert_key
    _, sep, rest = str(text).partition(":")
    if not sep or not rest.startswith(customer_id + ":"):
        return False
    return _OCCASION.fullmatch(rest[len(customer_id) + 1 :]) is not None


def _glob(text: str) -> str:
    return "".join(f"[{c}]" if c in "*?[]\\" else c for c in text)
