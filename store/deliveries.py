"""What the notifier keeps in Redis: delivered alerts, cool-downs, dead letters, counters.

The keys are the ``notify:`` family of :mod:`store.layout`. The client may decode
responses or not: every reply is read either way. Customer ids and alert keys are free
text and may carry lone surrogates (JSON allows them), so they are written as UTF-8 that
keeps them (:func:`processors.notify_messages.utf8_bytes`).

A subscriber's own keys carry its name as a Redis Cluster hash tag
(``notify:delivered:{crm}``, ``notify:last:{crm}:...``, ``notify:digest:{crm}``), as a
shard's keys carry theirs (:mod:`store.shards`): they share one slot, so the transaction
that records a delivery runs on a cluster as on a single Redis. The dead letters and the
counters are one key each, shared by every subscriber; a counter is raised after the
transaction it counts, never inside it. Records written before the tags existed are moved
to the tagged names once (:meth:`Deliveries.move_untagged`).
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis

from processors.notify_messages import utf8_bytes
from store.layout import Keys

logger = logging.getLogger(__name__)

#: the field of a digest hash that holds when the last digest was due
DIGEST_SENT = "\x00sent"
#: The key (under ``notify:``) recording the layout of the notifier's keys: 2 = each
#: subscriber's keys tagged with its name. Before it existed they were untagged (1).
FORMAT_KEY = "format"
NOTIFY_FORMAT = 2
#: the families of per-subscriber keys, each ``notify:<family>:{<subscriber>}...``
_PER_SUBSCRIBER = ("delivered", "last", "digest")


class NotifyFormatMismatch(RuntimeError):
    """The notifier's records are in a layout this version does not know."""


