"""Whether an alert worked: an order on one of the window's days after the alert's day."""

from __future__ import annotations

from contract.events import MS_PER_DAY
from processors.outcomes import Raised, outcome, tally
from processors.state import CustomerState

DAY0 = 20_000  # the alert's day number
AT = DAY0 * MS_PER_DAY + 9 * 3_600_000  # 09:00 that day


def buyer(*days: int) -> CustomerState:
    return CustomerState("c", orders=len(days), orders_by_day={DAY0 + d: 1 for d in days})


def test_an_order_within_the_window_after_the_alert_day_is_a_return() -> None:
    alert = Raised("at_risk:c:x", "c", "at_risk", "medium", AT)
    before_end = (DAY0 + 5) * MS_PER_DAY
    after_end = (DAY0 + 31) * MS_PER_DAY
    assert outcome(alert, buyer(3), 30, before_end) == "returned"
    assert outcome(alert, buyer(30), 30, after_end) == "returned"
    # the alert's own day and the days before it do not count; nor the day after the window
    assert outcome(alert, buyer(0, -4), 30, before_end) == "pending"
    assert outcome(alert, buyer(0, 31), 30, after_end) == "not_returned"
    assert outcome(alert, None, 30, after_end - 1) == "pending"
    assert outcome(alert, None, 30, after_end) == "not_returned"


def test_a_late_order_changes_the_outcome_when_it_is_read() -> None:
    alert = Raised("at_risk:c:x", "c", "at_risk", "high", AT)
    later = (DAY0 + 60) * MS_PER_DAY
    assert outcome(alert, buyer(), 30, later) == "not_returned"
    assert outcome(alert, buyer(12), 30, later) == "returned"


def test_outcomes_are_counted_by_kind_and_band_with_a_rate_of_the_decided() -> None:
    now = (DAY0 + 40) * MS_PER_DAY
    raised = [
        Raised("a1", "a", "at_risk", "high", AT),
        Raised("b1", "b", "at_risk", "high", AT),
        Raised("c1", "c", "at_risk", "medium", AT),
        Raised("d1", "d", "at_risk", "high", now - MS_PER_DAY),
        Raised("e1", "e", "milestone", "", AT),
    ]
    states = {
        "a": CustomerState("a", orders=1, orders_by_day={DAY0 + 2: 1}),
        "c": CustomerState("c", orders=1, orders_by_day={DAY0 + 29: 1}),
    }
    rows = {(r["kind"], r["band"]): r for r in tally(raised, states, 30, now).rows()}
    high = rows[("at_risk", "high")]
    assert (high["alerts"], high["returned"], high["not_returned"], high["pending"]) == (
        3,
        1,
        1,
        1,
    )
    assert high["return_rate"] == 0.5
    assert rows[("at_risk", "medium")]["return_rate"] == 1.0
    assert rows[("milestone", None)]["not_returned"] == 1


def test_a_logged_alert_reads_back_whatever_its_customer_id() -> None:
    raised = Raised("k", "id|with|bars", "at_risk", "low", AT)
    assert Raised.decode("k", raised.encode()) == raised
