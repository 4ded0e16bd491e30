"""Why a customer is at risk, for people: each reason's numbers in the units a person reads,
one sentence, and the shop's next step; and what is at stake (value to date, CLTV).

Pure: built from a risk assessment (:func:`processors.risk.assess`), the customer's state
and the policy, so alerts, ``retention customer`` and the backtest say the same thing.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

from contract.events import MICROS
from processors.risk import RiskPolicy
from processors.state import CustomerState, iso

Unit = str  # "days", "orders", "share", "hours", "score"


@dataclass(frozen=True, slots=True)
class Evidence:
    """One reason, as observed against what was expected or the rule's limit."""

    reason: str
    #: what was seen, in ``unit``
    observed: float
    #: the rule's limit, in ``unit`` (the reason holds beyond it)
    threshold: float
    unit: Unit
    #: one sentence a person reads
    text: str
    #: what to do about it, from the risk file's playbook
    next_step: str
    #: what the customer's own history leads one to expect, when there is such a figure
    expected: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _days(value: float) -> str:
    n = round(value)
    return f"{n} day" if n == 1 else f"{n} days"


def _orders(value: float, decimals: int = 0) -> str:
    text = f"{value:.{decimals}f}"
    return f"{text} order" if text == "1" else f"{text} orders"


def _percent(share: float) -> str:
    return f"{share * 100:.0f}%"


def _silence(d: Mapping[str, float], p: RiskPolicy) -> tuple[float, float, float | None, str]:
    silent, limit, rhythm = d["silent_days"], d["limit_days"], d.get("rhythm_days")
    if rhythm is None:
        text = f"No activity for {_days(silent)}; the limit is {_days(limit)}."
    else:
        text = (
            f"No activity for {_days(silent)}; this customer usually orders every "
            f"{_days(rhythm)} (limit {_days(limit)})."
        )
    return silent, limit, rhythm, text


def _frequency(d: Mapping[str, float], p: RiskPolicy) -> tuple[float, float, float | None, str]:
    recent, expected = d["recent_orders"], d["expected_orders"]
    window = d.get("window_days", p.rules.frequency_drop.window_days)
    limit = p.rules.frequency_drop.ratio * expected
    text = (
        f"{_orders(recent)} in the last {_days(window)}; at their earlier pace "
        f"{_orders(expected, 1)} were expected."
    )
    return recent, limit, expected, text


def _p_alive(d: Mapping[str, float], p: RiskPolicy) -> tuple[float, float, float | None, str]:
    value, limit = d["p_alive"], p.rules.low_p_alive.threshold
    text = (
        f"The chance this customer is still buying is {_percent(value)} "
        f"(alert below {_percent(limit)})."
    )
    return value, limit, None, text


def _ticket(d: Mapping[str, float], p: RiskPolicy) -> tuple[float, float, float | None, str]:
    hours, limit = d["open_ticket_hours"], p.rules.ticket_unresolved.hours
    age = f"{hours / 24:.1f} days" if hours >= 72 else f"{hours:.0f} hours"
    text = f"A support ticket has been open for {age} (limit {limit:.0f} hours)."
    return hours, limit, None, text


def _csat(d: Mapping[str, float], p: RiskPolicy) -> tuple[float, float, float | None, str]:
    score, limit = d["csat"], float(p.rules.low_csat.max_score)
    text = f"Latest CSAT rating {score:.0f} of 5 ({limit:.0f} or lower counts as unhappy)."
    return score, limit, None, text


def _nps(d: Mapping[str, float], p: RiskPolicy) -> tuple[float, float, float | None, str]:
    score, limit = d["nps"], float(p.rules.nps_detractor.max_score)
    text = f"Latest NPS answer {score:.0f} of 10: a detractor ({limit:.0f} or lower)."
    return score, limit, None, text


def _refunds(d: Mapping[str, float], p: RiskPolicy) -> tuple[float, float, float | None, str]:
    share, limit = d["refund_share"], p.rules.refunds.min_share
    count = d.get("refunds")
    many = "" if count is None else f"{count:.0f} refunds, "
    text = f"{many}{_percent(share)} of what they spent refunded (limit {_percent(limit)})."
    return share, limit, None, text


_READERS: dict[str, tuple[Unit, Callable[..., tuple[float, float, float | None, str]]]] = {
    "silence": ("days", _silence),
    "frequency_drop": ("orders", _frequency),
    "low_p_alive": ("share", _p_alive),
    "ticket_unresolved": ("hours", _ticket),
    "low_csat": ("score", _csat),
    "nps_detractor": ("score", _nps),
    "refunds": ("share", _refunds),
}


def evidence(
    reasons: tuple[str, ...] | list[str], details: Mapping[str, float], policy: RiskPolicy
) -> list[Evidence]:
    """One :class:`Evidence` per reason whose numbers ``details`` holds (as
    :func:`processors.risk.assess` gives them), in the order of ``reasons``."""
    out: list[Evidence] = []
    for reason in reasons:
        found = _READERS.get(reason)
        if found is None:
            continue
        unit, read = found
        try:
            observed, threshold, expected, text = read(details, policy)
        except KeyError:
            continue  # an assessment made without this reason's numbers
        out.append(
            Evidence(
                reason=reason,
                observed=observed,
                threshold=threshold,
                unit=unit,
                text=text,
                next_step=policy.next_step(reason),
                expected=expected,
            )
        )
    return out


def stakes(
    state: CustomerState, currency: str, cltv: float | None, cltv_at_risk: float | None
) -> dict[str, Any]:
    """What the shop stands to lose, in the reporting currency: value to date, AOV, the last
    order, and predicted CLTV with the part of it at risk (None without a fitted model)."""
    return {
        "currency": currency,
        "cltv": None if cltv is None else round(cltv, 2),
        "cltv_at_risk": None if cltv_at_risk is None else round(cltv_at_risk, 2),
        "revenue": round(state.revenue_micros / MICROS, 2),
        "orders": state.orders,
        "aov": round(state.placed_micros / MICROS / state.orders, 2) if state.orders else None,
        "last_order_at": iso(state.last_order_ms),
        "last_order_amount": (
            None if state.last_order_micros is None else round(state.last_order_micros / MICROS, 2)
        ),
    }
