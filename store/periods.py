"""Period rows and cohorts from the store's bitmaps, and the closing of periods.

Rows are counted whenever they are read, never frozen: the bitmaps and sales hashes hold
every applied event, late and replayed ones included, so a period's row follows its data
after the period has ended. Closing a period, once the clock has passed its end (wall time
in live mode, the event-time watermark in backtests), only gives its bitmaps their exact
size.

Readers take what is stored as it is, including what an older version let in: event times
outside ``[VALID_FROM, VALID_UNTIL)`` (an order dated 9999-12-31 or 0001-01-01) are skipped
with one warning per read, never turned into dates that overflow or into hundreds of
thousands of empty periods. When the recorded first or last event time is out of range,
the span is taken from the activity and sales keys that lie in range instead (months
first, then the days of the first and last of them).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, fields
from datetime import UTC, datetime, timedelta
from importlib.resources import files
from typing import Any, cast

from redis.asyncio import Redis

from processors.metrics import Cohort, PeriodCounts, PeriodRow, row_from_counts
from processors.windows import (
    PERIOD_LETTERS,
    Period,
    epoch_day,
    next_period,
    period_start,
    periods_between,
)
from store.layout import ATTRIBUTE_LETTERS, Keys, money_micros
from store.shards import LayoutSource

logger = logging.getLogger(__name__)

#: Kept window unions, shared with the evaluator's lookback (store/evaluations.py).
WINDOW_UNION = files("store").joinpath("window_union.lua").read_text()
_COHORT_BITS = files("store").joinpath("cohort_bits.lua").read_text()
_COUNTS = WINDOW_UNION + _COHORT_BITS + files("store").joinpath("period_counts.lua").read_text()
_COHORT = _COHORT_BITS + files("store").joinpath("cohort_row.lua").read_text()
_COHORT_REVENUE = _COHORT_BITS + files("store").joinpath("cohort_revenue.lua").read_text()

#: Event times the readers take into account; anything else is left out with a warning.
VALID_FROM = datetime(1970, 1, 1, tzinfo=UTC)
VALID_UNTIL = datetime(2100, 1, 1, tzinfo=UTC)
_VALID_MS = (0, int(VALID_UNTIL.timestamp() * 1000))
#: At most this many periods compacted per ``close`` call: a backlog (data from long ago, or
#: a leader that was down) is worked off a bounded step per tick instead of in one long
#: burst of Redis work.
MAX_CLOSED_PER_CALL = 100
#: How long a churn-window union kept for a repeated reader outlives its last use. The
#: exporter uses its current periods' unions every scrape; a union left unused this long
#: (a period that ended, an exporter that stopped) goes, and is rebuilt if asked again.
WINDOW_KEEP_SECONDS = 3600
#: Periods counted per script call: bounds how long one call holds a Redis node (a call
#: ORs about W day bitmaps per period).
ROWS_PER_CALL = 32
#: Numbers period_counts.lua returns per period.
_ROW_FIELDS = 11
#: A warning of one kind is repeated at most this often by one reader.
_WARN_EVERY_SECONDS = 60.0
_DAY = timedelta(days=1)
#: The period bitmaps (docs/store.md).
_BITMAP_FAMILIES = ("act", "coh")


def valid_ms(raw: object) -> int | None:
    """A stored event time in ms, or None when it is unreadable or out of range."""
    try:
        ms = int(float(str(raw)))
    except (TypeError, ValueError, OverflowError):
        return None
    return ms if _VALID_MS[0] <= ms < _VALID_MS[1] else None


def clamp(ts: datetime) -> datetime:
    """``ts`` moved into ``[VALID_FROM, VALID_UNTIL)``."""
    return min(max(ts, VALID_FROM), VALID_UNTIL - timedelta(milliseconds=1))


def _months_in_range() -> list[datetime]:
    return periods_between(VALID_FROM, VALID_UNTIL - timedelta(days=1), "month")


class Periods:
    def __init__(self, redis: Redis, prefix: str, shards: int | None = None) -> None:
        self.redis = redis
        self.prefix = prefix
        self._layouts = LayoutSource(redis, prefix, shards, writer=False)
        self.keys = Keys(prefix)
        self._counts = redis.register_script(_COUNTS)
        self._cohort = redis.register_script(_COHORT)
        self._cohort_revenue = redis.register_script(_COHORT_REVENUE)
        self._warned: dict[str, float] = {}

    def key(self, *parts: str) -> str:
        return self.keys.key(*parts)

    async def homes(self) -> tuple[str, ...]:
        """The shards' key prefixes: every count below is summed over them."""
        return (await self._layouts.get()).prefixes

    async def breakdown(self, attribute: str, top: int | None = None) -> Breakdown:
        """The breakdown by a customer attribute (contract.events.DIMENSIONS): its values
        that some customer holds as its latest, most customers first (ties by value), the
        first ``top`` of them when given."""
        letter = ATTRIBUTE_LETTERS[attribute]
        counts: dict[str, int] = {}
        for home in await self.homes():
            raw = cast(dict[str, str], await self.redis.hgetall(f"{home}attrs:{letter}"))
            for value, n in raw.items():
                counts[value] = counts.get(value, 0) + int(n)
        ranked = sorted((v for v, n in counts.items() if n > 0), key=lambda v: (-counts[v], v))
        kept = ranked[:top] if top is not None else ranked
        return Breakdown(letter, tuple(kept), tuple(counts[v] for v in kept))

    async def _meta(self) -> tuple[str | None, str | None]:
        """The first and last event times over the shards, as stored."""
        homes = await self.homes()
        replies = await asyncio.gather(
            *(self.redis.hmget(home + "meta", ["first", "last"]) for home in homes)
        )
        firsts = [str(r[0]) for r in replies if r[0] is not None]
        lasts = [str(r[1]) for r in replies if r[1] is not None]
        return _extreme(firsts, min), _extreme(lasts, max)

    def _warn(self, kind: str, message: str, **fields: Any) -> None:
        """Log ``message`` once per read: not again for the same kind within a minute."""
        now = time.monotonic()
        if now - self._warned.get(kind, -_WARN_EVERY_SECONDS) < _WARN_EVERY_SECONDS:
            return
        self._warned[kind] = now
        logger.warning(message, extra={"key_prefix": self.prefix, **fields})

    async def last_event(self) -> datetime | None:
        """Event time of the last applied event, None when unknown or out of range."""
        last = valid_ms((await self._meta())[1])
        return None if last is None else _from_ms(last)

    async def span(self) -> tuple[datetime, datetime] | None:
        """Event times of the first and the last applied event, within the valid range.

        A bound stored out of range (by an older version that accepted any date) is
        replaced by the first or last month in range that holds activity or sales.
        """
        raw = await self._meta()
        if raw[0] is None or raw[1] is None:
            return None
        first, last = valid_ms(raw[0]), valid_ms(raw[1])
        if first is not None and last is not None:
            return _from_ms(first), _from_ms(last)
        self._warn(
            "span",
            "stored event times out of range skipped; span taken from the period keys",
            first=raw[0],
            last=raw[1],
            valid_from=VALID_FROM.isoformat(),
            valid_until=VALID_UNTIL.isoformat(),
        )
        months = await self._with_data("m", _months_in_range())
        if not months:
            return None
        # then the days of the first and the last of those months, for the exact bounds
        days = await self._with_data(
            "d",
            [
                *periods_between(months[0], next_period(months[0], "month") - _DAY, "day"),
                *periods_between(months[-1], next_period(months[-1], "month") - _DAY, "day"),
            ],
        )
        low = _from_ms(first) if first is not None else days[0]
        high = _from_ms(last) if last is not None else days[-1] + _DAY - timedelta(milliseconds=1)
        return (low, high) if low <= high else (high, low)

    async def _with_data(self, letter: str, starts: Sequence[datetime]) -> list[datetime]:
        """Those of the period ``starts`` whose activity or sales keys exist, in order."""
        found: set[datetime] = set()
        for home in await self.homes():
            async with self.redis.pipeline(transaction=False) as pipe:
                for start in starts:
                    day = str(epoch_day(start))
                    # one key per command: on a cluster the two lie in different slots
                    pipe.exists(f"{home}act:{letter}:{day}")
                    pipe.exists(f"{home}sales:{letter}:{day}")
                flags = await pipe.execute()
            found.update(
                s for i, s in enumerate(starts) if int(flags[2 * i]) + int(flags[2 * i + 1])
            )
        return sorted(found)

    async def starts(self, period: Period, through: datetime | None = None) -> list[datetime]:
        """Periods from the one of the first event through the one holding ``through``
        (default: the last event), never outside the valid range."""
        span = await self.span()
        if span is None:
            return []
        return periods_between(span[0], clamp(through or span[1]), period)

    async def row(
        self, period: Period, start: datetime, churn_days: int, cached: bool = False
    ) -> PeriodRow:
        """The period's row, counted now from the bitmaps and the sales hashes.

        ``cached`` keeps the two churn-window unions (active at the start, active at the
        end) in the store for :data:`WINDOW_KEEP_SECONDS` after each use, and brings them
        up to date by ORing in only the days whose activity count moved since: a reader
        that asks for the same period again and again (the exporter, for its periods) then
        does a few bitmap operations per call instead of 2 × W. Without it the unions are
        computed and dropped.
        """
        return (await self.rows_of(period, [start], churn_days, cached))[0]

    async def rows_of(
        self, period: Period, starts: Sequence[datetime], churn_days: int, cached: bool = False
    ) -> list[PeriodRow]:
        """The rows of the periods starting at ``starts``, each counted now from what the
        store holds: whatever was applied to a period, late or replayed, shows in its row.

        The periods go to each shard :data:`ROWS_PER_CALL` at a time, and a call works
        out each boundary's churn-window union once (a period's end is the next one's
        start), so a year of day rows costs some 366 unions rather than 730.
        """
        counted = await self._counts_of(period, starts, churn_days, cached, None)
        return [row_from_counts(start, c[0]) for start, c in zip(starts, counted, strict=True)]

    async def breakdown_of(
        self, period: Period, starts: Sequence[datetime], churn_days: int, by: Breakdown
    ) -> tuple[list[PeriodRow], dict[str | None, list[PeriodRow]]]:
        """The rows of :meth:`rows_of` for all customers, and the same rows for the
        customers of each value of ``by`` (those whose latest value it is), plus, under
        None, those with no value: what the customers of the values leave of the total."""
        counted = await self._counts_of(period, starts, churn_days, False, by)
        totals = [row_from_counts(start, c[0]) for start, c in zip(starts, counted, strict=True)]
        parts: dict[str | None, list[PeriodRow]] = {value: [] for value in by.values}
        parts[None] = []
        for start, c in zip(starts, counted, strict=True):
            for value, counts in zip(by.values, c[1:], strict=True):
                parts[value].append(row_from_counts(start, counts))
            parts[None].append(row_from_counts(start, _rest(c[0], c[1:])))
        return totals, parts

    async def _counts_of(
        self,
        period: Period,
        starts: Sequence[datetime],
        churn_days: int,
        cached: bool,
        by: Breakdown | None,
    ) -> list[list[PeriodCounts]]:
        """Per period, its counts over all customers, then (with ``by``) over each value's."""
        homes = await self.homes()
        values = by.values if by else ()
        width = _ROW_FIELDS * (1 + len(values))
        out: list[list[PeriodCounts]] = []
        for i in range(0, len(starts), ROWS_PER_CALL):
            chunk = starts[i : i + ROWS_PER_CALL]
            args = [
                PERIOD_LETTERS[period],
                str(churn_days),
                str(WINDOW_KEEP_SECONDS if cached else 0),
                by.letter if by else "",
                str(len(values)),
                *values,
            ]
            for start in chunk:
                args += [str(epoch_day(start)), str(epoch_day(next_period(start, period)))]
            # each customer lives in one shard: every count is the sum of the shards' counts
            replies = await asyncio.gather(
                *(self._counts(keys=[home + "meta"], args=[home, *args]) for home in homes)
            )
            for n in range(len(chunk)):
                out.append(
                    [
                        _period_counts(replies, width * n + _ROW_FIELDS * g)
                        for g in range(1 + len(values))
                    ]
                )
        return out

    async def rows(
        self, period: Period, churn_days: int, through: datetime | None = None
    ) -> list[PeriodRow]:
        """Every period's row from the first event's through the one holding ``through``
        (default: the last event)."""
        return await self.rows_of(period, await self.starts(period, through), churn_days)

    async def cohorts(
        self,
        period: Period,
        through: datetime | None = None,
        last: int | None = None,
        revenue: bool = True,
        mask: str = "",
    ) -> dict[str, Cohort]:
        """The cohort matrix (docs/metrics.md, Cohorts); empty cohorts are left out.

        ``last`` keeps only the newest cohorts, so that a frequent reader's cost stays
        bounded as history grows. ``revenue`` adds each cohort's revenue per period.
        ``mask`` counts only the customers of one value of a breakdown
        (:meth:`Breakdown.mask`).
        """
        starts = await self.starts(period, through)
        if last is not None:
            starts = starts[-last:]
        out: dict[str, Cohort] = {}
        homes = await self.homes()
        money = await self.cohort_revenue(period, starts, homes, mask) if revenue else None
        for i, start in enumerate(starts):
            days = [str(epoch_day(s)) for s in starts[i:]]
            args = [PERIOD_LETTERS[period], mask, *days]
            replies = await asyncio.gather(
                *(self._cohort(keys=[home + "meta"], args=[home, *args]) for home in homes)
            )
            size, *active = (sum(int(reply[i]) for reply in replies) for i in range(len(days) + 1))
            if size:
                row = None if money is None else money[i][i:]
                out[start.date().isoformat()] = Cohort(size, active, row)
        return out

    async def cohorts_by(
        self, period: Period, by: Breakdown, through: datetime | None = None
    ) -> tuple[dict[str, Cohort], dict[str | None, dict[str, Cohort]]]:
        """The cohort matrix of :meth:`cohorts` for all customers, and the same for the
        customers of each value of ``by``, plus, under None, those with no value (what the
        values leave of the total, cell by cell)."""
        total = await self.cohorts(period, through)
        parts: dict[str | None, dict[str, Cohort]] = {}
        for value in by.values:
            parts[value] = await self.cohorts(period, through, mask=by.mask(value))
        rest: dict[str, Cohort] = {}
        for name, cohort in total.items():
            mine = [p[name] for p in parts.values() if name in p]
            size = cohort.size - sum(c.size for c in mine)
            if size:
                rest[name] = Cohort(
                    size,
                    _minus(cohort.active, [c.active for c in mine]),
                    _minus(cohort.revenue_micros or [], [c.revenue_micros or [] for c in mine]),
                )
        parts[None] = rest
        return total, parts

    async def cohort_revenue(
        self, period: Period, starts: Sequence[datetime], homes: Sequence[str], mask: str = ""
    ) -> list[list[int]]:
        """Per cohort of ``starts`` (a list of consecutive periods), the revenue in micros
        of its customers in each of those periods (0 before the cohort's own), summed over
        the shards from the revenue kept per customer and day (cohort_revenue.lua)."""
        n = len(starts)
        matrix = [[0] * n for _ in range(n)]
        if not starts:
            return matrix
        end = next_period(starts[-1], period)
        days = [str(epoch_day(s)) for s in [*starts, end]]
        args = [PERIOD_LETTERS[period], mask, *days]
        replies = await asyncio.gather(
            *(self._cohort_revenue(keys=[home + "meta"], args=[home, *args]) for home in homes)
        )
        for reply in replies:
            for k in range(0, len(reply), 4):
                j, i = int(reply[k]), int(reply[k + 1])
                matrix[j][i] += money_micros(reply[k + 2], reply[k + 3])
        return matrix

    async def active(self, period: Period, at: datetime) -> int:
        """Distinct active customers in the period holding ``at`` (DAU, WAU, MAU)."""
        homes = await self.homes()  # first: a reader takes the store's calendar
        start = period_start(at, period)
        name = f"act:{PERIOD_LETTERS[period]}:{epoch_day(start)}"
        return sum(await asyncio.gather(*(self.redis.bitcount(home + name) for home in homes)))

    async def close(
        self,
        period: Period,
        clock: datetime,
        through: datetime | None = None,
        limit: int | None = MAX_CLOSED_PER_CALL,
    ) -> list[datetime]:
        """Compact the bitmaps of periods that ended at or before ``clock``
        (:meth:`_compact_ended`), oldest first, at most ``limit`` of them (None: all).

        ``through`` limits closing to periods up to the one holding it (a backtest's
        ``--until``). Returns the starts of the periods compacted by this call. No row is
        written: rows are counted when read, so data applied to a period after it ended
        (a backfill, a replay, a producer that was down) shows in it.
        """
        ended = [
            start
            for start in await self.starts(period, max(clock, through or clock))
            if next_period(start, period) <= clock and not (through and start > through)
        ]
        return await self._compact_ended(period, ended, limit)

    async def _compact_ended(
        self, period: Period, ended: Sequence[datetime], limit: int | None
    ) -> list[datetime]:
        """Compact the bitmaps of periods that have ended (:meth:`compact`), oldest first
        and at most ``limit`` of them per call, each once: ``P packed`` keeps, per period
        kind, the first day of the next period to compact. A store upgraded from a version
        that did not compact works its closed periods off this way, a step per tick."""
        key, letter = self.key("packed"), PERIOD_LETTERS[period]
        mark = await self.redis.hget(key, letter)
        todo = [start for start in ended if mark is None or epoch_day(start) >= int(mark)]
        if limit is not None:
            todo = todo[:limit]
        for start in todo:
            await self.compact(period, start)
        if todo:
            await self.redis.hset(key, letter, str(epoch_day(next_period(todo[-1], period))))
        return todo

    async def compact(self, period: Period, start: datetime) -> None:
        """Give the period's bitmaps the room their bits take and no more.

        A bitmap grows as customers with higher numbers join it, and Redis grows a string
        by up to twice what it needs (room for the next write), so a period's bitmaps
        keep up to double their size once it is over. ``BITOP OR`` of a bitmap with
        itself writes it again at its exact length; late bits still land in it afterwards.
        Done once per period, once it has ended (:meth:`close`)."""
        suffix = f"{PERIOD_LETTERS[period]}:{epoch_day(start)}"
        keys = [
            f"{home}{family}:{suffix}" for home in await self.homes() for family in _BITMAP_FAMILIES
        ]
        # one call per key: a cluster client does not pipeline BITOP
        await asyncio.gather(*(self.redis.bitop("OR", key, key) for key in keys))

    async def watermark(self, scope: str, topics: dict[str, int]) -> datetime | None:
        """The event-time watermark: the oldest of the partitions' newest event times.

        ``topics`` maps each source topic to its partition count. A topic that carries no
        data at all is idle and does not hold the watermark back; one that carries data
        counts only once every one of its partitions has some.
        """
        newest: dict[str, str] = {}
        for home in await self.homes():
            shard = cast(dict[str, str], await self.redis.hgetall(f"{home}newest:{scope}"))
            for tp, ts in shard.items():
                # a partition's newest time is the newest any shard applied
                if tp not in newest or _as_float(ts) > _as_float(newest[tp]):
                    newest[tp] = ts
        by_topic: dict[str, list[int]] = {}
        skipped = 0
        for tp, ts in newest.items():
            topic, _, _ = tp.rpartition("|")
            ms = valid_ms(ts)
            if ms is None:
                # as if the partition had no data: the watermark rather waits than jumps
                skipped += 1
                continue
            by_topic.setdefault(topic, []).append(ms)
        if skipped:
            self._warn("newest", "newest event times out of range skipped", count=skipped)
        lows: list[int] = []
        for topic, times in by_topic.items():
            if len(times) < topics.get(topic, 1):
                return None
            lows.append(min(times))
        return _from_ms(min(lows)) if lows else None


