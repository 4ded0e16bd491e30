"""Segments of customers, as of each one's last stored evaluation, and the flat row a
segment lists (the API's pages, ``retention export``'s CSV, JSON lines and Parquet).

- ``new``, ``active``, ``at_risk``, ``churned``, ``reactivated``: the lifecycle status;
- ``high_value``: predicted CLTV at or above the high-value threshold.

A customer not evaluated yet belongs to none. Filters narrow a segment: risk bands, a least
predicted CLTV, the last activity before or after a moment, and the customer's latest
attributes (country, channel, shop).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from contract.events import DIMENSIONS, MICROS
from processors.state import CustomerState, iso

Segment = Literal["at_risk", "new", "active", "high_value", "churned", "reactivated"]
SEGMENTS: tuple[Segment, ...] = ("at_risk", "new", "active", "high_value", "churned", "reactivated")
_BANDS = {"l": "low", "m": "medium", "h": "high"}

#: the columns of a row, in order (CSV header, Parquet schema)
COLUMNS: tuple[str, ...] = (
    "customer_id",
    "status",
    "band",
    "risk_score",
    "risk_reasons",
    "high_value",
    "cltv",
    "cltv_at_risk",
    "currency",
    "evaluated_at",
    "orders",
    "revenue",
    "aov",
    "first_activity_at",
    "last_activity_at",
    "last_order_at",
    "open_tickets",
    "country",
    "channel",
    "shop",
)


@dataclass(frozen=True, slots=True)
class Filters:
    bands: frozenset[str] | None = None
    min_cltv: float | None = None
    #: last activity strictly before / at or after these instants (ms)
    active_before_ms: int | None = None
    active_after_ms: int | None = None
    #: per attribute (country, channel, shop), the latest values accepted
    attributes: dict[str, frozenset[str]] | None = None


def attribute_filter(given: Mapping[str, str | None]) -> dict[str, frozenset[str]] | None:
    """The attributes filter of comma-separated values per attribute (``country``,
    ``channel``, ``shop``; countries in any case); None when none is given."""
    out: dict[str, frozenset[str]] = {}
    for name in DIMENSIONS:
        text = given.get(name)
        if text:
            values = {v.strip() for v in text.split(",") if v.strip()}
            out[name] = frozenset(v.upper() if name == "country" else v for v in values)
    return out or None


def has_attributes(state: CustomerState, wanted: Mapping[str, frozenset[str]]) -> bool:
    """Whether the customer's latest value of every attribute named is one of those wanted."""
    for name, values in wanted.items():
        kept = state.attributes.get(name)
        if kept is None or kept.latest not in values:
            return False
    return True


def _micros(text: str | None) -> float | None:
    return int(text) / MICROS if text else None


def member(
    segment: Segment, state: CustomerState, evaluation: Mapping[str, str], filters: Filters
) -> bool:
    """Whether the customer, as last evaluated (``evaluation``: the stored fields ``st``,
    ``hv``, ``bd``, ``cl``...), is in ``segment`` and passes every filter."""
    if not evaluation:
        return False
    if segment == "high_value":
        if evaluation.get("hv") != "1":
            return False
    elif evaluation.get("st") != segment:
        return False
    if filters.bands is not None and _BANDS.get(evaluation.get("bd", "")) not in filters.bands:
        return False
    if filters.min_cltv is not None:
        cltv = _micros(evaluation.get("cl"))
        if cltv is None or cltv < filters.min_cltv:
            return False
    if filters.attributes is not None and not has_attributes(state, filters.attributes):
        return False
    last = state.last_activity_ms
    if filters.active_before_ms is not None and (last is None or last >= filters.active_before_ms):
        return False
    return filters.active_after_ms is None or (last is not None and last >= filters.active_after_ms)


def row(state: CustomerState, evaluation: Mapping[str, str], currency: str) -> dict[str, Any]:
    """The flat row of one customer: what it is, what it is worth, when it was last seen."""
    at = evaluation.get("at")
    return {
        "customer_id": state.customer_id,
        "status": evaluation.get("st"),
        "band": _BANDS.get(evaluation.get("bd", "")),
        "risk_score": float(evaluation["sc"]) if evaluation.get("sc") else None,
        "risk_reasons": evaluation.get("rr", ""),
        "high_value": evaluation.get("hv") == "1",
        "cltv": _micros(evaluation.get("cl")),
        "cltv_at_risk": _micros(evaluation.get("cr")) if evaluation.get("cl") else None,
        "currency": currency,
        "evaluated_at": iso(int(at)) if at else None,
        "orders": state.orders,
        "revenue": state.revenue_micros / MICROS,
        "aov": state.placed_micros / MICROS / state.orders if state.orders else None,
        "first_activity_at": iso(state.first_activity_ms),
        "last_activity_at": iso(state.last_activity_ms),
        "last_order_at": iso(state.last_order_ms),
        "open_tickets": state.open_tickets,
        **{name: _latest(state, name) for name in DIMENSIONS},
    }


def _latest(state: CustomerState, name: str) -> str | None:
    kept = state.attributes.get(name)
    return None if kept is None else kept.latest
