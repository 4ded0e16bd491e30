"""Where each customer's keys live: the store's shards.

Customers are spread over a fixed number of shards, chosen when the store is set up
(``RETENTION_SHARDS``) and recorded under ``<prefix>shards``. Every key the batch script
writes for a customer, and every total it keeps across customers (period bitmaps, sales,
stats, offsets, the due index), lives under its shard's own prefix; readers sum or merge
the shards. Each customer lives in exactly one shard, so the sums are exact.

A shard's prefix carries a Redis Cluster hash tag (``rt:{3.17}:`` for shard 3), so all of
a shard's keys fall in one slot and its script can run on a cluster node. The tags are
picked so that shard ``i`` of ``n`` lands in the ``i``-th ``n``-th of the slot range:
a cluster whose nodes own equal ranges of slots gets equal numbers of shards. With one
shard on a single Redis the prefix is the store's prefix itself, the layout of stores
made before shards existed, which keeps working unchanged.
"""

from __future__ import annotations

import functools
import zlib
from dataclasses import dataclass, field

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.crc import REDIS_CLUSTER_HASH_SLOTS, key_slot

from processors.windows import UTC_CALENDAR, Calendar, calendar_of, current_calendar, use_calendar

#: Shards a store may have; more only add calls per batch.
MAX_SHARDS = 1024
#: Shards of a new store on a Redis Cluster when none are configured: a few per node of
#: a small cluster, and room to add nodes.
DEFAULT_CLUSTER_SHARDS = 12
#: The key (under the store's prefix) recording the store's shard count.
SHARDS_KEY = "shards"
#: The key recording the format the store is written in, and this version's format:
#: 2 = customers packed in pieces, money sums in two parts (docs/store.md). A store that
#: holds data but no format was written before formats were recorded: format 1.
FORMAT_KEY = "format"
STORE_FORMAT = 2


class LayoutMismatch(RuntimeError):
    """The store cannot be used as configured: its shard count or its format differ."""


class FormatMismatch(LayoutMismatch):
    """The store is written in a format this version does not know."""


async def check_format(redis: Redis | RedisCluster, prefix: str, writer: bool) -> None:
    """Refuse a store written in another format (by another version); a writer records
    this version's format in a new store (the format is recorded before anything else)."""
    raw = await redis.get(prefix + FORMAT_KEY)
    if raw is None and await _holds_data(redis, prefix):
        # a writer records the format before anything else, so another process that set
        # the store up between the two reads has recorded it by now: read it again
        raw = await redis.get(prefix + FORMAT_KEY) or "1"
    elif raw is None and writer:
        await redis.set(prefix + FORMAT_KEY, str(STORE_FORMAT), nx=True)
        raw = await redis.get(prefix + FORMAT_KEY)
    if isinstance(raw, bytes):
        raw = raw.decode()
    if raw is not None and str(raw) != str(STORE_FORMAT):
        raise FormatMismatch(
            f"the store under {prefix!r} is in format {raw}, and this version reads format "
            f"{STORE_FORMAT}: run the version that wrote it, or rebuild the store from the "
            "topics in this version's format with `retention rebuild` (stop the workers of "
            "the other version first)"
        )
    await check_calendar(redis, prefix, writer)


#: The key recording the calendar periods are counted in (processors/windows.py,
#: ``Calendar.label``); a store that holds data without it was written in UTC.
CALENDAR_KEY = "calendar"


class CalendarMismatch(LayoutMismatch):
    """The store counts its periods in another timezone or with another week start."""


async def check_calendar(redis: Redis | RedisCluster, prefix: str, writer: bool) -> None:
    """A writer records the process's calendar in a new store, and refuses a store that
    counts its periods in another one: the day, week and month keys of what it holds
    would mean other dates. A reader counts in the store's calendar, whatever its own; in a
    store that holds nothing yet (new, or wiped for a rebuild) it keeps its own."""
    raw = await redis.get(prefix + CALENDAR_KEY)
    if raw is None and not await _holds_data(redis, prefix):
        if not writer:
            return
        await redis.set(prefix + CALENDAR_KEY, current_calendar().label, nx=True)
        raw = await redis.get(prefix + CALENDAR_KEY)
    if isinstance(raw, bytes):
        raw = raw.decode()
    stored = UTC_CALENDAR if raw is None else _calendar(str(raw))
    if stored == current_calendar():
        return
    if writer:
        raise CalendarMismatch(
            f"the store under {prefix!r} counts its periods in {stored.describe()}, and "
            f"this worker is set to {current_calendar().describe()} (RETENTION_TIMEZONE, "
            "RETENTION_WEEK_START): set them as the store was written, or stop the workers "
            "and rebuild the store from the topics with `retention rebuild`, which counts "
            "everything again in the new calendar"
        )
    use_calendar(stored)


async def stored_calendar(redis: Redis | RedisCluster, prefix: str) -> Calendar:
    """The calendar the store under ``prefix`` counts its periods in (UTC when none is
    recorded: a store written before calendars were)."""
    raw = await redis.get(prefix + CALENDAR_KEY)
    if isinstance(raw, bytes):
        raw = raw.decode()
    return UTC_CALENDAR if raw is None else _calendar(str(raw))


