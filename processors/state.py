"""Per-customer state and how one event changes it.

This is the reference definition. The store applies the same rules inside Redis (one Lua
script per batch, ``store/batch_*.lua``) for speed; the integration tests fold the same events
through :func:`apply_event` and require the stored state to be equal.

Rules that make the result independent of arrival order within a customer:
- first/last times are minima/maxima of event time, not of arrival;
- "latest" survey scores and ticket status are those with the greatest event time (on a
  tie the later arrival wins);
- money is kept in integer millionths, so sums are exact.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from contract.events import MICROS, MS_PER_DAY, Event, LoginEvent, OrderEvent, SupportEvent
from processors.currency import Rates
from processors.windows import local_day

#: Tickets a customer's state tracks at most (store/batch_tickets.lua keeps the same), so that a
#: producer cannot grow one customer's state, read whole on every evaluation, without end.
MAX_TICKETS = 1000
#: When the cap is reached, tickets not open whose latest event is this much older than the
#: event at hand make room; with none to drop, the new ticket is counted, not tracked.
TICKET_HORIZON_MS = 90 * MS_PER_DAY
ActivityKinds = frozenset[str]


@dataclass(frozen=True, slots=True)
class TicketState:
    opened_ms: int | None = None  # earliest `opened`
    first_reply_ms: int | None = None  # earliest `agent_replied`
    is_open: bool | None = None  # from the status action with the greatest event time
    status_ms: int | None = None

    def last_ms(self) -> int:
        return max(
            t for t in (self.opened_ms, self.first_reply_ms, self.status_ms) if t is not None
        )

    def response_ms(self) -> int | None:
        """First-response time; replies stamped before the opening do not count."""
        if self.opened_ms is None or self.first_reply_ms is None:
            return None
        if self.first_reply_ms < self.opened_ms:
            return None
        return self.first_reply_ms - self.opened_ms


@dataclass(frozen=True, slots=True)
class Score:
    value: int
    ts_ms: int


@dataclass(frozen=True, slots=True)
class Attribute:
    """One customer attribute (an event dimension): the value of the earliest event that
    carried it and of the latest, with their times (ms). Of events at the same
    millisecond, the smallest value is the first and the largest the latest, so that the
    outcome does not depend on the order they arrive in."""

    first: str
    first_ms: int
    latest: str
    latest_ms: int

    def seen(self, value: str, ts: int) -> Attribute:
        first, first_ms, latest, latest_ms = self.first, self.first_ms, self.latest, self.latest_ms
        if ts < first_ms or (ts == first_ms and value < first):
            first, first_ms = value, ts
        if ts > latest_ms or (ts == latest_ms and value > latest):
            latest, latest_ms = value, ts
        return Attribute(first, first_ms, latest, latest_ms)


@dataclass(frozen=True)
class CustomerState:
    customer_id: str
    first_seen_ms: int | None = None
    first_activity_ms: int | None = None
    last_activity_ms: int | None = None
    last_order_ms: int | None = None
    #: the amount of the order at ``last_order_ms`` (the largest, when several share it)
    last_order_micros: int | None = None
    last_login_ms: int | None = None
    orders: int = 0
    placed_micros: int = 0
    refunds: int = 0
    refunded_micros: int = 0
    cancelled: int = 0
    logins: int = 0
    tickets_opened: int = 0
    tickets_resolved: int = 0
    open_tickets: int = 0
    response_ms_sum: int = 0
    responses: int = 0
    tickets_untracked: int = 0  # ticket events refused by the cap
    orders_by_day: dict[int, int] = field(default_factory=dict)
    # the same money in the currencies it came in (millionths), beside the reporting sums
    placed_by_currency: dict[str, int] = field(default_factory=dict)
    refunded_by_currency: dict[str, int] = field(default_factory=dict)
    tickets: dict[str, TicketState] = field(default_factory=dict)
    scores: dict[str, Score] = field(default_factory=dict)
    #: country, channel, shop (contract.events.DIMENSIONS), those the events carried
    attributes: dict[str, Attribute] = field(default_factory=dict)

    @property
    def revenue_micros(self) -> int:
        return self.placed_micros - self.refunded_micros


def _min(current: int | None, value: int) -> int:
    return value if current is None or value < current else current


def _max(current: int | None, value: int) -> int:
    return value if current is None or value > current else current


def _activity(state: CustomerState, ts: int) -> CustomerState:
    return replace(
        state,
        first_activity_ms=_min(state.first_activity_ms, ts),
        last_activity_ms=_max(state.last_activity_ms, ts),
    )


def _add(sums: dict[str, int], currency: str | None, micros: int) -> dict[str, int]:
    return sums if not currency else {**sums, currency: sums.get(currency, 0) + micros}


def _apply_order(
    state: CustomerState, event: OrderEvent, kinds: ActivityKinds, rates: Rates | None
) -> CustomerState:
    ts = event.ts_ms
    # the reporting amount, and the original one under its currency
    if rates is None:
        amount, currency = event.amount_micros, event.currency
    else:
        amount, currency = rates.reporting_micros(event), rates.currency_of(event)
    if event.status == "refunded":
        return replace(
            state,
            refunds=state.refunds + 1,
            refunded_micros=state.refunded_micros + amount,
            refunded_by_currency=_add(state.refunded_by_currency, currency, event.amount_micros),
        )
    if event.status == "cancelled":
        return replace(state, cancelled=state.cancelled + 1)
    day = local_day(ts)
    by_day = {**state.orders_by_day, day: state.orders_by_day.get(day, 0) + 1}
    last, last_amount = state.last_order_ms, state.last_order_micros
    if last is None or ts > last or (ts == last and amount > (last_amount or 0)):
        last_amount = amount
    state = replace(
        state,
        last_order_micros=last_amount,
        orders=state.orders + 1,
        placed_micros=state.placed_micros + amount,
        placed_by_currency=_add(state.placed_by_currency, currency, event.amount_micros),
        last_order_ms=_max(state.last_order_ms, ts),
        orders_by_day=by_day,
    )
    return _activity(state, ts) if "order" in kinds else state


def _apply_login(state: CustomerState, event: LoginEvent, kinds: ActivityKinds) -> CustomerState:
    ts = event.ts_ms
    state = replace(state, logins=state.logins + 1, last_login_ms=_max(state.last_login_ms, ts))
    return _activity(state, ts) if "login" in kinds else state


def _set_status(
    state: CustomerState, ticket: TicketState, is_open: bool, ts: int
) -> tuple[CustomerState, TicketState]:
    if ticket.status_ms is not None and ts < ticket.status_ms:
        return state, ticket
    delta = int(is_open and ticket.is_open is not True) - int(
        not is_open and ticket.is_open is True
    )
    return (
        replace(state, open_tickets=state.open_tickets + delta),
        replace(ticket, is_open=is_open, status_ms=ts),
    )


def _room_for_ticket(state: CustomerState, ts: int) -> CustomerState | None:
    """The state with room for one more ticket, or None when the cap leaves none."""
    if len(state.tickets) < MAX_TICKETS:
        return state
    kept = {
        name: t
        for name, t in state.tickets.items()
        if t.is_open is True or t.last_ms() >= ts - TICKET_HORIZON_MS
    }
    return replace(state, tickets=kept) if len(kept) < MAX_TICKETS else None


def _apply_ticket(state: CustomerState, event: SupportEvent) -> CustomerState:
    ts, action = event.ts_ms, event.action
    if event.ticket_id not in state.tickets:
        room = _room_for_ticket(state, ts)
        if room is None:
            return replace(state, tickets_untracked=state.tickets_untracked + 1)
        state = room
    before = state.tickets.get(event.ticket_id, TicketState())
    ticket = before
    if action == "opened":
        if ticket.opened_ms is None:
            state = replace(state, tickets_opened=state.tickets_opened + 1)
        ticket = replace(ticket, opened_ms=_min(ticket.opened_ms, ts))
        state, ticket = _set_status(state, ticket, True, ts)
    elif action == "reopened":
        state, ticket = _set_status(state, ticket, True, ts)
    elif action == "resolved":
        state = replace(state, tickets_resolved=state.tickets_resolved + 1)
        state, ticket = _set_status(state, ticket, False, ts)
    elif action == "agent_replied":
        ticket = replace(ticket, first_reply_ms=_min(ticket.first_reply_ms, ts))
    old, new = before.response_ms(), ticket.response_ms()
    if old != new:
        state = replace(
            state,
            response_ms_sum=state.response_ms_sum - (old or 0) + (new or 0),
            responses=state.responses - (old is not None) + (new is not None),
        )
    return replace(state, tickets={**state.tickets, event.ticket_id: ticket})


def _apply_support(
    state: CustomerState, event: SupportEvent, kinds: ActivityKinds
) -> CustomerState:
    if event.action == "rated":
        assert event.survey is not None and event.score is not None  # the contract checks it
        current = state.scores.get(event.survey)
        if current is None or event.ts_ms >= current.ts_ms:
            state = replace(
                state, scores={**state.scores, event.survey: Score(event.score, event.ts_ms)}
            )
    else:
        state = _apply_ticket(state, event)
    return _activity(state, event.ts_ms) if "support" in kinds else state


def carried_attributes(event: Event, rates: Rates | None = None) -> dict[str, str]:
    """The customer attributes an event tells (contract.events.ATTRIBUTES): its dimensions,
    and for an order its currency (the default currency when it names none, with
    ``rates``; as the record has it)."""
    carried = event.dimensions()
    if isinstance(event, OrderEvent):
        currency = rates.currency_of(event) if rates is not None else event.currency
        if currency:
            carried = {**carried, "currency": currency}
    return carried


def _attributes(state: CustomerState, carried: dict[str, str], ts: int) -> CustomerState:
    kept = dict(state.attributes)
    for name, value in carried.items():
        had = kept.get(name)
        kept[name] = Attribute(value, ts, value, ts) if had is None else had.seen(value, ts)
    return replace(state, attributes=kept)


def apply_event(
    state: CustomerState, event: Event, kinds: ActivityKinds, rates: Rates | None = None
) -> CustomerState:
    """Fold one accepted, not-yet-seen event into the customer's state.

    With ``rates``, order amounts are summed in the reporting currency (an unknown currency
    raises :class:`processors.currency.UnknownCurrency`; the worker refuses such orders
    before they get here); without, amounts are taken as they are.
    """
    state = replace(state, first_seen_ms=_min(state.first_seen_ms, event.ts_ms))
    carried = carried_attributes(event, rates)
    if carried:
        state = _attributes(state, carried, event.ts_ms)
    if isinstance(event, OrderEvent):
        return _apply_order(state, event, kinds, rates)
    if isinstance(event, LoginEvent):
        return _apply_login(state, event, kinds)
    return _apply_support(state, event, kinds)


def iso(ms: int | None) -> str | None:
    if ms is None:
        return None
    dt = datetime.fromtimestamp(ms / 1000, UTC)
    return dt.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def day_iso(day: int) -> str:
    return datetime.fromtimestamp(day * 86_400, UTC).date().isoformat()


def _latest(state: CustomerState, survey: str) -> int | None:
    score = state.scores.get(survey)
    return None if score is None else score.value


def to_public(state: CustomerState, outlook: Any = None, evaluation: Any = None) -> dict[str, Any]:
    """The customer JSON of docs/metrics.md (Customer state), plus a few support details.

    ``outlook`` (a :class:`processors.forecast.Outlook`) fills P(alive) and expected
    purchases, ``evaluation`` (a :class:`processors.evaluator.Evaluation`) the lifecycle
    status and the risk; without them those fields are null.
    """
    risk = None if evaluation is None else evaluation.risk
    return {
        "customer_id": state.customer_id,
        "first_seen": iso(state.first_seen_ms),
        "first_activity_at": iso(state.first_activity_ms),
        "last_activity_at": iso(state.last_activity_ms),
        "last_order_at": iso(state.last_order_ms),
        "last_order_amount": (
            None if state.last_order_micros is None else state.last_order_micros / MICROS
        ),
        "last_login_at": iso(state.last_login_ms),
        "orders": state.orders,
        "revenue": state.revenue_micros / MICROS,
        "refunds": state.refunds,
        "refunded_amount": state.refunded_micros / MICROS,
        "cancelled_orders": state.cancelled,
        "aov": state.placed_micros / MICROS / state.orders if state.orders else None,
        "revenue_by_currency": {
            c: (state.placed_by_currency.get(c, 0) - state.refunded_by_currency.get(c, 0)) / MICROS
            for c in sorted({*state.placed_by_currency, *state.refunded_by_currency})
        },
        "purchase_days": len(state.orders_by_day),
        "orders_by_day": {day_iso(d): n for d, n in sorted(state.orders_by_day.items())},
        "logins": state.logins,
        "open_tickets": state.open_tickets,
        "tickets_opened": state.tickets_opened,
        "tickets_resolved": state.tickets_resolved,
        "tickets_untracked": state.tickets_untracked,
        "first_response_seconds_avg": (
            state.response_ms_sum / state.responses / 1000 if state.responses else None
        ),
        "nps": _latest(state, "nps"),
        "csat": _latest(state, "csat"),
        "ces": _latest(state, "ces"),
        "attributes": {
            name: {"first": a.first, "latest": a.latest}
            for name, a in sorted(state.attributes.items())
        },
        "status": None if evaluation is None else evaluation.status,
        "p_alive": None if outlook is None else outlook.p_alive,
        "expected_purchases_30d": None if outlook is None else outlook.expected_purchases_30d,
        "expected_purchases_90d": None if outlook is None else outlook.expected_purchases_90d,
        "risk_score": None if risk is None else risk.score,
        "risk_reasons": [] if risk is None else list(risk.reasons),
        "risk_details": {} if risk is None else dict(risk.details),
        "high_value": None if risk is None else risk.high_value,
    }
