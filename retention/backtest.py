"""``retention backtest``: replay a history file through the live pipeline and report.

The events, sorted by event time, become the batch script's records as a worker builds
them from Kafka messages, and go through the same script into a Redis of the backtest's
own (or, with ``REDIS_URL``, under a key prefix of its own); the report is read from what
the store holds, with the readers and the fit the live tracker uses. Nothing is counted
on a side path, so a backtest checks the live numbers themselves. Kafka and the worker's
consumer are left out: they only carry the bytes, and starting them took most of a
backtest's time.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import csv
import gc
import importlib
import json
import logging
import re
import tempfile
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from redis.asyncio import Redis

from contract.events import (
    MICROS,
    Event,
    InvalidEvent,
    OrderEvent,
    Rejection,
    build_event,
    parse_event,
)
from processors.currency import Rates, UnknownCurrency
from processors.lifecycle import lifecycle_policy
from processors.state import to_public
from processors.windows import (
    PERIODS,
    Period,
    local_date,
    local_day,
    local_midnight,
    next_period,
    period_start,
)
from retention import runtime
from retention.cdnow import read_cdnow
from retention.config import ActivityKind, Settings
from store.connect import connect, eviction_policies
from store.periods import Periods, holds_nothing
from store.record import TOPIC
from store.store import BatchResult, Store, accepted_record, rejected_record
from streams.risk_file import load_policy
from streams.topics import Topics

if TYPE_CHECKING:
    from processors.forecast import Fit, Outlook

logger = logging.getLogger(__name__)

#: What the fits and the report need, numpy and scipy among them: slow to import, so a
#: backtest imports them while Redis applies the events rather than before it starts.
#: The functions that use them import them where they are used.
MODELLING = (
    "processors.alive_models",
    "processors.evaluator",
    "processors.forecast",
    "store.evaluations",
    "store.models",
)

Format = Literal["cdnow", "jsonl"]
Line = tuple[int, Event | Rejection]


@dataclass(frozen=True)
class Options:
    path: Path
    format: Format
    period: Period
    churn_days: int
    activity_kinds: tuple[ActivityKind, ...]
    report: Path
    until: date | None = None
    customers: Path | None = None
    #: hold this many last days out and check the predictions made before them
    holdout_days: int | None = None
    #: or: predictions made at the end of ``until``, checked against the days through this
    holdout_until: date | None = None
    #: the holdout test's row per customer (CSV), from which its scores can be recomputed
    holdout_customers: Path | None = None
    #: rows and cohorts also per value of this customer attribute (country, channel, shop)
    by: str | None = None


def parse_duration_days(text: str) -> int:
    """``90d``, ``12w`` or a bare number of days; the churn window is whole days."""
    match = re.fullmatch(r"\s*(\d+)\s*([dw]?)\s*", text)
    if not match or int(match.group(1)) < 1:
        raise ValueError(f"not a duration in days: {text!r} (try 90d or 12w)")
    return int(match.group(1)) * (7 if match.group(2) == "w" else 1)


def read_lines(path: Path, fmt: Format) -> Iterator[Line]:
    if fmt == "cdnow":
        for line_no, item in read_cdnow(path):
            if isinstance(item, Rejection):
                yield line_no, item
                continue
            try:
                yield line_no, build_event(item)
            except InvalidEvent as exc:
                yield line_no, exc.rejection
        return
    with path.open("rb") as handle:
        for line_no, raw in enumerate(handle, start=1):
            if raw.strip():
                yield line_no, parse_event(raw)


def load(options: Options) -> tuple[list[Event], list[tuple[int, Rejection]]]:
    """Accepted events in event-time order (up to ``--until``), and the bad lines.

    Sorting lets every partition advance in event time, so the watermark means what it
    says; the sort is stable, so a customer's events keep their file order on ties.
    """
    events: list[Event] = []
    bad: list[tuple[int, Rejection]] = []
    end = _until_end(options.until)
    for line_no, item in read_lines(options.path, options.format):
        if isinstance(item, Rejection):
            bad.append((line_no, item))
        elif end is None or item.ts < end:
            events.append(item)
    events.sort(key=lambda e: e.ts_ms)
    return events, bad


def load_all(options: Options) -> tuple[list[Event], list[tuple[int, Rejection]], list[Event]]:
    """:func:`load` for the replay, and with ``--holdout-until`` the events through it
    too (else none): the file is read once for both."""
    if options.holdout_until is None or options.until is None:
        return (*load(options), [])
    later, bad = load(replace(options, until=options.holdout_until))
    # sorted by time, so the events through --until are a head of those through the holdout
    end = _until_end(options.until)
    assert end is not None
    cut = bisect.bisect_left(later, int(end.timestamp() * 1000), key=lambda e: e.ts_ms)
    return later[:cut], bad, later


def _until_end(until: date | None) -> datetime | None:
    """The end of the day ``until``: the next local midnight (RETENTION_TIMEZONE)."""
    if until is None:
        return None
    return local_midnight(until + timedelta(days=1))


def last_instant(options: Options, events: list[Event]) -> datetime | None:
    """The instant whose period ends the report: ``--until`` or the last event."""
    end = _until_end(options.until)
    if end is not None:
        return end - timedelta(microseconds=1)
    return events[-1].ts if events else None


#: Events per call of the batch script. A worker's batches are smaller (a Kafka fetch);
#: here larger ones mean fewer round trips, and the script's cost per event is the same.
REPLAY_BATCH = 5000
#: The offsets the backtest's records carry are its own: one partition per topic, the
#: events numbered in the order they are applied.
REPLAY_PARTITION = 0
REPLAY_SCOPE = "backtest"


class Unconverted(Rates):
    """Rates for a history whose every order is in the reporting currency: nothing to
    convert, so the ECB's rates (a second or so to load) are not read."""

    def __init__(self, reporting: str, default: str) -> None:
        self.reporting = reporting
        self.default = default


