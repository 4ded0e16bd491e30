"""Redis side of the tracker: one atomic Lua call per batch, and the readers.

The key layout is documented in :mod:`store.layout`.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import time
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib.resources import files
from typing import Any, cast

from redis.asyncio import Redis
from redis.crc import key_slot

from contract.events import DIMENSIONS, Event, LoginEvent, OrderEvent, RejectReason
from processors.currency import Rates
from processors.state import Attribute, CustomerState, Score, TicketState
from processors.windows import Calendar, current_calendar, period_days
from store.connect import memory_info
from store.layout import ATTRIBUTE_LETTERS, Keys, money_micros
from store.record import CUSTOMER_ID, OFFSET, PARTITION, STAMP, TOPIC
from store.shards import (
    CALENDAR_KEY,
    FORMAT_KEY,
    SHARDS_KEY,
    STORE_FORMAT,
    LayoutSource,
    ShardLayout,
    check_format,
    is_cluster,
    stored_calendar,
)

#: Upper bounds (seconds) of the first-response histogram; batch_tickets.lua uses the same.
RESPONSE_BOUNDS = (300, 900, 1800, 3600, 7200, 14400, 28800, 86400, 172800)
DEDUPE_BUCKETS = 8
#: Keys a SCAN call looks at (a page of the keyspace).
SCAN_PAGE = 5_000
#: Key families a rebuild keeps, none of them derived from the events: what notifications
#: were delivered (forgetting it would notify subscribers again) and their dead letters,
#: the HTTP write keys and their counters, workers' heartbeats, the shard count, and what
#: the replay has to reach before evaluations resume, and the erased customers' tombstones
#: (so the replay skips their events). The format is recorded anew: the replay writes the
#: store in this version's.
KEEP_ON_REBUILD = ("notify:", "keys", "ingest:", "workers", SHARDS_KEY, "replay", "forgotten")
#: A heartbeat this old belongs to a worker that died without saying so: it is dropped.
FORGET_WORKER_SECONDS = 3600
_KIND_LETTERS = {"order": "o", "login": "l", "support": "s"}
#: Cuts and joins values kept in pieces; put before every script that writes or reads them.
PIECES = files("store").joinpath("pieces.lua").read_text()


#: The batch script's parts, in the order they are joined (one chunk: they share locals).
BATCH_PARTS = ("setup", "state", "periods", "dedupe", "tickets", "fit_grid", "apply")


def writing_script(*names: str) -> str:
    """The text of a script that writes pieces: ``#!lua`` first (a full Redis then refuses
    the whole script, not a write halfway), then pieces.lua, then the script's files."""
    body = "".join(files("store").joinpath(name).read_text() for name in names)
    return "#!lua\n" + PIECES + body.removeprefix("#!lua\n")


_SCRIPT = writing_script(*(f"batch_{part}.lua" for part in BATCH_PARTS))
_READ = PIECES + files("store").joinpath("read_customers.lua").read_text()


def dedupe_id(event: Event) -> str:
    """What duplicates are recognised by: 64 bits of a digest of the event type, the
    customer and the event id, so two customers' (or two event types') ids never collide
    on purpose, and each remembered id costs the same few bytes however long it is."""
    key = f"{event.type}\x1f{event.customer_id}\x1f{event.event_id}".encode()
    digest = hashlib.blake2b(key, digest_size=8).digest()
    return base64.b64encode(digest).decode()[:11]  # 64 bits; the 12th char is padding


