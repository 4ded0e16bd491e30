"""Lifecycle statuses, the alerts their changes raise, and when silence is noticed."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from processors.evaluator import evaluate_seen, plausible_cltv
from processors.forecast import Outlook
from processors.lifecycle import LifecyclePolicy, alerts_for, classify, lookback_days, next_due_ms
from processors.risk import Assessment, RiskPolicy, assess
from processors.state import CustomerState
from tests.eventgen import fold

DAY = 86_400
T0 = 1_700_000_000
P = LifecyclePolicy(
    churn_after_days=90, new_days=30, cold_days=30, followup_days=30, winback_days=120
)
RISK = RiskPolicy()
CALM = Assessment(0.0, ())


def history(*events: dict[str, Any]) -> CustomerState:
    numbered = [{"event_id": f"e{n}", "customer_id": "c", **e} for n, e in enumerate(events)]
    return fold(numbered)["c"]


def order(day: float) -> dict[str, Any]:
    return {"type": "order", "ts": T0 + day * DAY, "amount": 10}


def login(day: float) -> dict[str, Any]:
    return {"type": "login", "ts": T0 + day * DAY}


def at(day: float) -> int:
    return int((T0 + day * DAY) * 1000)


@pytest.mark.parametrize(
    ("case", "events", "now", "risk", "status"),
    [
        ("first order 10 days ago", [order(0)], at(10), CALM, "new"),
        ("customer for 60 days", [order(0), login(50)], at(60), CALM, "active"),
        ("silent for 91 days", [order(0), order(20)], at(111), CALM, "churned"),
        ("silent for exactly 90 days", [order(0)], at(90), CALM, "active"),
        ("at risk beats new", [order(0)], at(5), Assessment(0.6, ("low_csat",)), "at_risk"),
        ("churned beats at risk", [order(0)], at(100), Assessment(0.9, ("silence",)), "churned"),
    ],
)
def test_classify(
    case: str, events: list[dict[str, Any]], now: int, risk: Assessment, status: str
) -> None:
    assert classify(history(*events), now, risk, RISK, P) == status


@pytest.mark.parametrize(("active_before", "status"), [(False, "reactivated"), (True, "active")])
def test_back_after_a_silence_is_reactivated(active_before: bool, status: str) -> None:
    state = history(order(0), order(100))
    assert classify(state, at(110), CALM, RISK, P, active_before) == status


def test_lookback_is_the_churn_window_ending_new_days_ago() -> None:
    start, stop = lookback_days(at(200), P)
    assert stop - start == 90
    assert stop == at(200) // (DAY * 1000) - 30


def test_silence_is_noticed_at_the_next_due_time() -> None:
    state = history(order(0), order(10), order(20))
    due = next_due_ms(state, at(21), RISK, P)
    # rhythm 10 days: the silence rule's limit (max(14, 2 x 10) = 20 days after the last
    # activity) comes before any other threshold, but never later than a day
    assert due == at(22)
    # walking the due times forward never skips the churn instant
    now, seen = at(21), set()
    while now < at(130):
        seen.add(classify(state, now, assess(state, now, RISK), RISK, P))
        now = next_due_ms(state, now, RISK, P)
    # new until day 30, silence (limit 20 days after day 20) from day 40, churned after day 110
    assert seen == {"new", "active", "at_risk", "churned"}


def test_transition_alerts_are_raised_once() -> None:
    state = history(order(0), order(10))
    first = alerts_for(
        state,
        prev_ms=at(50),
        now_ms=at(101),
        old="active",
        new="churned",
        risk=CALM,
        previous_orders=2,
        p=P,
    )
    assert [a.kind for a in first] == ["churned"]
    assert first[0].occasion == "2023-11-24"  # the day of the last activity
    again = alerts_for(
        state,
        prev_ms=at(101),
        now_ms=at(102),
        old="churned",
        new="churned",
        risk=CALM,
        previous_orders=2,
        p=P,
    )
    assert again == []


def test_timed_alerts_fire_when_their_instant_is_crossed() -> None:
    state = history(order(0))
    kinds = [
        a.kind
        for a in alerts_for(
            state,
            prev_ms=at(29),
            now_ms=at(31),
            old="new",
            new="active",
            risk=CALM,
            previous_orders=1,
            p=P,
        )
    ]
    assert sorted(kinds) == ["cold_customer", "post_purchase_followup"]
    later = alerts_for(
        state,
        prev_ms=at(31),
        now_ms=at(60),
        old="active",
        new="active",
        risk=CALM,
        previous_orders=1,
        p=P,
    )
    assert later == []
    winback = alerts_for(
        state,
        prev_ms=at(119),
        now_ms=at(121),
        old="churned",
        new="churned",
        risk=CALM,
        previous_orders=1,
        p=P,
    )
    assert [a.kind for a in winback] == ["winback_due"]


def test_milestones_and_keys() -> None:
    state = history(*[order(d) for d in range(6)])
    found = alerts_for(
        state,
        prev_ms=at(5),
        now_ms=at(5.5),
        old="new",
        new="new",
        risk=CALM,
        previous_orders=4,
        p=P,
    )
    assert [(a.kind, a.occasion) for a in found] == [("milestone", "5")]
    assert found[0].key == "milestone:c:5"


def test_at_risk_alert_carries_reasons_and_score() -> None:
    state = history(order(0))
    risk = Assessment(0.72, ("low_csat", "refunds"), high_value=True)
    (alert,) = alerts_for(
        state,
        prev_ms=at(1),
        now_ms=at(2),
        old="new",
        new="at_risk",
        risk=risk,
        previous_orders=1,
        p=P,
    )
    assert (alert.kind, alert.reasons, alert.risk_score, alert.high_value) == (
        "at_risk",
        ("low_csat", "refunds"),
        0.72,
        True,
    )
    assert alert.details == {"from": "new"}


def test_first_evaluation_raises_only_recent_news() -> None:
    """A tracker started over old history must not announce every churn of the past."""
    long_ago = history(order(0))
    assert (
        alerts_for(
            long_ago,
            prev_ms=None,
            now_ms=at(300),
            old=None,
            new="churned",
            risk=CALM,
            previous_orders=1,
            p=P,
        )
        == []
    )
    just_now = alerts_for(
        long_ago,
        prev_ms=None,
        now_ms=at(90.5),
        old=None,
        new="churned",
        risk=CALM,
        previous_orders=1,
        p=P,
    )
    assert [a.kind for a in just_now] == ["churned"]
    risky = alerts_for(
        history(order(0)),
        prev_ms=None,
        now_ms=at(1),
        old=None,
        new="at_risk",
        risk=Assessment(0.6, ("low_csat",)),
        previous_orders=1,
        p=P,
    )
    assert [a.kind for a in risky] == ["at_risk"]


@pytest.mark.parametrize(
    ("cltv", "kept"),
    [(1234.5, 1234.5), (0.0, 0.0), (1e9, 1e9), (1e56, None), (float("inf"), None),
     (float("nan"), None), (-3.0, None), (None, None)],
)  # fmt: skip
def test_an_implausible_predicted_cltv_is_no_prediction(
    cltv: float | None, kept: float | None
) -> None:
    state = history(order(0), order(10))
    seen = Outlook(p_alive=0.9, expected_purchases_30d=1.0, expected_purchases_90d=2.0, cltv=cltv)
    ev = evaluate_seen(state, datetime.fromtimestamp(at(20) / 1000, UTC), RiskPolicy(),
                       LifecyclePolicy(), seen, high_value_cltv=None)  # fmt: skip
    assert ev.cltv == kept
    assert plausible_cltv(cltv) == kept