def rates_for(settings: Settings, events: list[Event]) -> Rates:
    """The worker's currency conversion, loaded only when some order needs it."""
    reporting, default = settings.reporting_currency, settings.default_currency
    if all(not isinstance(e, OrderEvent) or (e.currency or default) == reporting for e in events):
        return Unconverted(reporting, default)
    return Rates(reporting, default, settings.rates_file)


class Backtest:
    def __init__(self, settings: Settings, options: Options) -> None:
        self.options = options
        tag = uuid.uuid4().hex[:8]
        # A configured Redis may hold live data: keep the backtest's keys apart.
        self.settings = settings.model_copy(
            update={
                "topic_prefix": f"{settings.topic_prefix}backtest-{tag}-",
                "key_prefix": f"{settings.key_prefix}backtest-{tag}:",
                "activity_kinds": options.activity_kinds,
                "churn_after_days": options.churn_days,
            }
        )
        self.group = runtime.ProcessGroup()
        #: Redis memory the run added, per tracked customer (state, bitmaps, dedupe ids)
        self.bytes_per_customer: float | None = None

    def run(self) -> dict[str, Any]:
        with (
            tempfile.TemporaryDirectory(prefix="retention-backtest-") as tmp,
            no_cycle_collection(),
        ):
            work = Path(tmp)
            try:
                # the file is read while the embedded Redis starts
                with ThreadPoolExecutor(max_workers=1) as pool:
                    starting = None
                    if not self.settings.redis_url:
                        starting = pool.submit(
                            runtime.start_redis, work / "redis", work, durable=False
                        )
                    try:
                        loaded = load_all(self.options)
                    finally:
                        if starting is not None:
                            process, url = starting.result()
                            self.group.add(process)
                            self.settings = self.settings.model_copy(update={"redis_url": url})
                return asyncio.run(self._run(*loaded))
            finally:
                self.group.stop()

    async def _run(
        self, events: list[Event], bad: list[tuple[int, Rejection]], later: list[Event]
    ) -> dict[str, Any]:
        s, o = self.settings, self.options
        assert s.redis_url
        logger.info("backtest input read", extra={"events": len(events), "bad": len(bad)})
        last = last_instant(o, events)
        loop = asyncio.get_running_loop()
        redis = connect(s.redis_url, decode_responses=True)
        # what needs the events alone is worked out while Redis applies them
        with ThreadPoolExecutor(max_workers=1) as aside:
            aside.submit(import_modelling)
            spend = None
            if last is not None:
                spend = loop.run_in_executor(aside, repeat_spend, events, local_date(last))
            holdout = None
            if o.holdout_until is not None or o.holdout_days is not None:
                holdout = loop.run_in_executor(aside, self._holdout, events, later, last)
            try:
                before = await used_memory(redis)
                store = await self._replay(redis, events)
                periods = Periods(redis, s.key_prefix, s.shards)
                if last is not None:
                    # the clock moves to the end of the last period: every period is
                    # closed, as the leader closes them live
                    for period in PERIODS:
                        end = next_period(period_start(last, period), period)
                        await periods.close(period, clock=end, through=last, limit=None)
                customers = await store.customer_count()
                if customers:
                    self.bytes_per_customer = (await used_memory(redis) - before) / customers
                report, model = await self._report(store, periods, last, bad, spend)
                if holdout is not None and (found := await holdout) is not None:
                    report["holdout"] = found
                if o.customers is not None and last is not None and spend is not None:
                    at = local_midnight(local_date(last) + timedelta(days=1))
                    await write_customers(store, o.customers, model, at, s, await spend)
                logger.info("backtest report ready")
                return report
            finally:
                await redis.aclose()

    async def _replay(self, redis: Redis, events: list[Event]) -> Store:
        """A store of the backtest's own, the events applied to it."""
        s = self.settings
        await refuse_eviction(redis)
        store = Store(
            redis,
            s.key_prefix,
            s.activity_kinds,
            dedupe_horizon_seconds=s.dedupe_horizon_seconds,
            offsets_scope=REPLAY_SCOPE,
            shards=s.shards,
            writer=True,
        )
        await store.layout()
        await replay(store, Topics.from_settings(s), events, rates_for(s, events))
        logger.info("backtest input applied")
        return store

    async def _report(
        self,
        store: Store,
        periods: Periods,
        last: datetime | None,
        bad: list[tuple[int, Rejection]],
        spend: asyncio.Future[dict[str, float]] | None,
    ) -> tuple[dict[str, Any], Fit | None]:
        o = self.options
        rows: list[dict[str, Any]] = []
        if last is not None:
            rows = [r.as_dict() for r in await periods.rows(o.period, o.churn_days, last)]
        stats = await store.stats()
        # the models as of the end of the data: the --until day, or the last event's day
        model, bgnbd = None, None
        if last is not None and spend is not None:
            model, bgnbd = await self._fit(store, last, spend)
        report = {
            "events": sum(stats.accepted.values()),
            "rejected": sum(stats.rejected.values()) + len(bad),
            "customers": await store.customer_count(),
            "period": o.period,
            "churn_after_days": o.churn_days,
            "activity_kinds": list(o.activity_kinds),
            "periods": rows,
            "cohorts": {k: c.as_dict() for k, c in (await periods.cohorts(o.period, last)).items()},
            "bgnbd": bgnbd,
            "alive_model": None if model is None else model.alive_block(),
            "gamma_gamma": None if model is None or model.spend is None else model.spend.as_dict(),
        }
        if o.by is not None and last is not None:
            report["breakdown"] = await breakdown_report(periods, o, last)
        return report, model

    def _holdout(
        self, events: list[Event], later: list[Event], last: datetime | None
    ) -> dict[str, Any] | None:
        """The calibration / holdout test of the predictions (processors/holdout.py), and
        its customers file when asked for: ``--until`` with ``--holdout-until`` on the
        events through the latter (``later``), or ``--holdout DAYS`` on the last days of
        ``events``."""
        from processors.forecast import model_options
        from processors.holdout import cutoff_for, holdout_report

        o = self.options
        if o.holdout_until is not None and o.until is not None:
            events = later
            cutoff = local_midnight(o.until + timedelta(days=1))
            days = (o.holdout_until - o.until).days
        elif o.holdout_days is not None and last is not None:
            cutoff, days = cutoff_for(last, o.holdout_days), o.holdout_days
        else:
            return None
        policy = load_policy(self.settings.risk_file)
        lifecycle = lifecycle_policy(self.options.churn_days, policy.timers)
        result = holdout_report(
            events,
            cutoff,
            days,
            model_options(self.settings),
            policy,
            lifecycle,
            frozenset(self.options.activity_kinds),
        )
        if self.options.holdout_customers is not None:
            write_holdout_customers(result.customers, self.options.holdout_customers)
        return result.report

    async def _fit(
        self, store: Store, last: datetime, spend: asyncio.Future[dict[str, float]]
    ) -> tuple[Fit | None, dict[str, Any] | None]:
        """The configured models, fitted and stored as the leader does (with exact spend),
        and the BG/NBD block of the report (fitted too when another model is chosen)."""
        from processors.alive_models import MODELS
        from processors.forecast import ModelOptions, fit_histories, model_options
        from store.models import read_histories, save_fit

        started = time.monotonic()
        as_of = local_date(last)
        histories = await read_histories(store, as_of)
        if not histories:
            return None, None
        options = model_options(self.settings)
        loop = asyncio.get_running_loop()
        exact = await spend
        model = await loop.run_in_executor(None, fit_histories, histories, as_of, options, exact)
        await save_fit(store, model)
        logger.info(
            "models fitted",
            extra={
                "model": model.model,
                "customers": model.customers,
                "seconds": round(time.monotonic() - started, 3),
            },
        )
        bg = model
        if model.model != "bgnbd":
            only_bgnbd = ModelOptions("bgnbd", options.cltv_months, options.cltv_discount_monthly)
            bg = await loop.run_in_executor(None, fit_histories, histories, as_of, only_bgnbd)
        params = MODELS["bgnbd"].params(bg.params.as_dict())
        block = {**params.as_dict(), "as_of": as_of.isoformat(), "customers": bg.customers}
        return model, block