def accepted_record(
    event: Event,
    topic: str,
    partition: int,
    offset: int,
    stamp_ms: int | None = None,
    rates: Rates | None = None,
) -> list[str]:
    """Flatten an accepted event into the script's 16 fields.

    With ``rates`` an order's amount is converted into the reporting currency (raising
    :class:`processors.currency.UnknownCurrency` for a currency without a rate)."""
    head = [_KIND_LETTERS[event.type], topic, str(partition), str(offset)]
    ts_ms = event.ts_ms
    body = [dedupe_id(event), event.customer_id, str(ts_ms), *map(str, period_days(ts_ms))]
    stamp = "" if stamp_ms is None else str(stamp_ms)
    if isinstance(event, OrderEvent):
        if rates is None:
            amount, currency = event.amount_micros, event.currency or ""
        else:
            amount, currency = rates.reporting_micros(event), rates.currency_of(event)
        original = str(event.amount_micros)
        dims = dims_field(event)
        return [*head, *body, event.status, str(amount), currency, original, stamp, dims]
    if isinstance(event, LoginEvent):
        return [*head, *body, "", "", "", "", stamp, dims_field(event)]
    survey = event.survey or ""
    score = "" if event.score is None else str(event.score)
    return [*head, *body, event.action, event.ticket_id, survey, score, stamp, ""]


def dims_field(event: Event) -> str:
    """The record's ``dims``: the event's attributes in DIMENSIONS order, joined by \x1f."""
    carried = event.dimensions()
    if not carried:
        return ""
    return "\x1f".join(carried.get(name, "") for name in DIMENSIONS)


def rejected_record(
    topic: str, partition: int, offset: int, reason: RejectReason, stamp_ms: int | None = None
) -> list[str]:
    stamp = "" if stamp_ms is None else str(stamp_ms)
    return ["x", topic, str(partition), str(offset), *[""] * 6, reason, "", "", "", stamp, ""]


@dataclass(frozen=True, slots=True)
class BatchResult:
    applied: int
    duplicates: int
    redelivered: int
    rejected: int
    #: partitions whose records did not follow the stored offset: ``(topic, partition)``
    #: → the offset the store needs next; the worker seeks there
    gaps: dict[tuple[str, int], int] = field(default_factory=dict)
    #: ``(topic, partition, offset)`` of events set aside because their customer's stored
    #: state cannot be read; the worker sends them to the dead-letter topic
    set_aside: tuple[tuple[str, int, int], ...] = ()


@dataclass(frozen=True, slots=True)
class Stats:
    accepted: dict[str, int]
    duplicates: dict[str, int]
    rejected: dict[tuple[str, str], int]

    def seen(self, topic: str) -> int:
        """Messages of a topic that the store has taken account of, whatever their fate."""
        rejected = sum(n for (t, _), n in self.rejected.items() if t == topic)
        return self.accepted.get(topic, 0) + self.duplicates.get(topic, 0) + rejected