@dataclass(frozen=True)
class Breakdown:
    """A breakdown by a customer attribute: its letter in the store (``c`` country,
    ``h`` channel, ``s`` shop) and the values to count, each over the customers whose
    latest value it is."""

    letter: str
    values: tuple[str, ...]
    #: customers per value, in the same order
    sizes: tuple[int, ...] = ()

    def mask(self, value: str) -> str:
        """The key (after the shard's prefix) of the bitmap of the value's customers."""
        return f"dim:{self.letter}:{value}"


def _period_counts(replies: Sequence[Sequence[Any]], at: int) -> PeriodCounts:
    """The counts at ``at`` in period_counts.lua's replies, summed over the shards."""
    s, e, s_and_e, new, orders, pm, ph, rm, rh, buyers, repeaters = (
        sum(int(reply[at + k]) for reply in replies) for k in range(_ROW_FIELDS)
    )
    return PeriodCounts(
        start=s,
        end=e,
        new=new,
        lost=s - s_and_e,
        # N and S never meet (a new customer had no activity before the start), so
        # E \ S \ N has |E| - |E ∩ S| - |N| members
        reactivated=e - s_and_e - new,
        orders=orders,
        placed_micros=money_micros(pm, ph),
        refunded_micros=money_micros(rm, rh),
        buyers=buyers,
        repeaters=repeaters,
    )