@contextlib.contextmanager
def no_cycle_collection() -> Iterator[None]:
    """The cyclic garbage collector paused: a run makes several objects an event (the
    event, its record's strings, its sums) that live until it ends and hold no cycles,
    and the collector would walk them again and again as they grow in number: a tenth of
    the CPU of a backtest on CDNOW_master."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def import_modelling() -> None:
    """Import :data:`MODELLING` (in a thread, while the replay waits on Redis)."""
    for name in MODELLING:
        importlib.import_module(name)


async def refuse_eviction(redis: Redis) -> None:
    """A Redis that evicts keys would lose dedupe ids and counts mid-run, as the worker
    says when it refuses one (``retention.worker``)."""
    evicting = {n: p for n, p in (await eviction_policies(redis)).items() if p != "noeviction"}
    if evicting:
        where = ", ".join(f"{node}: {policy}" for node, policy in sorted(evicting.items()))
        raise RuntimeError(f"Redis maxmemory-policy is not noeviction ({where})")


def replay_records(
    events: list[Event], topics: Topics, rates: Rates, offsets: dict[str, int]
) -> list[list[str]]:
    """The batch script's records for ``events``, as the worker builds them from the
    messages (``streams.ingest_batch``); ``offsets`` is each topic's next offset."""
    records = []
    stamp = int(time.time() * 1000)
    for event in events:
        topic = topics.source(event.type)
        offset = offsets.get(topic, 0)
        offsets[topic] = offset + 1
        try:
            record = accepted_record(event, topic, REPLAY_PARTITION, offset, stamp, rates)
        except UnknownCurrency:
            record = rejected_record(topic, REPLAY_PARTITION, offset, "unknown_currency", stamp)
        records.append(record)
    return records