class Store:
    def __init__(
        self,
        redis: Redis,
        prefix: str,
        activity_kinds: Iterable[str] = ("order", "login"),
        dedupe_horizon_seconds: int = 7 * 86400,
        offsets_scope: str = "default",
        shards: int | None = None,
        writer: bool = False,
        check_format: bool = True,
    ) -> None:
        """``shards``: the configured count (``RETENTION_SHARDS``), else the recorded one.
        A ``writer`` (the worker) records the count on a new store and refuses to run
        with another. A store written in another format is refused (``check_format``,
        off only for ``retention rebuild``, which wipes it)."""
        self.redis = redis
        self.prefix = prefix
        self._layouts = LayoutSource(redis, prefix, shards, writer, check_format)
        # whoever applies batches writes the store: the format is recorded before the first
        self._format_recorded = not check_format
        self.keys = Keys(prefix)
        self.kind_letters = "".join(sorted(_KIND_LETTERS[k] for k in activity_kinds))
        # The horizon is split into buckets so that ids expire a bucket at a time.
        self.bucket_ms = max(1, dedupe_horizon_seconds * 1000 // DEDUPE_BUCKETS)
        self.offsets_scope = offsets_scope
        self._script = redis.register_script(_SCRIPT)
        self._read = redis.register_script(_READ)

    def key(self, *parts: str) -> str:
        return self.keys.key(*parts)

    async def layout(self) -> ShardLayout:
        """The shards, as configured or as the store was set up (read once)."""
        return await self._layouts.get()

    async def _hash(self, *parts: str) -> dict[str, str]:
        # the client is made with decode_responses=True, so replies are text
        return cast(dict[str, str], await self.redis.hgetall(self.key(*parts)))

    async def shard_hashes(self, family: str) -> list[dict[str, str]]:
        """A hash family kept per shard, one dict per shard (and the store's own key
        when it is not a shard's: families written outside the shards live there)."""
        homes = (await self.layout()).homes()
        replies = await asyncio.gather(*(self.redis.hgetall(home + family) for home in homes))
        return [cast(dict[str, str], reply) for reply in replies]

    async def summed(self, family: str) -> dict[str, int]:
        """A hash of counters summed over its homes; values that are not numbers are
        skipped."""
        out: dict[str, int] = {}
        for raw in await self.shard_hashes(family):
            for name, value in raw.items():
                with contextlib.suppress(ValueError):
                    out[name] = out.get(name, 0) + int(float(value))
        return out

    async def apply_batch(
        self,
        records: Sequence[Sequence[str]],
        now_ms: int | None = None,
        floors: dict[tuple[str, int], int] | None = None,
    ) -> BatchResult:
        """Apply consumed messages: the batch split by shard, one atomic script call per
        shard (concurrently), every shard told the batch's runs of offsets.

        With ``floors`` (the lowest offset the broker still holds per partition), a
        partition's records must continue the stored offset without a gap, else they are
        refused and reported in :attr:`BatchResult.gaps`; without, any offset above the
        stored one is taken (tests and tools that write records directly).
        """
        if not records:
            return BatchResult(0, 0, 0, 0)
        if not self._format_recorded:
            await check_format(self.redis, self.prefix, writer=True)
            self._format_recorded = True
        layout = await self.layout()
        now = int(time.time() * 1000) if now_ms is None else now_ms
        # each partition's runs of consecutive offsets over the whole batch, and each
        # shard's own records
        stamps: dict[str, dict[int, str]] = {}
        parts: list[list[Sequence[str]]] = [[] for _ in layout.prefixes]
        for record in records:
            tp = f"{record[TOPIC]}|{record[PARTITION]}"
            stamps.setdefault(tp, {})[int(record[OFFSET])] = record[STAMP]
            parts[layout.shard_of(record[CUSTOMER_ID])].append(record)
        ranges = {tp: _runs(by_offset) for tp, by_offset in stamps.items()}
        common = [str(now), str(self.bucket_ms), str(DEDUPE_BUCKETS), self.kind_letters]
        calendar = current_calendar()
        tail = [
            "" if floors is None else json.dumps({_tp(*tp): o for tp, o in floors.items()}),
            json.dumps(ranges),
            str(STORE_FORMAT),
            str(calendar.week_start),
            "0" if calendar.zone == "UTC" else "1",
        ]
        scope = self.offsets_scope
        replies = await asyncio.gather(
            *(
                # one JSON argument: far cheaper for the client to send than 14 a record
                self._script(
                    keys=[home + "offsets:" + scope],
                    args=[home, scope, *common, json.dumps(part), *tail],
                )
                for home, part in zip(layout.prefixes, parts, strict=True)
            )
        )
        applied, duplicates, redelivered, rejected = (
            sum(int(reply[i]) for reply in replies) for i in range(4)
        )
        gaps: dict[tuple[str, int], int] = {}
        set_aside: list[tuple[str, int, int]] = []
        for reply in replies:
            gap_list = reply[4]
            for i in range(0, len(gap_list), 2):
                tp_key, wanted = _split_tp(gap_list[i]), int(gap_list[i + 1])
                # the lowest offset any shard still needs
                gaps[tp_key] = min(wanted, gaps.get(tp_key, wanted))
            for item in reply[5]:
                where, _, at = str(item).rpartition("|")
                set_aside.append((*_split_tp(where), int(at)))
        return BatchResult(
            applied, duplicates, redelivered, rejected, gaps, tuple(sorted(set_aside))
        )

    async def corrupt_customers(self) -> dict[str, int]:
        """Customers set aside because their stored state cannot be read → when (ms)."""
        shards = await self.shard_hashes("corrupt")
        return {cid: int(at) for shard in shards for cid, at in shard.items()}

    async def read_customer(self, customer_id: str) -> CustomerState | None:
        found = await self.read_customers([customer_id])
        return found[0] if found else None

    async def read_customers(self, customer_ids: Sequence[str]) -> list[CustomerState]:
        """States of the given customers that exist, one script call per shard: a
        customer's three hashes come from one moment."""
        return [state for state, _ in await self.read_customers_with_fields(customer_ids)]

    async def _hashes(
        self, home: str, customer_ids: Sequence[str]
    ) -> list[tuple[dict[str, str], dict[str, str]]]:
        """Per customer of the shard ``home``: its fields as text (the packed state
        unpacked; empty for a customer not stored) and its tickets, in one script call
        (read_customers.lua)."""
        if not customer_ids:
            return []
        reply = await self._read(keys=[home + "ids"], args=[home, *customer_ids])
        return [(_pairs(reply[2 * n]), _pairs(reply[2 * n + 1])) for n in range(len(customer_ids))]

    async def customer_fields(self, home: str, customer_ids: Sequence[str]) -> list[dict[str, str]]:
        """Per customer of the shard ``home``, its fields as text, as
        :func:`_state_from_hashes` reads them."""
        return [fields for fields, _ in await self._hashes(home, customer_ids)]

    async def read_customers_with_fields(
        self, customer_ids: Sequence[str]
    ) -> list[tuple[CustomerState, dict[str, str]]]:
        """As :meth:`read_customers`, each state with its customer hash's fields as read
        (the evaluator also wants ``ev``, its last evaluation, and ``ix``, its number)."""
        layout = await self.layout()
        by_shard: dict[str, list[str]] = {}
        for customer_id in customer_ids:
            by_shard.setdefault(layout.prefix_of(customer_id), []).append(customer_id)
        homes = list(by_shard)
        replies = await asyncio.gather(*(self._hashes(home, by_shard[home]) for home in homes))
        found: dict[str, tuple[CustomerState, dict[str, str]]] = {}
        for home, hashes in zip(homes, replies, strict=True):
            for customer_id, (fields, tickets) in zip(by_shard[home], hashes, strict=True):
                if fields:
                    state = _state_from_hashes(customer_id, fields, tickets)
                    found[customer_id] = (state, fields)
        return [found[c] for c in customer_ids if c in found]

    async def customer_count(self) -> int:
        """Customers the store has numbered: each shard numbers its customers 0, 1, ...
        and keeps the next free number in ``ids:next``."""
        homes = (await self.layout()).prefixes
        raw = await asyncio.gather(*(self.redis.get(home + "ids:next") for home in homes))
        return sum(int(value) for value in raw if value)

    async def customer_ids(self) -> list[str]:
        """Every customer's id, sorted; walks the whole keyspace (see :meth:`shard_customers`)."""
        homes = (await self.layout()).prefixes
        found = await asyncio.gather(*(self.shard_customers(home) for home in homes))
        return sorted(customer for part in found for customer in part)

    async def shard_customers(
        self, home: str, enough: int | None = None, page: int = SCAN_PAGE
    ) -> list[str]:
        """Ids of the customers of the shard under ``home``, from a SCAN for their hashes
        (``c:<customer>``), one short command per page; with ``enough``, it stops once it
        has at least that many. SCAN walks the keyspace in the order of a hash of the key
        names, which has nothing to do with how a customer behaves: the first ones found
        are a uniform sample. A customer may come twice when Redis resizes its table during
        the walk; each is returned once."""
        found: dict[str, None] = {}
        cursor = 0
        while True:
            cursor, ids = await self.scan_customers(home, cursor, page)
            found.update(dict.fromkeys(ids))
            if cursor == 0 or (enough is not None and len(found) >= enough):
                return list(found)

    async def scan_customers(self, home: str, cursor: int, count: int) -> tuple[int, list[str]]:
        """One SCAN step over the customers of the shard under ``home``: the next cursor (0
        when the walk is over) and the ids found, on the node holding the shard. Every
        customer stored for the whole walk comes at least once."""
        match = _glob_escape(home + "c:") + "*"
        start = len(home) + 2
        redis = cast(Any, self.redis)  # a Redis or a RedisCluster
        if not is_cluster(redis):
            cursor, keys = await redis.scan(cursor, match=match, count=count)
        else:  # the node holding the shard's slot, not every node
            node = redis.get_node_from_key(home + "c:")
            cursors, keys = await redis.scan(cursor, match=match, count=count, target_nodes=node)
            cursor = next(iter(cursors.values()))
        return int(cursor), [str(key)[start:] for key in keys]

    async def memory(self) -> dict[str, tuple[int, int]]:
        """Per Redis node, keyed by its address: the memory it uses and its ``maxmemory``
        limit (0: none), in bytes, from INFO. Every node of a cluster, replicas included.
        The whole server's figures: other data kept on the same Redis counts too."""
        return {
            node: (int(info.get("used_memory", 0)), int(info.get("maxmemory", 0)))
            for node, info in (await memory_info(self.redis, every_node=True)).items()
        }

    async def stats(self) -> Stats:
        raw = await self.summed("stats")
        accepted: dict[str, int] = {}
        duplicates: dict[str, int] = {}
        rejected: dict[tuple[str, str], int] = {}
        for name, value in raw.items():
            kind, _, rest = name.partition("|")
            if kind == "accepted":
                accepted[rest] = int(value)
            elif kind == "duplicate":
                duplicates[rest] = int(value)
            elif kind == "rejected":
                topic, _, reason = rest.rpartition("|")
                rejected[(topic, reason)] = int(value)
        return Stats(accepted, duplicates, rejected)

    async def count_rejected(self, source: str, reasons: Mapping[str, int]) -> None:
        """Count messages rejected before they reached Kafka (a file's bad lines) with
        the store's own rejections, under ``source`` in place of a topic."""
        async with self.redis.pipeline(transaction=True) as pipe:
            for reason, n in reasons.items():
                pipe.hincrby(self.key("stats"), f"rejected|{source}|{reason}", n)
            await pipe.execute()

    async def counters(self, family: str) -> dict[str, int]:
        """A hash of counters another part keeps under the prefix (``notify:stats``,
        ``ingest:stats``, ``life:counts``, ...); values that are not numbers are skipped."""
        return await self.summed(family)

    async def survey_totals(self) -> dict[str, int]:
        """Over customers' latest scores: ``<survey>|sum``, ``<survey>|n``, and
        ``nps|promoters`` / ``nps|detractors``."""
        return await self.summed("surveys")

    async def attribute_customers(self) -> dict[str, dict[str, int]]:
        """Per customer attribute (country, channel, shop), customers by their latest value
        (the batch script's ``attrs:<letter>``), values no customer holds left out."""
        out: dict[str, dict[str, int]] = {}
        for name, letter in ATTRIBUTE_LETTERS.items():
            counts = await self.summed(f"attrs:{letter}")
            out[name] = {value: n for value, n in counts.items() if n > 0}
        return out

    async def response_histogram(self) -> tuple[list[tuple[float, int]], int, float]:
        """First-response times of all tickets: cumulative (upper bound s, count) buckets
        ending with +Inf, the count, and the sum in seconds."""
        raw = await self.summed("responses")
        buckets, running = [], 0
        for bound in (*RESPONSE_BOUNDS, float("inf")):
            running += raw.get("+Inf" if bound == float("inf") else str(int(bound)), 0)
            buckets.append((bound, running))
        return buckets, raw.get("count", 0), raw.get("sum_ms", 0) / 1000

    async def _offsets_and_stamps(self) -> dict[tuple[str, int], tuple[int, int | None]]:
        """Per partition, the lowest offset its shards applied and that message's stamp.

        Every shard stores each batch's last offset, so they differ only when a worker
        stopped between two shards' calls; the lowest is where reading must resume. A
        partition some shard has never stored resumes from its start."""
        homes = (await self.layout()).prefixes
        scope = self.offsets_scope
        offsets = await asyncio.gather(*(self.redis.hgetall(h + "offsets:" + scope) for h in homes))
        stamps = await asyncio.gather(*(self.redis.hgetall(h + "stamps:" + scope) for h in homes))
        lowest: dict[tuple[str, int], tuple[int, int | None]] = {}
        common = set.intersection(*(set(cast(dict[str, str], o)) for o in offsets))
        for shard_offsets, shard_stamps in zip(offsets, stamps, strict=True):
            for tp in common:
                offset, stamp = int(shard_offsets[tp]), shard_stamps.get(tp)
                key = _split_tp(tp)
                if key not in lowest or offset < lowest[key][0]:
                    lowest[key] = (offset, int(stamp) if stamp else None)
        return lowest

    async def applied_offsets(self) -> dict[tuple[str, int], int]:
        return {tp: offset for tp, (offset, _) in (await self._offsets_and_stamps()).items()}

    async def applied_stamps(self) -> dict[tuple[str, int], int]:
        """Kafka timestamps (ms) of the messages at the applied offsets."""
        found = await self._offsets_and_stamps()
        return {tp: stamp for tp, (_, stamp) in found.items() if stamp is not None}

    async def forget_offsets(self, partitions: Iterable[tuple[str, int]]) -> None:
        """Drop stored offsets that belong to an earlier incarnation of their topic."""
        fields = [_tp(*tp) for tp in partitions]
        if not fields:
            return
        for home in (await self.layout()).prefixes:
            async with self.redis.pipeline(transaction=False) as pipe:
                pipe.hdel(home + "offsets:" + self.offsets_scope, *fields)
                pipe.hdel(home + "stamps:" + self.offsets_scope, *fields)
                await pipe.execute()

    async def wipe(
        self,
        keep: Sequence[str] = KEEP_ON_REBUILD,
        page: int = 1000,
        shards: int | None = None,
        replay_to: dict[tuple[str, int], int] | None = None,
        calendar: Calendar | None = None,
    ) -> int:
        """Delete every key under the prefix but the ``keep`` families; returns the count.
        ``calendar`` is recorded for the replay (none: the wiped store's own).

        Nothing writes while it runs (the ``rebuilding`` markers: the batch script and the
        evaluation scripts refuse, the leader's timers wait), so no worker writes into a
        half-deleted store; afterwards they find the offsets gone and replay. The markers
        are removed only once every key is gone: a wipe that stops halfway (killed, Redis
        gone) leaves the store refusing writes until it is run again. ``replay_to`` (the
        topics' end offsets) is what the replay must reach before evaluations resume
        (:meth:`replaying`)."""
        homes = (await self.layout()).prefixes
        calendar = calendar or await stored_calendar(self.redis, self.prefix)
        markers = tuple(home + "rebuilding" for home in homes)
        # one marker per shard, in the shard's slot, where its scripts look
        for marker in markers:
            await self.redis.set(marker, str(int(time.time() * 1000)))
        if replay_to is not None:
            await self.redis.delete(self.key("replay"))
            if replay_to:
                flat = [part for tp, end in replay_to.items() for part in (_tp(*tp), str(end))]
                await self.redis.hset(self.key("replay"), items=flat)
        kept = (*(self.key(family) for family in keep), *markers)
        deleted = 0
        pattern = _glob_escape(self.prefix) + "*"
        async for batch in _pages(self.redis.scan_iter(match=pattern, count=page), page):
            doomed = [k for k in batch if not k.startswith(kept)]
            if not doomed:
                continue
            if is_cluster(self.redis):
                # one command per slot: a shard's keys share one, the others are few
                by_slot: dict[int, list[str]] = {}
                for name in doomed:
                    by_slot.setdefault(key_slot(name.encode()), []).append(name)
                for names in by_slot.values():
                    deleted += int(await self.redis.unlink(*names))
            else:
                deleted += int(await self.redis.unlink(*doomed))
        if shards is not None:
            # the replay fills the store in the new layout
            ShardLayout.of(self.prefix, shards)  # refuses a count out of range
            await self.redis.set(self.key(SHARDS_KEY), str(shards))
            self._layouts = LayoutSource(self.redis, self.prefix, shards, writer=False, check=False)
        await self.redis.set(self.key(FORMAT_KEY), str(STORE_FORMAT))
        await self.redis.set(self.key(CALENDAR_KEY), calendar.label)
        await self._copy_tombstones()
        for marker in markers:
            await self.redis.delete(marker)
        return deleted

    async def _copy_tombstones(self) -> None:
        """The erased customers' tombstones (``forgotten``, kept at the store's prefix)
        copied into each shard's hash, where the batch script looks (store/forget.py)."""
        source = self.key("forgotten")
        entries = cast(dict[Any, Any], await self.redis.hgetall(source))
        if not entries:
            return
        for home in (await self.layout()).prefixes:
            if home + "forgotten" != source:
                await self.redis.hset(home + "forgotten", mapping=entries)

    async def rebuilding(self) -> bool:
        """Whether a rebuild's wipe is under way, or stopped halfway (then nothing may
        write until ``retention rebuild`` runs again and finishes it)."""
        homes = (await self.layout()).prefixes
        found = await asyncio.gather(*(self.redis.exists(home + "rebuilding") for home in homes))
        return any(int(n) for n in found)

    async def replaying(self, prune: bool = True) -> dict[tuple[str, int], int]:
        """After a rebuild, or when a worker found the store behind it (a Redis rollback or
        restore): the partitions whose replay has not reached the offset the store had, →
        that offset. Evaluations wait while any is left, so no customer whose newest events
        are not replayed yet looks silent. A target reached is dropped (with ``prune``)."""
        raw = cast(dict[str, str], await self.redis.hgetall(self.key("replay")))
        if not raw:
            return {}
        applied = await self.applied_offsets()
        targets = {_split_tp(name): int(value) for name, value in raw.items()}
        left = {tp: end for tp, end in targets.items() if applied.get(tp, -1) + 1 < end}
        reached = [_tp(*tp) for tp in targets if tp not in left]
        if reached and prune:
            await self.redis.hdel(self.key("replay"), *reached)
        return left

    async def expect_replay(self, tp: tuple[str, int], end: int) -> None:
        """The store must reach offset ``end`` (exclusive) of ``tp`` again before
        evaluations resume (:meth:`replaying`); a lower target than one kept is ignored."""
        key, name = self.key("replay"), _tp(*tp)
        current = await self.redis.hget(key, name)
        if current is None or int(current) < end:
            await self.redis.hset(key, name, str(end))

    async def heartbeat(self, worker_id: str, info: dict[str, Any]) -> None:
        payload = json.dumps({**info, "at_ms": int(time.time() * 1000)})
        await self.redis.hset(self.key("workers"), worker_id, payload)

    async def forget_worker(self, worker_id: str) -> None:
        await self.redis.hdel(self.key("workers"), worker_id)

    async def workers(self, max_age_seconds: float) -> dict[str, dict[str, Any]]:
        """Workers whose last heartbeat is recent enough to call them alive."""
        now_ms = time.time() * 1000
        alive: dict[str, dict[str, Any]] = {}
        gone = []
        for worker_id, payload in (await self._hash("workers")).items():
            try:
                info = json.loads(payload)
                age_ms = now_ms - float(info.get("at_ms", 0))
            except (ValueError, TypeError, AttributeError):
                gone.append(worker_id)
                continue
            if age_ms <= max_age_seconds * 1000:
                alive[worker_id] = info
            elif age_ms > FORGET_WORKER_SECONDS * 1000:
                gone.append(worker_id)
        if gone:
            # a worker killed without its shutdown leaves its heartbeat behind
            await self.redis.hdel(self.key("workers"), *gone)
        return alive


async def _pages(keys: AsyncIterator[str], size: int) -> AsyncIterator[list[str]]:
    page: list[str] = []
    async for key in keys:
        page.append(key)
        if len(page) >= size:
            yield page
            page = []
    if page:
        yield page


def _glob_escape(text: str) -> str:
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)


