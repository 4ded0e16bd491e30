"""The calibration / holdout test of the predictions, on buyers drawn from the very process
the models assume: Poisson purchases while alive, each customer dropping out after a
purchase with some probability, and Gamma-Gamma spend. The predictions made before the cutoff must then match
what came after it, and the at-risk flags must carry news."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

from contract.events import Event, build_event
from processors.forecast import ModelOptions
from processors.holdout import cutoff_for, holdout_report
from processors.lifecycle import LifecyclePolicy
from processors.risk import RiskPolicy

START = datetime(2024, 1, 1, tzinfo=UTC)
DAYS = 540


def buyers(n: int, seed: int) -> list[Event]:
    rng = random.Random(seed)
    events: list[Event] = []
    for c in range(n):
        rate = rng.gammavariate(1.5, 1 / 60)  # purchases per day
        drop = rng.betavariate(1.2, 4.0)
        # spend as the Gamma-Gamma model has it: amounts Gamma(p, nu), nu ~ Gamma(q, gamma)
        nu = rng.gammavariate(4.0, 1 / 15.0)
        day = rng.uniform(0, 120)
        k = 0
        while day < DAYS:
            when = START + timedelta(days=day)
            raw = {"event_id": f"o{c}-{k}", "customer_id": f"c{c}", "ts": when.isoformat(),
                   "type": "order", "amount": round(rng.gammavariate(6.0, 1 / nu), 2)}  # fmt: skip
            events.append(build_event(raw))
            k += 1
            if rng.random() < drop:
                break
            day += rng.expovariate(rate)
    return events


def test_predictions_made_before_the_cutoff_hold_after_it() -> None:
    events = buyers(1500, seed=4)
    last = max(e.ts for e in events)
    report = holdout_report(
        events,
        cutoff_for(last, 120),
        120,
        ModelOptions("mbgnbd"),
        RiskPolicy(),
        LifecyclePolicy(churn_after_days=180),
        frozenset({"order"}),
    )
    purchases = report["purchases"]
    assert purchases["actual"] > 100
    assert abs(purchases["expected"] - purchases["actual"]) / purchases["actual"] < 0.25, report
    # the customers thought most alive bought more often than those thought least alive
    tenths = report["p_alive"]
    assert tenths[-1]["bought_share"] > tenths[0]["bought_share"] + 0.2, tenths
    flags = report["at_risk"]
    assert flags["flagged"] > 0
    assert flags["flag_right_share"] > flags["silent_share_not_flagged"], flags
    spend = report["spend"]
    assert abs(spend["expected"] - spend["actual"]) / spend["actual"] < 0.35, spend


def test_a_history_without_buyers_before_the_cutoff_reports_no_prediction() -> None:
    events = buyers(3, seed=1)
    first = min(e.ts for e in events)
    report = holdout_report(
        events, first, 30, ModelOptions(), RiskPolicy(), LifecyclePolicy(), frozenset({"order"})
    )
    assert report["buyers"] == 0 and "purchases" not in report