async def replay(store: Store, topics: Topics, events: list[Event], rates: Rates) -> None:
    """Apply ``events`` through the batch script in batches of :data:`REPLAY_BATCH`, in
    order; each batch's records are built in a thread while the script applies the one
    before."""
    loop = asyncio.get_running_loop()
    offsets: dict[str, int] = {}
    with ThreadPoolExecutor(max_workers=1) as builder:

        def build(start: int) -> asyncio.Future[list[list[str]]]:
            batch = events[start : start + REPLAY_BATCH]
            return loop.run_in_executor(builder, replay_records, batch, topics, rates, offsets)

        starts = range(0, len(events), REPLAY_BATCH)
        ready = build(0) if starts else None
        for start in starts:
            assert ready is not None
            records = await ready
            ready = build(start + REPLAY_BATCH) if start + REPLAY_BATCH < len(events) else None
            # each partition's records must continue its stored offset, as a worker's must
            floors = dict.fromkeys(((r[TOPIC], REPLAY_PARTITION) for r in records), 0)
            _check(await store.apply_batch(records, floors=floors))


def _check(result: BatchResult) -> None:
    if result.gaps or result.set_aside:
        raise RuntimeError(f"the store refused part of the replay: {result}")


async def breakdown_report(periods: Periods, o: Options, last: datetime) -> dict[str, Any]:
    """The report's rows and cohorts per value of ``o.by`` (most customers first, then the
    customers with none, value null), as ``retention metrics --by`` shows them."""
    assert o.by is not None
    by = await periods.breakdown(o.by)
    starts = await periods.starts(o.period, last)
    _, rows = await periods.breakdown_of(o.period, starts, o.churn_days, by)
    _, matrices = await periods.cohorts_by(o.period, by, last)
    sizes = dict(zip(by.values, by.sizes, strict=True))
    return {
        "by": o.by,
        "values": [
            {
                "value": value,
                "customers": sizes.get(value) if value is not None else None,
                "periods": [r.as_dict() for r in rows[value]],
                "cohorts": {k: c.as_dict() for k, c in matrices[value].items()},
            }
            for value in rows
            if value is not None or not holds_nothing(rows[None]) or matrices[None]
        ],
    }


