"""The calibration / holdout test of the predictions, on buyers drawn from the very process
the models assume: Poisson purchases while alive, each customer dropping out after a
purchase with some probability, and Gamma-Gamma spend. The predictions made before the cutoff must then match
what came after it, and the at-risk flags must carry news."""

from __future__ import annotations

import random
from datetime import UTC, date, datetime, timedelta

import pytest

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
    ).report
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
    ).report
    assert report["buyers"] == 0 and "purchases" not in report


def test_cdnow_holdout_expectations_are_lifetimes_own_and_the_scores_recompute() -> None:
    """The classic split of the CDNOW sample (calibration through 1997-09-30, holdout
    through 1998-06-30): each model's expected repeat days per calibration frequency equal
    lifetimes' conditional expectations with the same parameters, what came equals the raw
    file, and every score recomputes from the customer rows."""
    import numpy as np
    import pandas as pd
    from lifetimes import BetaGeoFitter, ModifiedBetaGeoFitter, ParetoNBDFitter

    from contract.events import Rejection
    from processors.forecast import day_number
    from retention.cdnow import read_cdnow
    from tests.cdnow_data import cdnow_file, sample_stats

    raw = [item for _, item in read_cdnow(cdnow_file("CDNOW_sample.txt"))]
    assert not any(isinstance(item, Rejection) for item in raw)
    events = sorted((build_event(item) for item in raw), key=lambda e: e.ts_ms)  # type: ignore[arg-type]
    cutoff = datetime(1997, 10, 1, tzinfo=UTC)
    result = holdout_report(
        events, cutoff, 273, ModelOptions("mbgnbd"), RiskPolicy(),
        LifecyclePolicy(churn_after_days=90), frozenset({"order"}),
    )  # fmt: skip
    report, rows = result.report, result.customers
    assert report["holdout_end"][:10] == "1998-07-01" and report["buyers"] == 2357

    stats = sample_stats()
    ids = sorted(stats)
    x, t_x, T = (np.array(c, dtype=float) for c in zip(*(stats[i] for i in ids), strict=True))
    start, end = day_number(date(1997, 10, 1)), day_number(date(1998, 6, 30))
    came: dict[str, set[int]] = {}
    for item in raw:
        assert not isinstance(item, Rejection)
        day = day_number(date.fromisoformat(item["ts"][:10]))
        if start <= day <= end:
            came.setdefault(item["customer_id"], set()).add(day)
    actual = np.array([len(came.get(i, ())) for i in ids], dtype=float)
    capped = np.minimum(x, 7)
    fitters = {
        "bgnbd": BetaGeoFitter,
        "mbgnbd": ModifiedBetaGeoFitter,
        "paretonbd": ParetoNBDFitter,
    }
    for name, fitter in fitters.items():
        model = fitter()
        model.params_ = pd.Series(report["models"][name]["params"])
        want = model.conditional_expected_number_of_purchases_up_to_time(273 / 7, x, t_x, T)
        got = report["models"][name]["purchases"]["by_repeat_days"]
        assert [r["repeat_days"] for r in got] == [*map(str, range(7)), "7+"]
        for row, k in zip(got, range(8), strict=True):
            mask = capped == k
            assert row["customers"] == int(mask.sum())
            assert row["expected_mean"] == pytest.approx(float(np.mean(want[mask])), rel=1e-6)
            assert row["actual"] == int(actual[mask].sum())

    # the scores, recomputed from the rows by brute force
    by_id = {r["customer_id"]: r for r in rows}
    assert [by_id[i]["holdout_days"] for i in ids] == actual.astype(int).tolist()
    for name in fitters:
        alive = np.array([by_id[i][f"{name}_p_alive"] for i in ids])
        silent = actual == 0
        pairs = (1 - alive[silent])[:, None] - (1 - alive[~silent])[None, :]
        auc = float(((pairs > 0) + 0.5 * (pairs == 0)).mean())
        block = report["models"][name]
        assert block["no_purchase"]["auc"] == pytest.approx(auc, rel=1e-9)
        flag = alive < 0.5
        assert block["no_purchase"]["precision"] == pytest.approx(
            (flag & silent).sum() / flag.sum()
        )
        assert block["no_purchase"]["recall"] == pytest.approx((flag & silent).sum() / silent.sum())
        value = np.array([by_id[i][f"{name}_cltv"] for i in ids])
        spent = np.array([by_id[i]["holdout_spend"] for i in ids])
        ranked = sorted(zip(ids, value, spent, strict=True), key=lambda r: (-r[1], r[0]))
        top = sum(r[2] for r in ranked[:236]) / spent.sum()
        assert block["value"]["top_decile_revenue_share"] == pytest.approx(top, rel=1e-9)
        rv, rs = (pd.Series(v).rank().to_numpy() for v in (value, spent))
        assert block["value"]["spearman"] == pytest.approx(np.corrcoef(rv, rs)[0, 1], rel=1e-9)
    evaluated = [r for r in rows if r["status"] != "churned"]
    flagged = [r for r in evaluated if r["at_risk"]]
    quiet = [r for r in evaluated if r["holdout_days"] == 0]
    hits = sum(r["holdout_days"] == 0 for r in flagged)
    assert report["at_risk"]["precision"] == pytest.approx(hits / len(flagged))
    assert report["at_risk"]["recall"] == pytest.approx(hits / len(quiet))
    # read as at-risk alerts at the cut: ordered again within the risk file's 30 days
    window_end = (cutoff + timedelta(days=30)).date().isoformat()
    returned: dict[str, list[int]] = {}
    for r in evaluated:
        kind = "at_risk" if r["at_risk"] else "not_flagged"
        came_back = r["holdout_first_day"] is not None and r["holdout_first_day"] < window_end
        returned.setdefault(kind, [0, 0])[0] += 1
        returned[kind][1] += came_back
    got_outcomes: dict[str, list[int]] = {}
    for row in report["at_risk"]["outcomes"]:
        assert row["pending"] == 0
        counts = got_outcomes.setdefault(row["kind"], [0, 0])
        counts[0] += row["alerts"]
        counts[1] += row["returned"]
    assert got_outcomes == returned and returned["at_risk"][0] == len(flagged)