def _by_currency(fields: dict[str, str], low: str, high: str) -> dict[str, int]:
    """Money sums per original currency, from their two parts (``pm:EUR``, ``ph:EUR``)."""
    return {
        name[len(low) :]: money_micros(v, fields.get(high + name[len(low) :]))
        for name, v in fields.items()
        if name.startswith(low)
    }


def _tp(topic: str, partition: int) -> str:
    return f"{topic}|{partition}"


def _split_tp(tp: str) -> tuple[str, int]:
    topic, _, partition = tp.rpartition("|")
    return topic, int(partition)


def _runs(stamps: dict[int, str]) -> list[list[int | str]]:
    """Runs of consecutive offsets, in order: ``[first, last, stamp of last]`` each."""
    runs: list[list[int | str]] = []
    for offset in sorted(stamps):
        if runs and offset == cast(int, runs[-1][1]) + 1:
            runs[-1][1], runs[-1][2] = offset, stamps[offset]
        else:
            runs.append([offset, offset, stamps[offset]])
    return runs


def _pairs(flat: Sequence[str]) -> dict[str, str]:
    return {flat[i]: flat[i + 1] for i in range(0, len(flat), 2)}


def _opt_int(value: str | None) -> int | None:
    return None if value is None else int(value)


def orders_by_day(fields: Mapping[str, str]) -> dict[int, int]:
    """Placed orders per day from a customer's fields, those named by a day number (digits
    only) counting that day's orders."""
    return {int(name): int(value) for name, value in fields.items() if name.isdigit()}