def repeat_spend(events: list[Event], as_of: date) -> dict[str, float]:
    """Per buyer, the exact mean value of its repeat purchase days through ``as_of``
    (placed amounts summed per day, the first day left out; 0 for a one-time buyer), as the
    Gamma-Gamma model wants it. Each event id counts once, the first one, as in the store."""
    from processors.forecast import spend_from_days

    seen: set[tuple[str, str]] = set()
    by_day: dict[str, dict[int, float]] = {}
    for event in events:
        if not isinstance(event, OrderEvent) or event.status != "placed":
            continue
        if (event.customer_id, event.event_id) in seen:
            continue
        seen.add((event.customer_id, event.event_id))
        days = by_day.setdefault(event.customer_id, {})
        day = local_day(event.ts_ms)
        days[day] = days.get(day, 0.0) + event.amount_micros / MICROS
    limit = (as_of - date(1970, 1, 1)).days
    return {c: spend_from_days(days, limit) for c, days in by_day.items()}


def write_holdout_customers(rows: list[dict[str, Any]], path: Path) -> None:
    """The holdout test's customers as CSV, one column per field; empty where a customer
    had no order before the cutoff (no prediction) or a number overflowed."""
    columns: dict[str, None] = {}
    for row in rows:
        columns.update(dict.fromkeys(row))
    with path.open("w", newline="") as out:
        writer = csv.DictWriter(out, fieldnames=list(columns), restval="")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: "" if v is None else v for k, v in row.items()})


async def write_customers(
    store: Store,
    path: Path,
    model: Fit | None,
    at: datetime,
    settings: Settings,
    spend: dict[str, float] | None = None,
    chunk: int = 500,
) -> int:
    """Every customer's state as of ``at``, with P(alive), expected spend, predicted CLTV,
    lifecycle and risk reasons; ``spend`` holds exact repeat-purchase means by customer."""
    from processors.evaluator import as_of_day, evaluate_seen
    from processors.forecast import NO_VALUE, outlooks
    from store.evaluations import active_before, update_high_value_threshold

    policy = load_policy(settings.risk_file)
    lifecycle = lifecycle_policy(settings.churn_after_days, policy.timers)
    threshold = await update_high_value_threshold(store, policy.high_value_quantile, spend)
    exact = spend or {}
    ids = await store.customer_ids()
    at_ms = int(at.timestamp() * 1000)
    with path.open("w") as out:
        for i in range(0, len(ids), chunk):
            states = await store.read_customers(ids[i : i + chunk])
            before = await active_before(store, states, at_ms, lifecycle)
            # a chunk's outlooks at once: as of the fit (what is shown) and as of the
            # evaluation (what the risk rules read), the same day unless ``at`` says not
            shown: list[Outlook | None] = [None] * len(states)
            judged = shown
            if model is not None:
                shown = outlooks(states, model, model.as_of, exact)
                if as_of_day(at) != model.as_of:
                    judged = outlooks(states, model, as_of_day(at), exact)
                else:
                    judged = shown
            for state, seen, basis in zip(states, shown, judged, strict=True):
                cid = state.customer_id
                ev = evaluate_seen(state, at, policy, lifecycle, basis, threshold, before[cid])
                money = NO_VALUE if seen is None else seen.value_fields()
                out.write(json.dumps({**to_public(state, seen, ev), **money}) + "\n")
    return len(ids)


async def used_memory(redis: Redis) -> int:
    """Redis's memory for data: without the clients' buffers, which a batch of 5,000
    records leaves grown for a while, and the cached scripts, loaded once per Redis."""
    info = await redis.info("memory")
    apart = ("mem_clients_normal", "used_memory_scripts")
    return int(info["used_memory"]) - sum(int(info.get(name, 0)) for name in apart)


def run(settings: Settings, options: Options) -> tuple[dict[str, Any], float | None]:
    """Run a backtest, write its report; returns the report and Redis bytes per customer."""
    backtest = Backtest(settings, options)
    report = backtest.run()
    options.report.write_text(json.dumps(report, indent=2) + "\n")
    return report, backtest.bytes_per_customer