def _calendar(label: str) -> Calendar:
    zone, _, week = label.partition("|")
    return calendar_of(zone, int(week or 0))


async def _holds_data(redis: Redis | RedisCluster, prefix: str) -> bool:
    """Whether a store without a recorded format was set up by an earlier version: its
    shard count is recorded, or (before shards) its customer numbers under the prefix."""
    return bool(await redis.exists(prefix + SHARDS_KEY) or await redis.exists(prefix + "ids:next"))


def shard_of(customer_id: str, count: int) -> int:
    """The shard a customer belongs to, stable across processes and versions."""
    if count == 1:
        return 0
    return zlib.crc32(customer_id.encode()) % count


def _tag(shard: int, count: int) -> str:
    low = shard * REDIS_CLUSTER_HASH_SLOTS // count
    high = (shard + 1) * REDIS_CLUSTER_HASH_SLOTS // count
    n = 0
    while True:
        tag = f"{shard}.{n}"
        if low <= key_slot(tag.encode()) < high:
            return tag
        n += 1


@functools.cache
def _prefixes(prefix: str, count: int, tagged: bool) -> tuple[str, ...]:
    if not tagged:
        return (prefix,)
    return tuple(f"{prefix}{{{_tag(s, count)}}}:" for s in range(count))


@dataclass(frozen=True, slots=True)
class ShardLayout:
    prefix: str
    count: int = 1
    #: whether shard prefixes carry hash tags: always with more than one shard, and on a
    #: cluster; one untagged shard is the layout of a single Redis without shards
    tagged: bool = False
    #: each shard's key prefix, by shard number
    prefixes: tuple[str, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not 1 <= self.count <= MAX_SHARDS:
            raise ValueError(f"shards must be between 1 and {MAX_SHARDS}, not {self.count}")
        if "{" in self.prefix or "}" in self.prefix:
            raise ValueError("the key prefix may not contain braces (Redis Cluster hash tags)")
        object.__setattr__(self, "prefixes", _prefixes(self.prefix, self.count, self.tagged))

    @classmethod
    def of(cls, prefix: str, count: int, cluster: bool = False) -> ShardLayout:
        return cls(prefix, count, tagged=cluster or count > 1)

    def shard_of(self, customer_id: str) -> int:
        return shard_of(customer_id, self.count)

    def prefix_of(self, customer_id: str) -> str:
        return self.prefixes[self.shard_of(customer_id)]

    def homes(self) -> tuple[str, ...]:
        """Every prefix a family of keys may live under: the shards' and the store's own
        (global keys), each once."""
        return tuple(dict.fromkeys((self.prefix, *self.prefixes)))


def is_cluster(redis: object) -> bool:
    """Whether the client talks to a Redis Cluster (and so needs hash-tagged shards)."""
    return isinstance(redis, RedisCluster)


class LayoutSource:
    """The layout one reader or writer uses, looked up once it is known.

    A writer records it (:func:`setup_layout`); a reader takes the configured count or
    the recorded one, and keeps asking while neither exists (a store not set up yet),
    so it never holds on to a guess."""

    def __init__(
        self,
        redis: Redis | RedisCluster,
        prefix: str,
        configured: int | None,
        writer: bool,
        check: bool = True,
    ) -> None:
        self.redis, self.prefix, self.configured, self.writer = redis, prefix, configured, writer
        self._known: ShardLayout | None = None
        #: whether the store's format is checked (:func:`check_format`) before first use
        self._check = check

    async def get(self) -> ShardLayout:
        if self._known is not None:
            return self._known
        if self._check:
            await check_format(self.redis, self.prefix, self.writer)
            self._check = False
        if self.writer:
            self._known = await setup_layout(self.redis, self.prefix, self.configured)
            return self._known
        count = self.configured or await stored_count(self.redis, self.prefix)
        layout = ShardLayout.of(self.prefix, count or 1, is_cluster(self.redis))
        if count:
            self._known = layout
        return layout


async def stored_count(redis: Redis | RedisCluster, prefix: str) -> int | None:
    raw = await redis.get(prefix + SHARDS_KEY)
    return None if raw is None else int(raw)


async def setup_layout(
    redis: Redis | RedisCluster, prefix: str, configured: int | None = None
) -> ShardLayout:
    """The layout a writer uses, recorded on first use; a configured count that differs
    from the recorded one is refused, since customers would be looked for in the wrong
    shards. A store holding data from before shards were recorded has one shard."""
    cluster = is_cluster(redis)
    recorded = await stored_count(redis, prefix)
    if recorded is None:
        legacy = not cluster and await redis.exists(prefix + "ids:next")
        recorded = 1 if legacy else configured or (DEFAULT_CLUSTER_SHARDS if cluster else 1)
        await redis.set(prefix + SHARDS_KEY, str(recorded), nx=True)
        recorded = await stored_count(redis, prefix) or recorded
    if configured is not None and configured != recorded:
        raise LayoutMismatch(
            f"the store under {prefix!r} has {recorded} shard(s), not {configured}: "
            "leave RETENTION_SHARDS unset, or rebuild the store with the new count "
            "(retention rebuild --shards N)"
        )
    return ShardLayout.of(prefix, recorded, cluster)