def _rest(total: PeriodCounts, parts: Sequence[PeriodCounts]) -> PeriodCounts:
    """What ``parts`` (customers of disjoint groups) leave of ``total``: every count is a
    count of customers or a sum over them, so the rest is the difference, field by field."""
    return PeriodCounts(
        **{
            f.name: getattr(total, f.name) - sum(getattr(p, f.name) for p in parts)
            for f in fields(PeriodCounts)
        }
    )


def holds_nothing(rows: Sequence[PeriodRow]) -> bool:
    """Whether rows of a breakdown's group count no customer and no money: the group of
    customers without a value, when every customer has one."""
    return not any(
        r.start_customers or r.end_customers or r.orders or r.revenue_micros for r in rows
    )


def _minus(total: Sequence[int], parts: Sequence[Sequence[int]]) -> list[int]:
    """``total`` less the sum of ``parts``, element by element (a missing one counts 0)."""
    return [t - sum(p[i] for p in parts if i < len(p)) for i, t in enumerate(total)]


def _as_float(raw: str) -> float:
    try:
        return float(raw)
    except ValueError:
        return float("-inf")


def _extreme(values: list[str], pick: Callable[[Iterable[float]], float]) -> str | None:
    """The smallest or largest of stored times, as stored; unreadable ones only when
    nothing else is there (the readers then warn about them)."""
    numbers = {_as_float(v): v for v in values if _as_float(v) != float("-inf")}
    if numbers:
        return numbers[pick(numbers)]
    return values[0] if values else None


def _from_ms(ms: int) -> datetime:
    return VALID_FROM + timedelta(milliseconds=ms)
