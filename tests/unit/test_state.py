"""How one event changes a customer's state: a table of cases, then properties."""

from __future__ import annotations

import random
from typing import Any

import pytest

from contract.events import build_event
from processors.state import CustomerState, apply_event, to_public
from tests.eventgen import fold, random_events

KINDS = frozenset({"order", "login"})
T = 1_710_000_000


def ev(n: int, type_: str, dt: int, **extra: Any) -> dict[str, Any]:
    return {"event_id": f"e{n}", "customer_id": "c", "ts": T + dt, "type": type_, **extra}


def public(events: list[dict[str, Any]], kinds: frozenset[str] = KINDS) -> dict[str, Any]:
    return to_public(fold(events, kinds)["c"])


@pytest.mark.parametrize(
    ("events", "expected"),
    [
        # placed orders count, refunds subtract, cancellations only count
        (
            [
                ev(1, "order", 0, amount=10),
                ev(2, "order", 1, amount=5, status="refunded"),
                ev(3, "order", 2, amount=7, status="cancelled"),
            ],
            {
                "orders": 1,
                "revenue": 5.0,
                "refunds": 1,
                "refunded_amount": 5.0,
                "cancelled_orders": 1,
                "aov": 10.0,
            },
        ),
        # a refund is not order activity
        (
            [ev(1, "order", 0, amount=5, status="refunded")],
            {"orders": 0, "last_activity_at": None, "aov": None, "last_order_at": None},
        ),
        # times out of order: first/last come from event time, not arrival
        (
            [ev(1, "order", 100, amount=1), ev(2, "order", 50, amount=1), ev(3, "login", 10)],
            {
                "first_seen": "2024-03-09T16:00:10.000Z",
                "last_order_at": "2024-03-09T16:01:40.000Z",
                "first_activity_at": "2024-03-09T16:00:10.000Z",
                "logins": 1,
            },
        ),
        # orders per day: two on one day, one on the next
        (
            [
                ev(1, "order", 0, amount=1),
                ev(2, "order", 60, amount=1),
                ev(3, "order", 86_400, amount=1),
            ],
            {"purchase_days": 2, "orders_by_day": {"2024-03-09": 2, "2024-03-10": 1}},
        ),
        # ticket: reply after an hour, resolved, then reopened → open again
        (
            [
                ev(1, "support", 0, ticket_id="k", action="opened"),
                ev(2, "support", 3600, ticket_id="k", action="agent_replied"),
                ev(3, "support", 4000, ticket_id="k", action="resolved"),
                ev(4, "support", 5000, ticket_id="k", action="reopened"),
            ],
            {
                "open_tickets": 1,
                "tickets_opened": 1,
                "tickets_resolved": 1,
                "first_response_seconds_avg": 3600.0,
            },
        ),
        # a late-arriving, earlier `opened` does not reopen a resolved ticket
        (
            [
                ev(1, "support", 500, ticket_id="k", action="resolved"),
                ev(2, "support", 0, ticket_id="k", action="opened"),
            ],
            {"open_tickets": 0, "tickets_opened": 1},
        ),
        # reply stamped before the opening: no response time
        (
            [
                ev(1, "support", 100, ticket_id="k", action="agent_replied"),
                ev(2, "support", 200, ticket_id="k", action="opened"),
            ],
            {"first_response_seconds_avg": None, "open_tickets": 1},
        ),
        # the first reply counts even when it arrives after a later one
        (
            [
                ev(1, "support", 0, ticket_id="k", action="opened"),
                ev(2, "support", 900, ticket_id="k", action="agent_replied"),
                ev(3, "support", 300, ticket_id="k", action="agent_replied"),
            ],
            {"first_response_seconds_avg": 300.0},
        ),
        # latest score by event time; a late older score does not override
        (
            [
                ev(1, "support", 100, ticket_id="k", action="rated", survey="nps", score=9),
                ev(2, "support", 50, ticket_id="k", action="rated", survey="nps", score=2),
                ev(3, "support", 60, ticket_id="k", action="rated", survey="ces", score=7),
            ],
            {"nps": 9, "ces": 7, "csat": None, "open_tickets": 0},
        ),
        # the same event id twice changes nothing
        ([ev(1, "order", 0, amount=3), ev(1, "order", 0, amount=3)], {"orders": 1, "revenue": 3.0}),
    ],
)
def test_event_effects(events: list[dict[str, Any]], expected: dict[str, Any]) -> None:
    got = public(events)
    assert {k: got[k] for k in expected} == expected


@pytest.mark.parametrize(
    ("kinds", "activity"),
    [
        (frozenset({"order", "login"}), "2024-03-09T16:00:20.000Z"),
        (frozenset({"order"}), "2024-03-09T16:00:10.000Z"),
        (frozenset({"order", "login", "support"}), "2024-03-09T16:00:30.000Z"),
    ],
)
def test_activity_kinds_decide_last_activity(kinds: frozenset[str], activity: str) -> None:
    events = [
        ev(1, "order", 10, amount=1),
        ev(2, "login", 20),
        ev(3, "support", 30, ticket_id="k", action="opened"),
    ]
    assert public(events, kinds)["last_activity_at"] == activity


def test_order_of_arrival_does_not_matter_without_ties(rng: random.Random) -> None:
    events = random_events(rng, customers=5, count=300)
    # distinct times per customer, so no tie decides a "latest" value
    for n, event in enumerate(events):
        event["ts"] = T + n * 7
    shuffled = events[:]
    rng.shuffle(shuffled)
    assert fold(events) == fold(shuffled)


def test_open_tickets_never_negative(rng: random.Random) -> None:
    for state in fold(random_events(rng, customers=10, count=2000)).values():
        assert 0 <= state.open_tickets <= state.tickets_opened + len(state.tickets)
        assert state.open_tickets == sum(1 for t in state.tickets.values() if t.is_open)
        assert state.responses == sum(1 for t in state.tickets.values() if t.response_ms())


def test_apply_event_leaves_the_input_unchanged() -> None:
    before = CustomerState("c")
    after = apply_event(before, build_event(ev(1, "order", 0, amount=2)), KINDS)
    assert before == CustomerState("c") and after.orders == 1
