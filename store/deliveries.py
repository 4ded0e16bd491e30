"""What the notifier keeps in Redis: delivered alerts, cool-downs, dead letters, counters.

The keys are the ``notify:`` family of :mod:`store.layout`. The client may decode
responses or not: every reply is read either way. Customer ids and alert keys are free
text and may carry lone surrogates (JSON allows them), so they are written as UTF-8 that
keeps them (:func:`processors.notify_messages.utf8_bytes`).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis

from processors.notify_messages import utf8_bytes
from store.layout import Keys

#: the field of a digest hash that holds when the last digest was due
DIGEST_SENT = "\x00sent"


@dataclass(frozen=True, slots=True)
class Seen:
    """What is known of an alert before it is sent to one subscriber."""

    #: the subscriber has it already
    delivered: bool
    #: ``at`` (ms) of the last alert of the same kind delivered for the same customer,
    #: while its cool-down lasts (not read for an alert already delivered)
    last_at_ms: int | None


class Deliveries:
    """The notifier's Redis reads and writes, one method per step of a delivery."""

    def __init__(self, redis: Redis, prefix: str) -> None:
        self.redis = redis
        self.keys = Keys(prefix)

    def key(self, *parts: str) -> str:
        return self.keys.key("notify", *parts)

    @property
    def stats_key(self) -> str:
        return self.key("stats")

    @property
    def dead_key(self) -> str:
        return self.key("dead")

    def _last_key(self, subscriber: str, kind: str, customer_id: str) -> bytes:
        return utf8_bytes(self.key("last", subscriber, kind, customer_id))

    async def seen(self, subscriber: str, kind: str, customer_id: str, alert_key: str) -> Seen:
        """Whether ``subscriber`` has the alert, and when the customer last had one of its
        kind, in one round trip."""
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.zscore(self.key("delivered", subscriber), utf8_bytes(alert_key))
            pipe.get(self._last_key(subscriber, kind, customer_id))
            score, last_at = await pipe.execute()
        if score is not None:
            return Seen(delivered=True, last_at_ms=None)
        return Seen(delivered=False, last_at_ms=None if last_at is None else int(last_at))

    async def count(self, counter: str, n: int = 1) -> None:
        await self.redis.hincrby(self.stats_key, counter, n)

    async def record(
        self,
        subscriber: str,
        channel: str,
        kind: str,
        customer_id: str,
        alert_key: str,
        *,
        delivered_ms: int,
        alert_ms: int,
        cooldown_ms: int,
        horizon_ms: float,
        outcome: str = "sent",
    ) -> None:
        """Remember a delivered alert, in one transaction: the alert key (older ones beyond
        ``horizon_ms`` dropped), the start of the cool-down when there is one, and the
        ``<outcome>|<channel>`` counter (``digested`` for an alert kept for a digest)."""
        delivered = self.key("delivered", subscriber)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.zadd(delivered, {utf8_bytes(alert_key): delivered_ms})
            pipe.zremrangebyscore(delivered, "-inf", delivered_ms - horizon_ms)
            if cooldown_ms > 0:
                pipe.set(self._last_key(subscriber, kind, customer_id), alert_ms, px=cooldown_ms)
            pipe.hincrby(self.stats_key, f"{outcome}|{channel}", 1)
            await pipe.execute()

    # --- digests: one hash per subscriber, alert key -> the alert's JSON, and in the same
    # hash (one key: atomic on a Redis Cluster too) the last digest sent, under a field no
    # alert key can be (alert keys start with their kind)

    def _digest_key(self, subscriber: str) -> str:
        return self.key("digest", subscriber)

    async def collect(self, subscriber: str, alert_key: str, alert_json: bytes) -> None:
        """Keep an alert for the subscriber's next digest (again: no change)."""
        await self.redis.hset(self._digest_key(subscriber), utf8_bytes(alert_key), alert_json)

    async def digest(self, subscriber: str) -> tuple[int | None, dict[str, bytes | str]]:
        """When the last digest was due (ms; None before the first) and the alerts kept
        since, by key."""
        raw = await self.redis.hgetall(self._digest_key(subscriber))
        sent: int | None = None
        kept: dict[str, bytes | str] = {}
        for name, value in raw.items():
            text = name.decode("utf-8", "surrogatepass") if isinstance(name, bytes) else name
            if text == DIGEST_SENT:
                sent = int(value)
            else:
                kept[text] = value
        return sent, kept

    async def digest_sent(self, subscriber: str, due_ms: int, alert_keys: list[str]) -> None:
        """The digest due at ``due_ms`` went out with ``alert_keys``: drop them and note it,
        in one transaction."""
        key = self._digest_key(subscriber)
        async with self.redis.pipeline(transaction=True) as pipe:
            if alert_keys:
                pipe.hdel(key, *(utf8_bytes(k) for k in alert_keys))
            pipe.hset(key, DIGEST_SENT, due_ms)
            await pipe.execute()

    async def push_dead_letter(
        self, entry: Mapping[str, Any], limit: int, counters: tuple[str, ...] = ()
    ) -> None:
        """Append ``entry`` to the dead letters and bump ``counters``, in one transaction;
        keep the newest ``limit`` entries and count what the trim dropped
        (``dead_trimmed``), so that the list stays bounded and no drop is silent."""
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.rpush(self.dead_key, json.dumps(entry, sort_keys=True, default=repr))
            pipe.ltrim(self.dead_key, -limit, -1)
            for counter in counters:
                pipe.hincrby(self.stats_key, counter, 1)
            length, *_ = await pipe.execute()
        if int(length) > limit:
            await self.count("dead_trimmed", int(length) - limit)

    async def dead_letters(self) -> list[dict[str, Any]]:
        """The dead-letter records, oldest first."""
        raw = await self.redis.lrange(self.dead_key, 0, -1)
        return [json.loads(r) for r in raw]

    async def stats(self) -> dict[str, int]:
        """The counters by name; a value that is not a number is left out."""
        raw = await self.redis.hgetall(self.stats_key)
        out: dict[str, int] = {}
        for field_name, value in raw.items():
            name = field_name.decode() if isinstance(field_name, bytes) else str(field_name)
            with contextlib.suppress(ValueError):
                out[name] = int(value)
        return out
