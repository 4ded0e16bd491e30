"""What an alert says to a person: bands, each reason's numbers and sentence, the next
step from the playbook, the stakes, escalation, and the timers of the risk file."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
from pydantic import ValidationError

from contract.events import MICROS, MS_PER_DAY
from processors.alerts import Alert
from processors.evidence import evidence, stakes
from processors.lifecycle import alerts_for, escalated, lifecycle_policy
from processors.risk import PLAYBOOK, Assessment, RiskPolicy, assess, parse_policy
from processors.state import CustomerState

NOW = datetime(2026, 6, 1, tzinfo=UTC)
NOW_MS = int(NOW.timestamp() * 1000)


def customer(order_days_ago: list[int], **extra: object) -> CustomerState:
    days = {NOW_MS // MS_PER_DAY - d: 1 for d in order_days_ago}
    last = NOW_MS - min(order_days_ago) * MS_PER_DAY
    fields: dict[str, object] = {
        "customer_id": "c-1",
        "first_seen_ms": NOW_MS - max(order_days_ago) * MS_PER_DAY,
        "first_activity_ms": NOW_MS - max(order_days_ago) * MS_PER_DAY,
        "last_activity_ms": last,
        "last_order_ms": last,
        "last_order_micros": 45_500_000,
        "orders": len(order_days_ago),
        "placed_micros": 61_000_000 * len(order_days_ago),
        "orders_by_day": days,
    }
    fields.update(extra)
    return CustomerState(**fields)  # type: ignore[arg-type]


def test_bands_cut_the_score_where_the_file_says() -> None:
    policy = RiskPolicy()
    assert [policy.bands.of(s) for s in (0.1, 0.5, 0.74, 0.75, 1.0)] == [
        "low",
        "medium",
        "medium",
        "high",
        "high",
    ]
    assert policy.bands.of(None) is None
    custom = parse_policy({"bands": {"medium": 0.3, "high": 0.6}})
    assert custom.bands.of(0.35) == "medium" and custom.bands.of(0.6) == "high"
    with pytest.raises(ValidationError, match="high must be above medium"):
        parse_policy({"bands": {"medium": 0.7, "high": 0.6}})


def test_silence_says_how_long_and_against_what_rhythm() -> None:
    # orders every 11 days, then silence for 53
    state = customer([53, 64, 75, 86, 97])
    policy = RiskPolicy()
    risk = assess(state, NOW_MS, policy)
    assert "silence" in risk.reasons
    [silence] = [e for e in evidence(risk.reasons, risk.details, policy) if e.reason == "silence"]
    assert (silence.unit, round(silence.observed), silence.expected) == ("days", 53, 11.0)
    assert silence.threshold == pytest.approx(22.0)
    assert silence.text == (
        "No activity for 53 days; this customer usually orders every 11 days (limit 22 days)."
    )
    assert silence.next_step == PLAYBOOK["silence"]


def test_every_reason_has_numbers_a_sentence_and_a_next_step() -> None:
    policy = parse_policy({"playbook": {"refunds": "Check the parcel service."}})
    details = {
        "silent_days": 40.0,
        "limit_days": 30.0,
        "recent_orders": 1.0,
        "expected_orders": 6.0,
        "window_days": 90.0,
        "p_alive": 0.12,
        "open_ticket_hours": 80.0,
        "csat": 1.0,
        "nps": 3.0,
        "refund_share": 0.4,
        "refunds": 3.0,
    }
    reasons = tuple(PLAYBOOK)
    found = {e.reason: e for e in evidence(reasons, details, policy)}
    assert list(found) == list(reasons)
    assert found["frequency_drop"].text == (
        "1 order in the last 90 days; at their earlier pace 6.0 orders were expected."
    )
    assert (found["frequency_drop"].observed, found["frequency_drop"].expected) == (1.0, 6.0)
    assert found["low_p_alive"].text.startswith("The chance this customer is still buying is 12%")
    assert found["ticket_unresolved"].text == (
        "A support ticket has been open for 3.3 days (limit 48 hours)."
    )
    assert found["low_csat"].threshold == 2 and found["nps_detractor"].threshold == 6
    assert found["refunds"].text == "3 refunds, 40% of what they spent refunded (limit 30%)."
    assert found["refunds"].next_step == "Check the parcel service."
    assert all(e.next_step and e.text.endswith(".") for e in found.values())
    # an assessment without a reason's numbers says nothing it cannot back
    assert evidence(("silence",), {}, policy) == []


def test_the_playbook_knows_only_real_reasons() -> None:
    with pytest.raises(ValidationError, match="unknown reasons"):
        parse_policy({"playbook": {"silense": "typo"}})
    with pytest.raises(ValidationError, match="1 to 500"):
        parse_policy({"playbook": {"silence": " "}})


def test_stakes_are_rounded_money_in_the_reporting_currency() -> None:
    state = customer([10, 40], refunded_micros=1_000_000)
    got = stakes(state, "EUR", 792.391, 512.4449)
    assert got == {
        "currency": "EUR",
        "cltv": 792.39,
        "cltv_at_risk": 512.44,
        "revenue": 121.0,
        "orders": 2,
        "aov": 61.0,
        "last_order_at": "2026-05-22T00:00:00.000Z",
        "last_order_amount": 45.5,
    }
    assert stakes(CustomerState("c-2"), "USD", None, None)["aov"] is None
    assert state.revenue_micros == 121 * MICROS


def test_escalation_needs_a_new_reason_or_a_higher_band() -> None:
    bands = RiskPolicy().bands
    base = Assessment(0.6, ("silence",))
    assert not escalated(base, bands, ("silence",), 0.6)
    assert not escalated(base, bands, ("silence", "low_csat"), 0.8)  # better, not worse
    assert escalated(Assessment(0.6, ("silence", "low_csat")), bands, ("silence",), 0.6)
    assert escalated(Assessment(0.8, ("silence",)), bands, ("silence",), 0.6)
    assert not escalated(Assessment(0.7, ("silence",)), bands, ("silence",), 0.55)


def test_a_customer_already_at_risk_who_gets_worse_raises_one_escalation() -> None:
    state = customer([53, 64, 75])
    policy = lifecycle_policy(90, RiskPolicy().timers)
    bands = RiskPolicy().bands
    worse = Assessment(0.8, ("silence", "low_csat"))

    def raised(risk: Assessment, reasons: tuple[str, ...], score: float) -> list[Alert]:
        return alerts_for(
            state,
            prev_ms=NOW_MS - 3_600_000,
            now_ms=NOW_MS,
            old="at_risk",
            new="at_risk",
            risk=risk,
            previous_orders=state.orders,
            p=policy,
            bands=bands,
            previous_reasons=reasons,
            previous_score=score,
        )

    [alert] = [a for a in raised(worse, ("silence",), 0.6) if a.kind == "risk_escalated"]
    assert alert.details == {"from_reasons": ["silence"]}
    # the same step seen again by another evaluation has the same key: sent once
    [again] = [a for a in raised(worse, ("silence",), 0.6) if a.kind == "risk_escalated"]
    assert again.key == alert.key and "high" in alert.key
    assert not [a for a in raised(worse, worse.reasons, 0.8) if a.kind == "risk_escalated"]


def test_timers_come_from_the_risk_file_and_are_checked() -> None:
    policy = parse_policy({"timers": {"cold_days": 14, "winback_days": 60, "milestones": [3, 1]}})
    life = lifecycle_policy(45, policy.timers)
    assert (life.churn_after_days, life.cold_days, life.followup_days, life.winback_days) == (
        45,
        14,
        30,
        60,
    )
    assert life.milestones == (1, 3)
    assert lifecycle_policy(90, RiskPolicy().timers).milestones == (5, 10, 25, 50, 100)
    with pytest.raises(ValidationError):
        parse_policy({"timers": {"cold_days": 0}})
    with pytest.raises(ValidationError, match="distinct"):
        parse_policy({"timers": {"milestones": [5, 5]}})


def test_an_alert_keeps_its_evidence_and_stakes_on_the_wire() -> None:
    alert = Alert(
        "at_risk",
        "c-1",
        NOW,
        "2026-06-01",
        reasons=("silence",),
        risk_score=0.5,
        band="medium",
        evidence=({"reason": "silence", "text": "No activity for 53 days."},),
        stakes={"currency": "USD", "cltv": 10.0},
    )
    data = alert.as_dict()
    assert data["version"] == 2 and data["band"] == "medium"
    assert Alert.decode(alert.encode()) == alert
    # an alert of the first version still decodes
    old = {k: v for k, v in data.items() if k not in ("version", "band", "evidence", "stakes")}
    assert Alert.decode(json.dumps(old)).evidence == ()


def test_an_alert_links_to_the_customer_page_when_the_web_view_has_an_address() -> None:
    from processors.evaluator import Evaluation, explained
    from processors.notify_messages import slack_message

    state = customer([53, 64, 75])
    ev = Evaluation("at_risk", Assessment(0.5, ("silence",)), 0.4, 1.0, 50.0, 100.0)
    raised = Alert("at_risk", "c 1/x", NOW, "2026-06-01")
    assert explained(raised, state, ev, RiskPolicy(), "USD").url is None
    linked = explained(raised, state, ev, RiskPolicy(), "USD", "https://r.shop.example/")
    assert linked.url == "https://r.shop.example/customers/c%201%2Fx"
    context = str(slack_message(linked)["blocks"][-1])
    assert "<https://r.shop.example/customers/c%201%2Fx|open the customer>" in context
