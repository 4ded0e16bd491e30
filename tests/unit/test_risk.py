"""Risk rules: each one fires on its own evidence and stays quiet without it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from contract.events import MS_PER_DAY
from processors.risk import RiskPolicy, assess, parse_policy, rhythm_days
from processors.state import CustomerState
from streams.risk_file import load_policy
from tests.eventgen import fold

DAY = 86_400
T0 = 1_700_000_000


def history(*events: dict[str, Any]) -> CustomerState:
    numbered = [{"event_id": f"e{n}", "customer_id": "c", **e} for n, e in enumerate(events)]
    return fold(numbered)["c"]


def order(day: float, amount: float = 20, status: str = "placed") -> dict[str, Any]:
    return {"type": "order", "ts": T0 + day * DAY, "amount": amount, "status": status}


def support(day: float, action: str, **extra: Any) -> dict[str, Any]:
    return {"type": "support", "ts": T0 + day * DAY, "ticket_id": "k", "action": action, **extra}


def at(day: float) -> int:
    return int((T0 + day * DAY) * 1000)


POLICY = RiskPolicy()

CASES: list[tuple[str, CustomerState, int, float | None, set[str]]] = [
    # (case, state, now, p_alive, reasons expected)
    ("regular buyer, recent", history(*[order(d) for d in range(0, 100, 10)]), at(105), None, set()),
    # rhythm 10 days: silent 25 days > 2 x 10 and > 14 days
    ("silent past twice its rhythm", history(*[order(d) for d in range(0, 100, 10)]), at(115), None,
     {"silence"}),
    ("one order, silent 40 days", history(order(0)), at(40), None, set()),  # default rhythm 30: limit 60
    ("one order, silent 61 days", history(order(0)), at(61), None, {"silence"}),
    # 10 orders in the first 200 days, none in the last 90: pace dropped
    ("frequency drop", history(*[order(d) for d in range(0, 200, 20)], {"type": "login", "ts": T0 + 285 * DAY}),
     at(290), None, {"frequency_drop"}),
    ("low P(alive), bought twice", history(order(0), order(5)), at(6), 0.1, {"low_p_alive"}),
    ("low P(alive), bought once", history(order(0)), at(1), 0.1, {"low_p_alive"}),
    ("P(alive) at the threshold", history(order(0)), at(1), 0.3, set()),
    ("ticket open 3 days", history(order(0), support(1, "opened")), at(4), None, {"ticket_unresolved"}),
    ("ticket resolved", history(order(0), support(1, "opened"), support(2, "resolved")), at(4), None,
     set()),
    ("csat 2", history(order(0), support(1, "rated", survey="csat", score=2)), at(2), None,
     {"low_csat"}),
    ("csat 3", history(order(0), support(1, "rated", survey="csat", score=3)), at(2), None, set()),
    ("nps 6", history(order(0), support(1, "rated", survey="nps", score=6)), at(2), None,
     {"nps_detractor"}),
    ("nps 7", history(order(0), support(1, "rated", survey="nps", score=7)), at(2), None, set()),
    ("two refunds, 40%", history(order(0, 50), order(1, 50), order(2, 20, "refunded"), order(3, 20, "refunded")),
     at(4), None, {"refunds"}),
    ("one refund", history(order(0, 50), order(1, 50, "refunded")), at(2), None, set()),
]  # fmt: skip


@pytest.mark.parametrize(
    ("case", "state", "now", "p_alive", "reasons"), CASES, ids=[c[0] for c in CASES]
)
def test_rules(
    case: str, state: CustomerState, now: int, p_alive: float | None, reasons: set[str]
) -> None:
    assert set(assess(state, now, POLICY, p_alive).reasons) == reasons


def test_score_combines_weights_as_independent_signals() -> None:
    state = history(order(0), order(5), support(6, "rated", survey="csat", score=1))
    result = assess(state, at(7), POLICY, p_alive=0.05)
    assert result.reasons == ("low_p_alive", "low_csat")
    assert result.score == pytest.approx(1 - (1 - 0.6) * (1 - 0.3))
    assert result.at_risk(POLICY)
    assert not assess(state, at(7), POLICY, p_alive=0.9).at_risk(POLICY)  # csat alone: 0.3


def test_yaml_overrides_defaults() -> None:
    policy = parse_policy(
        yaml.safe_load(
            "threshold: 0.2\nrules:\n  low_csat: {max_score: 3, weight: 0.25}\n  silence: {enabled: false}\n"
        )
    )
    assert policy.threshold == 0.2 and policy.rules.low_csat.max_score == 3
    state = history(order(0), support(1, "rated", survey="csat", score=3))
    result = assess(state, at(200), policy)
    assert result.reasons == ("low_csat",) and result.at_risk(policy)


def test_unknown_yaml_keys_are_refused() -> None:
    with pytest.raises(ValueError):
        parse_policy(yaml.safe_load("rules:\n  silense: {factor: 3}\n"))


def test_rules_file_is_read_over_the_defaults(tmp_path: Path) -> None:
    path = tmp_path / "risk.yml"
    assert load_policy(None) == RiskPolicy()
    path.write_text("")
    assert load_policy(path) == RiskPolicy()  # an empty file keeps every default
    path.write_text("threshold: 0.2\nrules:\n  refunds: {min_count: 3}\n")
    policy = load_policy(path)
    assert (policy.threshold, policy.rules.refunds.min_count) == (0.2, 3)
    assert policy.rules.silence == RiskPolicy().rules.silence


@pytest.mark.parametrize(
    ("threshold", "cltv", "high"),
    [
        (400.0, 500.0, True),
        (500.0, 500.0, True),  # at the quantile counts
        (600.0, 500.0, False),
        (None, 500.0, False),  # no threshold yet (no fit)
        (400.0, None, False),  # no predicted CLTV for this customer
        (0.0, 0.0, False),  # a CLTV of nothing is never high value
    ],
)
def test_high_value_means_predicted_cltv_at_the_threshold(
    threshold: float | None, cltv: float | None, high: bool
) -> None:
    # revenue to date no longer decides: a big past buyer with a small outlook is not high value
    state = history(order(0, 5000))
    result = assess(state, at(1), POLICY, high_value_cltv=threshold, cltv=cltv)
    assert result.high_value is high


def test_rhythm_is_the_mean_gap_between_order_days() -> None:
    state = history(order(0), order(4), order(10))
    assert rhythm_days(state, 30) == 5
    assert rhythm_days(history(order(0)), 30) == 30
    assert state.orders_by_day and min(state.orders_by_day) * MS_PER_DAY <= at(0)