def _tag(subscriber: str) -> str:
    """The subscriber's hash tag. Names are letters, digits and ``_.-`` (the config checks
    them), so the tag is never empty and never ends early."""
    return "{" + subscriber + "}"


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

    def delivered_key(self, subscriber: str) -> str:
        return self.key("delivered", _tag(subscriber))

    def _last_key(self, subscriber: str, kind: str, customer_id: str) -> bytes:
        return utf8_bytes(self.key("last", _tag(subscriber), kind, customer_id))

    async def seen(self, subscriber: str, kind: str, customer_id: str, alert_key: str) -> Seen:
        """Whether ``subscriber`` has the alert, and when the customer last had one of its
        kind, in one round trip."""
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.zscore(self.delivered_key(subscriber), utf8_bytes(alert_key))
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
        """Remember a delivered alert, in one transaction on the subscriber's slot: the
        alert key (older ones beyond ``horizon_ms`` dropped) and the start of the cool-down
        when there is one. Then the ``<outcome>|<channel>`` counter is raised (``digested``
        for an alert kept for a digest): should that fail, the alert is recorded already,
        and a second call records nothing new but the count."""
        delivered = self.delivered_key(subscriber)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.zadd(delivered, {utf8_bytes(alert_key): delivered_ms})
            pipe.zremrangebyscore(delivered, "-inf", delivered_ms - horizon_ms)
            if cooldown_ms > 0:
                pipe.set(self._last_key(subscriber, kind, customer_id), alert_ms, px=cooldown_ms)
            await pipe.execute()
        await self.count(f"{outcome}|{channel}")

    # --- digests: one hash per subscriber, alert key -> the alert's JSON, and in the same
    # hash (one key: atomic on a Redis Cluster too) the last digest sent, under a field no
    # alert key can be (alert keys start with their kind)

    def _digest_key(self, subscriber: str) -> str:
        return self.key("digest", _tag(subscriber))

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
        """Append ``entry`` to the dead letters and keep the newest ``limit`` entries, in
        one transaction on the list's key; then bump ``counters`` and count what the trim
        dropped (``dead_trimmed``), so that the list stays bounded and no drop is silent."""
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.rpush(self.dead_key, json.dumps(entry, sort_keys=True, default=repr))
            pipe.ltrim(self.dead_key, -limit, -1)
            length, _ = await pipe.execute()
        bumps: dict[str, int] = {}
        for counter in counters:
            bumps[counter] = bumps.get(counter, 0) + 1
        if int(length) > limit:
            bumps["dead_trimmed"] = int(length) - limit
        if bumps:
            # one key, so one transaction wherever it lives
            async with self.redis.pipeline(transaction=True) as pipe:
                for counter, n in bumps.items():
                    pipe.hincrby(self.stats_key, counter, n)
                await pipe.execute()

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

    # --- the move to tagged keys

    async def move_untagged(self) -> int:
        """Move every subscriber's records from the untagged names of format 1
        (``notify:delivered:crm``) to the tagged ones, once: the recorded format then says
        it is done. Safe to run again or from two notifiers at once (each step copies what
        is there and deletes the old key last); the keys may lie in different slots, so
        each is copied, not renamed. Returns how many keys moved."""
        raw = await self.redis.get(self.key(FORMAT_KEY))
        if raw is not None:
            text = raw.decode() if isinstance(raw, bytes) else str(raw)
            if text != str(NOTIFY_FORMAT):
                raise NotifyFormatMismatch(
                    f"the notifier's records under {self.key('')!r} are in format {text}, and "
                    f"this version reads format {NOTIFY_FORMAT}: run the version that wrote them"
                )
            return 0
        moved = 0
        base = self.key("")
        redis: Any = self.redis
        if not await redis.exists(self.stats_key, self.dead_key):
            # every delivery and dead letter of format 1 was counted in the stats hash: a
            # store without it has nothing to move, and needs no SCAN of the keyspace
            await self.redis.set(self.key(FORMAT_KEY), str(NOTIFY_FORMAT))
            return 0
        try:
            async for name in redis.scan_iter(match=_glob(base) + "*", count=1000):
                key = _text(name)
                family, _, rest = key[len(base) :].partition(":")
                if family not in _PER_SUBSCRIBER or not rest or rest.startswith("{"):
                    continue
                subscriber, sep, tail = rest.partition(":")
                new = self.key(family, _tag(subscriber)) + (sep + tail if sep else "")
                if family == "delivered":
                    await self._copy_sorted_set(key, new)
                elif family == "digest":
                    await self._copy_digest(key, new)
                else:
                    await self._copy_value(key, new)
                await redis.delete(name)
                moved += 1
        except UnicodeError as exc:
            # a key naming a customer id with a lone surrogate, which a client that decodes
            # replies cannot read: the rest waits for the next start, the notifier goes on
            logger.warning(
                "notifier records not all moved to tagged keys",
                extra={"moved": moved, "error": repr(exc)},
            )
            return moved
        await self.redis.set(self.key(FORMAT_KEY), str(NOTIFY_FORMAT))
        if moved:
            logger.info("notifier records moved to tagged keys", extra={"keys": moved})
        return moved

    async def _copy_sorted_set(self, old: str, new: str) -> None:
        redis: Any = self.redis
        batch: dict[Any, float] = {}
        async for member, score in redis.zscan_iter(old, count=1000):
            batch[member] = score
            if len(batch) >= 1000:
                await redis.zadd(new, batch)
                batch = {}
        if batch:
            await redis.zadd(new, batch)

    async def _copy_digest(self, old: str, new: str) -> None:
        redis: Any = self.redis
        sent: int | None = None
        batch: dict[Any, Any] = {}
        async for field_name, value in redis.hscan_iter(old, count=1000):
            if _text(field_name) == DIGEST_SENT:
                sent = int(value)
                continue
            batch[field_name] = value
            if len(batch) >= 1000:
                await redis.hset(new, mapping=batch)
                batch = {}
        if batch:
            await redis.hset(new, mapping=batch)
        if sent is not None:
            current = await redis.hget(new, DIGEST_SENT)
            if current is None or int(current) < sent:
                await redis.hset(new, DIGEST_SENT, sent)

    async def _copy_value(self, old: str, new: str) -> None:
        """A cool-down: its value, and what is left of its time to live."""
        redis: Any = self.redis
        value = await redis.get(old)
        ttl = await redis.pttl(old)
        if value is None or ttl == -2:
            return
        await redis.set(new, value, px=ttl if ttl > 0 else None, nx=True)


def _text(raw: Any) -> str:
    return raw.decode("utf-8", "surrogatepass") if isinstance(raw, bytes) else str(raw)


def _glob(text: str) -> str:
    """``text`` matched literally in a SCAN pattern."""
    return "".join(f"[{c}]" if c in "*?[]\\" else c for c in text)