def _tickets_from_hash(raw: dict[str, str]) -> dict[str, TicketState]:
    grouped: dict[str, dict[str, str]] = {}
    for name, value in raw.items():
        ticket, _, attr = name.rpartition("|")
        grouped.setdefault(ticket, {})[attr] = value
    return {
        ticket: TicketState(
            opened_ms=_opt_int(attrs.get("o")),
            first_reply_ms=_opt_int(attrs.get("r")),
            is_open=None if "s" not in attrs else attrs["s"] == "1",
            status_ms=_opt_int(attrs.get("t")),
        )
        for ticket, attrs in grouped.items()
    }


def _same_as(f: dict[str, str], name: str, other: str, count: str | None = None) -> str | None:
    """A field the batch script leaves out of the customer hash while it equals ``other``
    (batch_state.lua, SAME_AS): there when ``count`` is above 0, or without a count,
    when ``other`` is."""
    if name in f:
        return f[name]
    if count is not None and int(f.get(count, 0)) <= 0:
        return None
    return f.get(other)


def _state_from_hashes(
    customer_id: str, f: dict[str, str], tickets: dict[str, str]
) -> CustomerState:
    def count(name: str) -> int:
        return int(f.get(name, 0))

    scores: dict[str, Score] = {
        survey: Score(int(f[survey]), int(f[survey + "t"]))
        for survey in ("nps", "csat", "ces")
        if survey in f
    }
    return CustomerState(
        customer_id=customer_id,
        first_seen_ms=_opt_int(_same_as(f, "fs", "fa")),
        first_activity_ms=_opt_int(f.get("fa")),
        last_activity_ms=_opt_int(f.get("la")),
        last_order_ms=_opt_int(_same_as(f, "lo", "la", "o")),
        last_order_micros=_opt_int(f.get("lv")),
        last_login_ms=_opt_int(_same_as(f, "ll", "la", "lg")),
        orders=count("o"),
        placed_micros=money_micros(f.get("pm"), f.get("ph")),
        refunds=count("rf"),
        refunded_micros=money_micros(f.get("rm"), f.get("rh")),
        cancelled=count("cx"),
        logins=count("lg"),
        tickets_opened=count("to"),
        tickets_resolved=count("tr"),
        open_tickets=count("ot"),
        response_ms_sum=count("rs"),
        responses=count("rn"),
        tickets_untracked=count("tu"),
        orders_by_day=orders_by_day(f),
        placed_by_currency=_by_currency(f, "pm:", "ph:"),
        refunded_by_currency=_by_currency(f, "rm:", "rh:"),
        tickets=_tickets_from_hash(tickets),
        scores=scores,
        attributes=_attributes(f),
    )


def _attributes(f: dict[str, str]) -> dict[str, Attribute]:
    out = {}
    for name, letter in ATTRIBUTE_LETTERS.items():
        first, last = f"x{letter}1", f"x{letter}2"
        if first in f:
            out[name] = Attribute(f[first], int(f[first + "t"]), f[last], int(f[last + "t"]))
    return out
