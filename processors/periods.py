"""Period rows and cohorts from the store's bitmaps, and the closing of periods.

The counts are exact whenever they are read: the bitmaps hold every applied activity,
late ones included. Closing a period writes its row once (``HSETNX``) for the record, when
the clock has passed the period's end; the clock is wall time in live mode and the
event-time watermark in backtests.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from importlib.resources import files
from typing import cast

from redis.asyncio import Redis

from processors.metrics import Cohort, PeriodCounts, PeriodRow, row_from_counts
from processors.windows import (
    PERIOD_LETTERS,
    Period,
    epoch_day,
    from_epoch_day,
    next_period,
    period_start,
    periods_between,
)

_COUNTS = files("processors").joinpath("period_counts.lua").read_text()
_COHORT = files("processors").joinpath("cohort_row.lua").read_text()


class Periods:
    def __init__(self, redis: Redis, prefix: str) -> None:
        self.redis = redis
        self.prefix = prefix
        self._counts = redis.register_script(_COUNTS)
        self._cohort = redis.register_script(_COHORT)

    def key(self, *parts: str) -> str:
        return self.prefix + ":".join(parts)

    async def span(self) -> tuple[datetime, datetime] | None:
        """Event times of the first and the last applied event."""
        first, last = await self.redis.hmget(self.key("meta"), ["first", "last"])
        if first is None or last is None:
            return None
        return _from_ms(int(first)), _from_ms(int(last))

    async def starts(self, period: Period, through: datetime | None = None) -> list[datetime]:
        """Periods from the one of the first event through the one holding ``through``
        (default: the last event)."""
        span = await self.span()
        if span is None:
            return []
        return periods_between(span[0], through or span[1], period)

    async def row(self, period: Period, start: datetime, churn_days: int) -> PeriodRow:
        stop = next_period(start, period)
        args = [
            self.prefix,
            PERIOD_LETTERS[period],
            str(epoch_day(start)),
            str(epoch_day(stop)),
            str(churn_days),
        ]
        s, e, s_and_e, n, orders, placed, refunded, buyers, repeaters = await self._counts(
            args=args
        )
        counts = PeriodCounts(
            start=int(s),
            end=int(e),
            new=int(n),
            lost=int(s) - int(s_and_e),
            # N and S never meet (a new customer had no activity before the start), so
            # E \ S \ N has |E| - |E ∩ S| - |N| members
            reactivated=int(e) - int(s_and_e) - int(n),
            orders=int(orders),
            placed_micros=int(placed),
            refunded_micros=int(refunded),
            buyers=int(buyers),
            repeaters=int(repeaters),
        )
        return row_from_counts(start, counts)

    async def rows(
        self, period: Period, churn_days: int, through: datetime | None = None
    ) -> list[PeriodRow]:
        return [await self.row(period, s, churn_days) for s in await self.starts(period, through)]

    async def cohorts(
        self, period: Period, through: datetime | None = None, last: int | None = None
    ) -> dict[str, Cohort]:
        """The cohort matrix (METRICS.md, Cohorts); empty cohorts are left out.

        ``last`` keeps only the newest cohorts, so that a frequent reader's cost stays
        bounded as history grows.
        """
        starts = await self.starts(period, through)
        if last is not None:
            starts = starts[-last:]
        out: dict[str, Cohort] = {}
        for i, start in enumerate(starts):
            days = [str(epoch_day(s)) for s in starts[i:]]
            size, *active = await self._cohort(args=[self.prefix, PERIOD_LETTERS[period], *days])
            if int(size):
                out[start.date().isoformat()] = Cohort(int(size), [int(a) for a in active])
        return out

    async def active(self, period: Period, at: datetime) -> int:
        """Distinct active customers in the period holding ``at`` (DAU, WAU, MAU)."""
        start = period_start(at, period)
        key = self.key("act", PERIOD_LETTERS[period], str(epoch_day(start)))
        return int(await self.redis.bitcount(key))

    def _rows_key(self, period: Period, churn_days: int) -> str:
        return self.key("rows", PERIOD_LETTERS[period], str(churn_days))

    async def close(
        self, period: Period, churn_days: int, clock: datetime, through: datetime | None = None
    ) -> list[PeriodRow]:
        """Write the row of every period that ended at or before ``clock`` and has none.

        ``through`` limits closing to periods up to the one holding it (a backtest's
        ``--until``). Returns the rows written by this call; a row already written stays.
        """
        key = self._rows_key(period, churn_days)
        done = set(cast(list[str], await self.redis.hkeys(key)))
        written: list[PeriodRow] = []
        for start in await self.starts(period, max(clock, through or clock)):
            if next_period(start, period) > clock or (through and start > through):
                break
            if start.date().isoformat() in done:
                continue
            row = await self.row(period, start, churn_days)
            if await self.redis.hsetnx(key, row.period, json.dumps(row.as_dict())):
                written.append(row)
        return written

    async def latest_closed(self, period: Period, churn_days: int, n: int) -> list[PeriodRow]:
        """The ``n`` newest closed rows, oldest first, reading only those values."""
        key = self._rows_key(period, churn_days)
        names = sorted(cast(list[str], await self.redis.hkeys(key)))[-n:]
        if not names:
            return []
        raw = cast(list[str | None], await self.redis.hmget(key, names))
        return [PeriodRow(**json.loads(v)) for v in raw if v is not None]

    async def closed_rows(self, period: Period, churn_days: int) -> list[PeriodRow]:
        raw = cast(dict[str, str], await self.redis.hgetall(self._rows_key(period, churn_days)))
        return [PeriodRow(**json.loads(raw[k])) for k in sorted(raw)]

    async def watermark(self, scope: str, topics: dict[str, int]) -> datetime | None:
        """The event-time watermark: the oldest of the partitions' newest event times.

        ``topics`` maps each source topic to its partition count. A topic that carries no
        data at all is idle and does not hold the watermark back; one that carries data
        counts only once every one of its partitions has some.
        """
        newest = cast(dict[str, str], await self.redis.hgetall(self.key("newest", scope)))
        by_topic: dict[str, list[int]] = {}
        for tp, ts in newest.items():
            topic, _, _ = tp.rpartition("|")
            by_topic.setdefault(topic, []).append(int(ts))
        lows: list[int] = []
        for topic, times in by_topic.items():
            if len(times) < topics.get(topic, 1):
                return None
            lows.append(min(times))
        return _from_ms(min(lows)) if lows else None


def _from_ms(ms: int) -> datetime:
    return from_epoch_day(0) + timedelta(milliseconds=ms)
