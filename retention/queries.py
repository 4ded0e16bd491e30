"""What the read commands show (`customer`, `at-risk`, `metrics`, `cohorts`), as data.

Each query opens its own Redis connection from the settings and closes it; the command
line only formats what comes back.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from redis.asyncio import Redis

from contract.events import MICROS
from processors.customer_outlook import outlook
from processors.evaluator import as_of_day, evaluate_seen
from processors.evidence import evidence
from processors.fits import NO_VALUE
from processors.lifecycle import lifecycle_policy
from processors.metrics import PeriodRow
from processors.outcomes import Tally, outcome, tally
from processors.segments import has_attributes
from processors.state import CustomerState, iso, to_public
from processors.windows import PERIODS, Period, next_period
from retention.config import Settings
from store.connect import connect
from store.evaluations import Evaluator, active_before, ranked_at_risk, stored_evaluations
from store.models import stored_fit
from store.outcomes import logged_alerts, read_states
from store.periods import Periods, holds_nothing
from store.store import Store
from streams.risk_file import load_policy

if TYPE_CHECKING:
    from store.forget import Erased


@asynccontextmanager
async def _redis(settings: Settings) -> AsyncIterator[Redis]:
    redis = connect(settings.redis_url or "", decode_responses=True)
    try:
        yield redis
    finally:
        await redis.aclose()


def evaluator(settings: Settings, store: Store) -> Evaluator:
    """An evaluator with the configured rules, for reading (it publishes nothing)."""
    policy = load_policy(settings.risk_file)
    lifecycle = lifecycle_policy(settings.churn_after_days, policy.timers)
    return Evaluator(store, policy, lifecycle, currency=settings.reporting_currency)


async def customer(settings: Settings, customer_id: str) -> dict[str, Any] | None:
    """One customer: state, lifecycle, risk, P(alive), spend and CLTV.

    The status, risk, band and CLTV are those of the customer's last evaluation, the one
    the at-risk list, the exporter and the alerts show, with ``evaluated_at``; the rest is
    worked out as of that moment with the same rules and fit. A customer not evaluated yet
    is evaluated as of now (``evaluated_at`` null).
    """
    async with _redis(settings) as redis:
        return await customer_view(Store(redis, settings.key_prefix), settings, customer_id)


async def customer_view(
    store: Store, settings: Settings, customer_id: str
) -> dict[str, Any] | None:
    """:func:`customer` on an open store (the HTTP server's)."""
    state = await store.read_customer(customer_id)
    if state is None:
        return None
    model = await stored_fit(store)
    rules = evaluator(settings, store)
    threshold = await rules.high_value_threshold()
    stored = (await stored_evaluations(store, [customer_id])).get(customer_id, {})
    at_ms = int(stored["at"]) if stored.get("at") else None
    at = datetime.now(UTC) if at_ms is None else datetime.fromtimestamp(at_ms / 1000, UTC)
    before = await active_before(store, [state], int(at.timestamp() * 1000), rules.lifecycle)
    # one customer: its outlook in plain floats, without loading numpy and scipy
    seen = None if model is None else outlook(state, model, as_of_day(at))
    ev = evaluate_seen(
        state, at, rules.risk_policy, rules.lifecycle, seen, threshold, before[customer_id]
    )
    out = {**to_public(state, seen, ev), **(NO_VALUE if seen is None else seen.value_fields())}
    out["cltv"] = ev.cltv
    out["cltv_at_risk"] = None if ev.cltv is None else ev.cltv_at_risk()
    if stored:
        reasons = [r for r in stored.get("rr", "").split(",") if r]
        out.update(
            status=stored["st"],
            risk_score=float(stored["sc"]),
            risk_reasons=reasons,
            high_value=stored.get("hv") == "1",
            cltv=int(stored["cl"]) / MICROS if stored.get("cl") else None,
            cltv_at_risk=(
                int(stored["cr"]) / MICROS if stored.get("cl") and stored.get("cr") else None
            ),
        )
    policy = rules.risk_policy
    out["band"] = policy.bands.of(out["risk_score"])
    out["evaluated_at"] = None if at_ms is None else iso(at_ms)
    out["evidence"] = [e.as_dict() for e in evidence(out["risk_reasons"], ev.risk.details, policy)]
    out["currency"] = settings.reporting_currency
    return out


async def forget(settings: Settings, customer_id: str) -> Erased:
    """Erase one customer (store/forget.py)."""
    # the notifier's records come with it: only an erase loads their modules
    from store.deliveries import Deliveries
    from store.forget import forget_customer

    async with _redis(settings) as redis:
        store = Store(redis, settings.key_prefix)
        now_ms = int(datetime.now(UTC).timestamp() * 1000)
        deliveries = Deliveries(redis, settings.key_prefix)
        return await forget_customer(store, deliveries, customer_id, now_ms)


async def at_risk(
    settings: Settings, limit: int, attributes: Mapping[str, frozenset[str]] | None = None
) -> list[dict[str, Any]]:
    """Customers at risk, ranked by CLTV at risk (predicted CLTV x risk score); with
    ``attributes``, only those whose latest attributes are among the values given."""
    wanted = None
    if attributes:
        chosen = dict(attributes)

        def wanted(state: CustomerState) -> bool:
            return has_attributes(state, chosen)

    async with _redis(settings) as redis:
        return await ranked_at_risk(Store(redis, settings.key_prefix), limit, wanted)


async def alert_outcomes(
    settings: Settings, window_days: int | None = None
) -> tuple[list[dict[str, Any]], Tally]:
    """The alerts raised, newest first, each with its outcome, and their count by kind,
    band and outcome (window: the risk file's ``outcome_window_days`` unless given)."""
    window = window_days or load_policy(settings.risk_file).outcome_window_days
    now_ms = int(datetime.now(UTC).timestamp() * 1000)
    async with _redis(settings) as redis:
        store = Store(redis, settings.key_prefix)
        raised = await logged_alerts(store, now_ms)
        ids = sorted({r.customer_id for r in raised})
        states = await read_states(store, ids)
    listed = [
        {
            "key": r.key,
            "kind": r.kind,
            "band": r.band or None,
            "customer_id": r.customer_id,
            "at": iso(r.at_ms),
            "outcome": outcome(r, states.get(r.customer_id), window, now_ms),
        }
        for r in sorted(raised, key=lambda r: (-r.at_ms, r.key))
    ]
    return listed, tally(raised, states, window, now_ms)


async def live_periods(
    settings: Settings, period: Period, churn_days: int
) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """Every period's row through now, counted from what the store holds (late data
    included), those not ended yet marked open; and the distinct active customers of the
    current day, week and month."""
    async with _redis(settings) as redis:
        return await periods_view(Periods(redis, settings.key_prefix), period, churn_days)


async def periods_view(
    periods: Periods, period: Period, churn_days: int
) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """:func:`live_periods` on open periods (the HTTP server's)."""
    now = datetime.now(UTC)
    active: dict[str, int] = {p: await periods.active(p, now) for p in PERIODS}
    span = await periods.span()
    through = max(now, span[1]) if span else None
    starts = await periods.starts(period, through)
    rows = [
        {**row.as_dict(), "open": True} if next_period(start, period) > now else row.as_dict()
        for start, row in zip(
            starts, await periods.rows_of(period, starts, churn_days), strict=True
        )
    ]
    return rows, active


async def live_cohorts(settings: Settings, period: Period) -> dict[str, dict[str, Any]]:
    """The cohort matrix through now."""
    async with _redis(settings) as redis:
        return await cohorts_view(Periods(redis, settings.key_prefix), period)


async def cohorts_view(periods: Periods, period: Period) -> dict[str, dict[str, Any]]:
    """:func:`live_cohorts` on open periods (the HTTP server's)."""
    span = await periods.span()
    through = max(datetime.now(UTC), span[1]) if span else None
    return {k: c.as_dict() for k, c in (await periods.cohorts(period, through)).items()}


async def live_breakdown(
    settings: Settings, period: Period, churn_days: int, attribute: str
) -> dict[str, Any]:
    """:func:`live_periods`' rows broken down by a customer attribute: the rows of all
    customers, then per value (most customers first) those of the customers whose latest
    value it is, and last (value None) those of the customers with no value."""
    async with _redis(settings) as redis:
        periods = Periods(redis, settings.key_prefix)
        by = await periods.breakdown(attribute)
        customers = await Store(redis, settings.key_prefix).customer_count()
        now = datetime.now(UTC)
        span = await periods.span()
        starts = await periods.starts(period, max(now, span[1]) if span else None)
        total, parts = await periods.breakdown_of(period, starts, churn_days, by)

        def shown(rows: list[PeriodRow]) -> list[dict[str, Any]]:
            return [
                {**r.as_dict(), "open": True} if next_period(s, period) > now else r.as_dict()
                for s, r in zip(starts, rows, strict=True)
            ]

        sizes = dict(zip(by.values, by.sizes, strict=True))
        return {
            "by": attribute,
            "periods": shown(total),
            "breakdown": [
                {
                    "value": value,
                    "customers": sizes[value] if value is not None else customers - sum(by.sizes),
                    "periods": shown(rows),
                }
                for value, rows in parts.items()
                if value is not None or not holds_nothing(rows)
            ],
        }


async def live_cohorts_by(settings: Settings, period: Period, attribute: str) -> dict[str, Any]:
    """:func:`live_cohorts` broken down by a customer attribute, as :func:`live_breakdown`."""
    async with _redis(settings) as redis:
        periods = Periods(redis, settings.key_prefix)
        by = await periods.breakdown(attribute)
        span = await periods.span()
        through = max(datetime.now(UTC), span[1]) if span else None
        total, parts = await periods.cohorts_by(period, by, through)
        return {
            "by": attribute,
            "cohorts": {k: c.as_dict() for k, c in total.items()},
            "breakdown": [
                {"value": value, "cohorts": {k: c.as_dict() for k, c in matrix.items()}}
                for value, matrix in parts.items()
                if value is not None or matrix
            ],
        }
