"""Evaluates customers that are due: lifecycle status, risk, alerts, and the next look.

Due customers are the ones the batch script changed and the ones whose next threshold
has come (each evaluation schedules the customer's next look, so a customer who goes
silent is noticed without any event); the store keeps both queues (``store/evaluations``).
Each result is kept with the customer; ``life:counts``, ``risk:reasons``,
``risk:high_value``, the ``atrisk`` ranking and the CLTV totals are kept in step for
readers (CLI, exporter).

CLTV totals, in integer micros so that adding and taking back is exact:
``cltv:total`` sums every evaluated customer's predicted CLTV, and the hash
``cltv:at_risk`` sums, per risk reason, CLTV × risk score over the customers at risk with
that reason (a customer with two reasons counts under both, as in ``risk:reasons``). Each
evaluation takes back what the customer's previous evaluation added, so a scrape reads
totals instead of scanning customers; they follow a refit as customers come due again.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from datetime import date, datetime, timedelta
from typing import cast
from urllib.parse import quote

from contract.events import MICROS
from processors.alerts import Alert
from processors.customer_outlook import outlook
from processors.evidence import evidence, stakes
from processors.fits import Fit, Outlook
from processors.lifecycle import (
    LifecyclePolicy,
    Status,
    classify,
)
from processors.risk import Assessment, RiskPolicy, assess, value
from processors.state import CustomerState
from processors.windows import local_date

Publish = Callable[[Sequence[Alert]], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class Evaluation:
    status: Status
    risk: Assessment
    p_alive: float | None
    expected_purchases_90d: float | None
    expected_spend: float | None = None
    cltv: float | None = None

    def cltv_at_risk(self) -> float:
        """Predicted CLTV × risk score; 0 without a predicted CLTV."""
        return 0.0 if self.cltv is None else self.cltv * self.risk.score


def explained(
    alert: Alert,
    state: CustomerState,
    ev: Evaluation,
    policy: RiskPolicy,
    currency: str,
    link_base: str | None = None,
) -> Alert:
    """``alert`` with what a person needs to act on it: the risk band, each reason's
    numbers, sentence and next step, the stakes in ``currency``, the customer's latest
    attributes (country, channel, shop), and a link to the customer's page under
    ``link_base`` (the web view's address) when there is one."""
    at_stake = None if ev.cltv is None else ev.cltv_at_risk()
    url = None
    if link_base:
        url = link_base.rstrip("/") + "/customers/" + quote(alert.customer_id, safe="")
    return replace(
        alert,
        band=policy.bands.of(ev.risk.score),
        evidence=tuple(e.as_dict() for e in evidence(ev.risk.reasons, ev.risk.details, policy)),
        stakes=stakes(state, currency, ev.cltv, at_stake),
        url=url,
        attributes={name: a.latest for name, a in sorted(state.attributes.items())},
    )


def evaluate(
    state: CustomerState,
    now: datetime,
    risk_policy: RiskPolicy,
    lifecycle: LifecyclePolicy,
    model: Fit | None,
    high_value_cltv: float | None,
    active_before: bool = True,
    spend: float | None = None,
) -> Evaluation:
    """Status and risk of one customer at ``now`` (pure), its outlook computed in plain
    floats (:mod:`processors.customer_outlook`, no numpy); many customers at once go
    through :func:`evaluate_seen` with :func:`processors.forecast.outlooks`.

    ``spend`` is the customer's exact mean repeat-purchase value when the caller has it
    (a backtest); otherwise the outlook uses the live approximation.
    """
    seen = None if model is None else outlook(state, model, as_of_day(now), spend)
    return evaluate_seen(state, now, risk_policy, lifecycle, seen, high_value_cltv, active_before)


def as_of_day(now: datetime) -> date:
    """The last whole day before ``now``: the day forecasts are made as of."""
    return local_date(now - timedelta(milliseconds=1))


#: A predicted CLTV above this (in the reporting currency) is not a prediction but a model
#: gone wrong (a fit on too little data can give 1e56): it is taken as no prediction, so
#: the totals kept in integer micros stay within Redis's 64-bit range.
MAX_PLAUSIBLE_CLTV = 1e9


def plausible_cltv(cltv: float | None) -> float | None:
    """``cltv`` when it is a finite amount within ``[0, MAX_PLAUSIBLE_CLTV]``, else None."""
    if cltv is None or not math.isfinite(cltv) or not 0 <= cltv <= MAX_PLAUSIBLE_CLTV:
        return None
    return cltv


def evaluate_seen(
    state: CustomerState,
    now: datetime,
    risk_policy: RiskPolicy,
    lifecycle: LifecyclePolicy,
    seen: Outlook | None,
    high_value_cltv: float | None,
    active_before: bool = True,
) -> Evaluation:
    """:func:`evaluate` with the customer's outlook already computed (None without a model
    or an order), as the evaluator does for a whole chunk at once
    (:func:`processors.forecast.outlooks`)."""
    now_ms = int(now.timestamp() * 1000)
    p_alive = None if seen is None else seen.p_alive
    cltv = None if seen is None else plausible_cltv(seen.cltv)
    risk = assess(state, now_ms, risk_policy, p_alive, high_value_cltv, cltv)
    status = classify(state, now_ms, risk, risk_policy, lifecycle, active_before)
    return Evaluation(
        status,
        risk,
        p_alive,
        None if seen is None else seen.expected_purchases_90d,
        None if seen is None else seen.expected_spend,
        cltv,
    )


def to_micros(amount: float | None) -> int:
    return 0 if amount is None else round(amount * MICROS)


@dataclass(frozen=True, slots=True)
class Previous:
    status: Status | None
    reasons: tuple[str, ...]
    high_value: bool
    at_ms: int | None
    orders: int
    cltv_micros: int = 0
    cltv_at_risk_micros: int = 0
    score: float | None = None


def parse_previous(raw: dict[str, str]) -> Previous:
    return Previous(
        status=cast(Status, raw["st"]) if "st" in raw else None,
        reasons=tuple(r for r in raw.get("rr", "").split(",") if r),
        high_value=raw.get("hv") == "1",
        at_ms=int(raw["at"]) if "at" in raw else None,
        orders=int(raw.get("no", 0)),
        cltv_micros=int(raw.get("cl") or 0),
        cltv_at_risk_micros=int(raw.get("cr") or 0),
        score=float(raw["sc"]) if "sc" in raw else None,
    )


def as_text(raw: bytes | str) -> str:
    """A score exactly as Redis wrote it, so the reschedule script can compare it."""
    return raw.decode() if isinstance(raw, bytes) else raw


def at_risk_rank(state: CustomerState, ev: Evaluation) -> float:
    """CLTV at risk: predicted CLTV × risk score. Until a fit gives a CLTV, revenue to
    date stands in for it, so the list is still ordered by value."""
    worth = ev.cltv if ev.cltv is not None else max(value(state), 0.0)
    return ev.risk.score * worth
