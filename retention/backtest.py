"""``retention backtest``: replay a history file through the live pipeline and report.

The file goes through Kafka to the same worker as in live mode, started here with the
event-time clock; the report is read from what that worker stored. Nothing is computed on
a side path, so a backtest checks the live numbers themselves.
"""

from __future__ import annotations

import asyncio
import csv
import json
import logging
import re
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

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
from processors.alive_models import MODELS
from processors.evaluator import as_of_day, evaluate_seen
from processors.forecast import (
    NO_VALUE,
    Fit,
    ModelOptions,
    Outlook,
    fit_histories,
    model_options,
    outlooks,
    spend_from_days,
)
from processors.holdout import cutoff_for, holdout_report
from processors.lifecycle import lifecycle_policy
from processors.state import to_public
from processors.windows import (
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
from retention.publish_file import Progress, file_dead_letter_headers
from store.connect import connect
from store.evaluations import active_before, update_high_value_threshold
from store.models import read_histories, save_fit
from store.periods import Periods, holds_nothing
from store.store import Store
from streams.producer import EventProducer
from streams.risk_file import load_policy
from streams.topics import Topics, cluster_id, ensure_topics

logger = logging.getLogger(__name__)

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


class Backtest:
    def __init__(self, settings: Settings, options: Options) -> None:
        self.options = options
        tag = uuid.uuid4().hex[:8]
        # Configured services may hold live data: keep the backtest's topics and keys apart.
        self.settings = settings.model_copy(
            update={
                "topic_prefix": f"{settings.topic_prefix}backtest-{tag}-",
                "key_prefix": f"{settings.key_prefix}backtest-{tag}:",
                "activity_kinds": options.activity_kinds,
                "churn_after_days": options.churn_days,
                "clock": "watermark",
                "lateness_seconds": 0.0,
                "close_every_seconds": 1.0,
            }
        )
        self.group = runtime.ProcessGroup()
        #: Redis memory the run added, per tracked customer (state, bitmaps, dedupe ids)
        self.bytes_per_customer: float | None = None

    def _worker_env(self, data_dir: Path, embedded: bool) -> dict[str, str]:
        own = self.settings.model_copy(update={"data_dir": data_dir})
        return runtime.settings_env(own, embedded=embedded)

    def run(self) -> dict[str, Any]:
        with tempfile.TemporaryDirectory(prefix="retention-backtest-") as tmp:
            work = Path(tmp)
            embedded = not (self.settings.kafka_bootstrap and self.settings.redis_url)
            try:
                if embedded:
                    services = runtime.start_services(work, self.group)
                    self.settings = self.settings.with_services(
                        services.kafka_bootstrap, services.redis_url
                    )
                return asyncio.run(self._run(work, embedded))
            finally:
                self.group.stop()

    async def _run(self, work: Path, embedded: bool) -> dict[str, Any]:
        s, o = self.settings, self.options
        assert s.kafka_bootstrap and s.redis_url
        events, bad = load(o)
        topics = Topics.from_settings(s)
        await ensure_topics(s.kafka_bootstrap, topics, s.partitions, s.kafka_security())
        self.group.add(runtime.start_worker(self._worker_env(work, embedded), work))
        logger.info("backtest input read", extra={"events": len(events), "bad": len(bad)})
        redis = connect(s.redis_url, decode_responses=True)
        try:
            before = await used_memory(redis)
            sent = await self._produce(topics, events, bad)
            logger.info("backtest input produced", extra={"messages": sum(sent.values())})
            scope = await cluster_id(s.kafka_bootstrap, s.kafka_security())
            store = Store(
                redis,
                s.key_prefix,
                s.activity_kinds,
                offsets_scope=scope,
                shards=s.shards,
                writer=True,
            )
            await self._wait(store, sent, work)
            customers = await store.customer_count()
            if customers:
                grown = await used_memory(redis) - before
                self.bytes_per_customer = grown / customers
            logger.info("backtest input processed")
            report = await self._report(store, Periods(redis, s.key_prefix, s.shards), events, bad)
            logger.info("backtest report ready")
            return report
        finally:
            await redis.aclose()

    async def _produce(
        self, topics: Topics, events: list[Event], bad: list[tuple[int, Rejection]]
    ) -> dict[str, int]:
        assert self.settings.kafka_bootstrap
        sent: dict[str, int] = {}
        progress = Progress(len(events) + len(bad))
        # a backtest judges event times by its own data, not by today's clock
        async with EventProducer(
            self.settings.kafka_bootstrap,
            topics,
            linger_ms=20,
            max_future_seconds=None,
            security=self.settings.kafka_security(),
        ) as producer:
            for line_no, rejection in bad:
                headers = file_dead_letter_headers(self.options.path, line_no, rejection)
                await producer.send_raw(topics.dlq, rejection.detail.encode(), None, headers)
            for n, event in enumerate(events, start=1):
                await producer.send(event)
                topic = topics.source(event.type)
                sent[topic] = sent.get(topic, 0) + 1
                progress.update(n, n, len(bad))
            await producer.flush()
        progress.update(len(events), len(events), len(bad), final=True)
        return sent

    async def _wait(self, store: Store, sent: dict[str, int], work: Path) -> None:
        """Until the store has taken account of every message: exact, unlike end offsets."""
        while True:
            stats = await store.stats()
            if all(stats.seen(topic) >= n for topic, n in sent.items()):
                return
            dead = [p.name for p in self.group.processes if p.proc.poll() is not None]
            if dead:
                raise RuntimeError(f"{', '.join(dead)} stopped; see the logs in {work}")
            await asyncio.sleep(0.1)

    async def _report(
        self,
        store: Store,
        periods: Periods,
        events: list[Event],
        bad: list[tuple[int, Rejection]],
    ) -> dict[str, Any]:
        o = self.options
        last = last_instant(o, events)
        rows: list[dict[str, Any]] = []
        if last is not None:
            # end of input: the clock moves to the end of the last period
            end = next_period(period_start(last, o.period), o.period)
            await periods.close(o.period, clock=end, through=last, limit=None)
            rows = [r.as_dict() for r in await periods.rows(o.period, o.churn_days, last)]
        stats = await store.stats()
        # the models as of the end of the data: the --until day, or the last event's day
        spend = repeat_spend(events, local_date(last)) if last is not None else {}
        model, bgnbd = (None, None) if last is None else await self._fit(store, last, spend)
        report: dict[str, Any] = {
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
        if o.holdout_until is not None and o.until is not None:
            later, _ = load(replace(o, until=o.holdout_until))
            cutoff = local_midnight(o.until + timedelta(days=1))
            report["holdout"] = self._holdout(later, cutoff, (o.holdout_until - o.until).days)
        elif o.holdout_days is not None and last is not None:
            report["holdout"] = self._holdout(
                events, cutoff_for(last, o.holdout_days), o.holdout_days
            )
        if o.customers is not None and last is not None:
            as_of_end = local_midnight(local_date(last) + timedelta(days=1))
            await write_customers(store, o.customers, model, as_of_end, self.settings, spend)
        return report

    def _holdout(self, events: list[Event], cutoff: datetime, days: int) -> dict[str, Any]:
        """The calibration / holdout test of the predictions (processors/holdout.py), and
        its customers file when asked for."""
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
        self, store: Store, last: datetime, spend: dict[str, float]
    ) -> tuple[Fit | None, dict[str, Any] | None]:
        """The configured models, fitted and stored as the leader does (with exact spend),
        and the BG/NBD block of the report (fitted too when another model is chosen)."""
        started = time.monotonic()
        as_of = local_date(last)
        histories = await read_histories(store, as_of)
        if not histories:
            return None, None
        options = model_options(self.settings)
        loop = asyncio.get_running_loop()
        model = await loop.run_in_executor(None, fit_histories, histories, as_of, options, spend)
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
    info = await redis.info("memory")
    return int(info["used_memory"])


def run(settings: Settings, options: Options) -> tuple[dict[str, Any], float | None]:
    """Run a backtest, write its report; returns the report and Redis bytes per customer."""
    backtest = Backtest(settings, options)
    report = backtest.run()
    options.report.write_text(json.dumps(report, indent=2) + "\n")
    return report, backtest.bytes_per_customer
