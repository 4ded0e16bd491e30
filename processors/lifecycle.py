"""Lifecycle of a customer, the alerts its changes raise, and when to look at it again.

Statuses (a customer has exactly one at a time, checked in this order):
- ``churned``: no activity within the churn window W;
- ``at_risk``: the risk rules (processors/risk.py) reach the policy's threshold;
- ``new``: first activity within ``new_days``;
- ``reactivated``: active now, but not ``new_days`` ago: back after a silence of W;
- ``active``: everyone else.

Silence has no event to trigger on, so every evaluation also says when the customer next
needs one (:func:`next_due_ms`): the earliest instant at which a threshold is crossed.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

from contract.events import MS_PER_DAY
from processors.alerts import Alert, AlertKind
from processors.risk import Assessment, Bands, RiskPolicy, Timers, silence_limit_days
from processors.state import CustomerState, day_iso
from processors.windows import local_day

Status = Literal["new", "active", "at_risk", "churned", "reactivated"]
STATUSES: tuple[Status, ...] = ("new", "active", "at_risk", "churned", "reactivated")


@dataclass(frozen=True, slots=True)
class LifecyclePolicy:
    churn_after_days: int = 90
    new_days: int = 30
    #: quiet this long (but not churned yet): a "cold customer" alert
    cold_days: int = 30
    #: this long after an order with none since: a "post purchase follow-up" alert
    followup_days: int = 30
    #: this long after the last activity of a churned customer: a "win-back due" alert
    winback_days: int = 120
    milestones: tuple[int, ...] = (5, 10, 25, 50, 100)
    #: the longest a customer goes unevaluated (rules such as P(alive) drift continuously)
    max_recheck_days: int = 1


def lifecycle_policy(churn_after_days: int, timers: Timers) -> LifecyclePolicy:
    """The lifecycle of the settings' churn window and the risk file's timers."""
    return LifecyclePolicy(
        churn_after_days=churn_after_days,
        cold_days=timers.cold_days,
        followup_days=timers.followup_days,
        winback_days=timers.winback_days,
        milestones=tuple(sorted(timers.milestones)),
    )


_BAND_RANK = {"low": 0, "medium": 1, "high": 2}


def escalated(
    risk: Assessment,
    bands: Bands,
    previous_reasons: tuple[str, ...],
    previous_score: float | None,
) -> bool:
    """Whether a customer still at risk got worse in a way a person should hear about: a
    reason it did not have, or a higher band."""
    if set(risk.reasons) - set(previous_reasons):
        return True
    new, old = bands.of(risk.score), bands.of(previous_score)
    return new is not None and old is not None and _BAND_RANK[new] > _BAND_RANK[old]


def _reference_ms(state: CustomerState) -> int:
    for ms in (state.last_activity_ms, state.first_activity_ms, state.first_seen_ms):
        if ms is not None:
            return ms
    return 0


def lookback_days(now_ms: int, p: LifecyclePolicy) -> tuple[int, int]:
    """Days ``[from, to)`` in which activity made the customer active ``new_days`` ago.

    Active at t means activity in ``[t - W, t)`` (docs/metrics.md); with t = now - new_days, at
    day granularity. A customer active now but not then has come back within ``new_days``.
    """
    then = local_day(now_ms) - p.new_days
    return then - p.churn_after_days, then


def classify(
    state: CustomerState,
    now_ms: int,
    risk: Assessment,
    risk_policy: RiskPolicy,
    p: LifecyclePolicy,
    active_before: bool = True,
) -> Status:
    """``active_before``: whether the customer was active ``new_days`` ago (see
    :func:`lookback_days`); the store answers it from its day bitmaps, which do not depend
    on the order events arrived in."""
    last = _reference_ms(state)
    if now_ms - last > p.churn_after_days * MS_PER_DAY:
        return "churned"
    if risk.at_risk(risk_policy):
        return "at_risk"
    first = state.first_activity_ms if state.first_activity_ms is not None else last
    if now_ms - first <= p.new_days * MS_PER_DAY:
        return "new"
    if not active_before:
        return "reactivated"
    return "active"


def _thresholds(state: CustomerState, risk_policy: RiskPolicy, p: LifecyclePolicy) -> list[int]:
    """Instants at which the status or a timed alert can change without a new event."""
    last = _reference_ms(state)
    day = MS_PER_DAY
    out = [
        last + p.churn_after_days * day + 1,
        last + p.cold_days * day,
        last + p.winback_days * day,
        last + int(silence_limit_days(state, risk_policy.rules.silence) * day) + 1,
    ]
    if state.first_activity_ms is not None:
        out.append(state.first_activity_ms + p.new_days * day + 1)
    if state.last_order_ms is not None:
        out.append(state.last_order_ms + p.followup_days * day)
    hours = risk_policy.rules.ticket_unresolved.hours
    out.extend(
        t.opened_ms + int(hours * 3_600_000) + 1
        for t in state.tickets.values()
        if t.is_open and t.opened_ms is not None
    )
    return out


def next_due_ms(
    state: CustomerState, now_ms: int, risk_policy: RiskPolicy, p: LifecyclePolicy
) -> int:
    upcoming = [t for t in _thresholds(state, risk_policy, p) if t > now_ms]
    return min([*upcoming, now_ms + p.max_recheck_days * MS_PER_DAY])


def _crossed(at_ms: int | None, prev_ms: int | None, now_ms: int) -> bool:
    """Whether ``at_ms`` fell in (prev, now]: each timed alert is raised once."""
    return at_ms is not None and at_ms <= now_ms and (prev_ms is None or at_ms > prev_ms)


def alerts_for(
    state: CustomerState,
    *,
    prev_ms: int | None,
    now_ms: int,
    old: Status | None,
    new: Status,
    risk: Assessment,
    previous_orders: int,
    p: LifecyclePolicy,
    bands: Bands | None = None,
    previous_reasons: tuple[str, ...] = (),
    previous_score: float | None = None,
) -> list[Alert]:
    """Alerts for what changed since the previous evaluation at ``prev_ms``.

    A customer at risk before and still at risk raises ``risk_escalated`` when it gets a
    new reason or a higher band (:func:`escalated`); its key names the band and the
    reasons within the silence since the last activity, so each step is sent once.
    """
    at = datetime.fromtimestamp(now_ms / 1000, UTC)
    last = _reference_ms(state)
    day = MS_PER_DAY

    def alert(kind: AlertKind, occasion: str, details: dict[str, object] | None = None) -> Alert:
        return Alert(
            kind,
            state.customer_id,
            at,
            occasion,
            reasons=risk.reasons,
            risk_score=risk.score,
            high_value=risk.high_value,
            details=details or {},
        )

    # A customer seen for the first time (a new tracker over old history, a backtest) has
    # thresholds long past: only what happened within the last recheck interval is news.
    if prev_ms is None:
        prev_ms = now_ms - p.max_recheck_days * day
    out: list[Alert] = []
    if new != old and new in ("at_risk", "churned", "reactivated"):
        since = {
            "at_risk": now_ms,
            "churned": last + p.churn_after_days * day,
            "reactivated": now_ms,
        }[new]
        if old is not None or since > prev_ms:
            when = now_ms if new == "at_risk" else last
            out.append(alert(new, day_iso(when // day), {"from": old}))
    if (
        old == new == "at_risk"
        and bands is not None
        and escalated(risk, bands, previous_reasons, previous_score)
    ):
        occasion = f"{day_iso(last // day)}:{bands.of(risk.score)}:{'+'.join(sorted(risk.reasons))}"
        out.append(alert("risk_escalated", occasion, {"from_reasons": list(previous_reasons)}))
    if new != "churned" and _crossed(last + p.cold_days * day, prev_ms, now_ms):
        out.append(alert("cold_customer", day_iso(last // day)))
    if new == "churned" and _crossed(last + p.winback_days * day, prev_ms, now_ms):
        out.append(alert("winback_due", day_iso(last // day)))
    lo = state.last_order_ms
    if lo is not None and _crossed(lo + p.followup_days * day, prev_ms, now_ms):
        out.append(alert("post_purchase_followup", day_iso(lo // day)))
    out.extend(
        alert("milestone", str(n), {"orders": n})
        for n in p.milestones
        if previous_orders < n <= state.orders
    )
    return out
