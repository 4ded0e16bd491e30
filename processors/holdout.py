"""Do the predictions hold: a calibration / holdout test, as lifetimes' calibration plots and
CLVTools' tracking plots do it.

The history is cut at ``cutoff``. Everything is computed from the events before it, as the
tracker would have seen them then: each customer's state, the fitted purchase and spend
models, P(alive), the purchases expected in the holdout window and the at-risk flags of
the risk rules. Then the ``days`` after the cutoff say what happened:

- purchases: repeat purchase days (distinct order days, the model's unit) expected against
  those that came, in total and by the number of repeat days a customer had made;
- P(alive): customers in tenths of P(alive), each tenth's mean P(alive) against the share
  of them that bought in the holdout;
- spend: the holdout spend the models expect (expected purchases x expected spend per
  purchase) against the one placed;
- at risk: the customers flagged at the cutoff, and how often a flag was right (no order
  in the holdout), beside the same share among those not flagged.

Pure: the backtest gives the events (``retention backtest --holdout``).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

import numpy as np

from contract.events import MICROS, MS_PER_DAY, Event, OrderEvent
from processors.alive_models import MODELS
from processors.evaluator import as_of_day, evaluate
from processors.forecast import (
    DAYS_PER_WEEK,
    History,
    ModelOptions,
    day_number,
    fit_histories,
    outlook,
    spend_from_days,
    stats_from_days,
)
from processors.lifecycle import LifecyclePolicy
from processors.risk import RiskPolicy
from processors.state import CustomerState, apply_event

#: customers with this many repeat days or more are one group in the frequency table
FREQUENCY_CAP = 7


def _calibration(
    events: Sequence[Event], cut_ms: int, kinds: frozenset[str]
) -> tuple[dict[str, CustomerState], dict[str, dict[int, float]]]:
    """States as of the cutoff, and placed amounts per customer and day, each event once."""
    seen: set[tuple[str, str, str]] = set()
    states: dict[str, CustomerState] = {}
    amounts: dict[str, dict[int, float]] = {}
    for event in events:
        if event.ts_ms >= cut_ms:
            continue
        identity = (event.type, event.customer_id, event.event_id)
        if identity in seen:
            continue
        seen.add(identity)
        state = states.get(event.customer_id) or CustomerState(event.customer_id)
        states[event.customer_id] = apply_event(state, event, kinds)
        if isinstance(event, OrderEvent) and event.status == "placed":
            days = amounts.setdefault(event.customer_id, {})
            day = event.ts_ms // MS_PER_DAY
            days[day] = days.get(day, 0.0) + event.amount_micros / MICROS
    return states, amounts


def _holdout(
    events: Sequence[Event], cut_ms: int, end_ms: int
) -> tuple[dict[str, set[int]], dict[str, float]]:
    """Per customer, its distinct order days in the holdout and what it placed there."""
    seen: set[tuple[str, str]] = set()
    days: dict[str, set[int]] = {}
    spent: dict[str, float] = {}
    for event in events:
        if not isinstance(event, OrderEvent) or event.status != "placed":
            continue
        if not cut_ms <= event.ts_ms < end_ms or (event.customer_id, event.event_id) in seen:
            continue
        seen.add((event.customer_id, event.event_id))
        days.setdefault(event.customer_id, set()).add(event.ts_ms // MS_PER_DAY)
        spent[event.customer_id] = spent.get(event.customer_id, 0.0) + event.amount_micros / MICROS
    return days, spent


def holdout_report(
    events: Sequence[Event],
    cutoff: datetime,
    days: int,
    options: ModelOptions,
    policy: RiskPolicy,
    lifecycle: LifecyclePolicy,
    kinds: frozenset[str],
) -> dict[str, Any]:
    cut_ms = int(cutoff.timestamp() * 1000)
    end_ms = cut_ms + days * MS_PER_DAY
    states, amounts = _calibration(events, cut_ms, kinds)
    as_of = as_of_day(cutoff)
    limit = day_number(as_of)
    histories: list[History] = []
    spend: dict[str, float] = {}
    for cid, state in states.items():
        stats = stats_from_days(list(state.orders_by_day), limit)
        if stats is None:
            continue
        spend[cid] = spend_from_days(amounts.get(cid, {}), limit)
        histories.append(History(cid, *stats, spend[cid]))
    report: dict[str, Any] = {
        "cutoff": cutoff.isoformat(),
        "holdout_days": days,
        "customers": len(states),
        "buyers": len(histories),
    }
    if not histories:
        return report
    fit = fit_histories(histories, as_of, options, spend)
    model = MODELS[fit.model]
    x = np.array([h.x for h in histories], dtype=float)
    t_x = np.array([h.t_x for h in histories], dtype=float)
    T = np.array([h.T for h in histories], dtype=float)
    with np.errstate(all="ignore"):
        expected = model.expected_purchases(fit.params, days / DAYS_PER_WEEK, x, t_x, T)
        alive = model.p_alive(fit.params, x, t_x, T)
    came, spent = _holdout(events, cut_ms, end_ms)
    actual = np.array([len(came.get(h.customer_id, ())) for h in histories], dtype=float)
    ok = np.isfinite(expected) & np.isfinite(alive)
    report["model"] = fit.model
    report["params"] = fit.params.as_dict()
    report["purchases"] = {
        "expected": round(float(expected[ok].sum()), 2),
        "actual": int(actual[ok].sum()),
        "by_repeat_days": _by_frequency(x[ok], expected[ok], actual[ok]),
    }
    report["p_alive"] = _by_tenth(alive[ok], actual[ok] > 0)
    report["spend"] = _spend(histories, expected, fit, as_of, states, spend, spent)
    report["at_risk"] = _flags(states, cutoff, policy, lifecycle, fit, came)
    return report


def _by_frequency(x: np.ndarray, expected: np.ndarray, actual: np.ndarray) -> list[dict[str, Any]]:
    rows = []
    capped = np.minimum(x, FREQUENCY_CAP)
    for value in sorted(set(capped.tolist())):
        mask = capped == value
        rows.append(
            {
                "repeat_days": f"{int(value)}+" if value == FREQUENCY_CAP else str(int(value)),
                "customers": int(mask.sum()),
                "expected_mean": round(float(expected[mask].mean()), 4),
                "actual_mean": round(float(actual[mask].mean()), 4),
            }
        )
    return rows


def _by_tenth(alive: np.ndarray, bought: np.ndarray) -> list[dict[str, Any]]:
    rows = []
    tenth = np.minimum((alive * 10).astype(int), 9)
    for n in range(10):
        mask = tenth == n
        if not mask.any():
            continue
        rows.append(
            {
                "p_alive": f"{n / 10:.1f}-{(n + 1) / 10:.1f}",
                "customers": int(mask.sum()),
                "mean_p_alive": round(float(alive[mask].mean()), 4),
                "bought_share": round(float(bought[mask].mean()), 4),
            }
        )
    return rows


def _spend(
    histories: list[History],
    expected: np.ndarray,
    fit: Any,
    as_of: Any,
    states: dict[str, CustomerState],
    spend: dict[str, float],
    spent: dict[str, float],
) -> dict[str, Any]:
    """Expected purchases in the holdout times the expected spend per purchase, summed,
    against what the same customers placed there."""
    total = 0.0
    for h, purchases in zip(histories, expected.tolist(), strict=True):
        seen = outlook(states[h.customer_id], fit, as_of, spend[h.customer_id])
        if seen is not None and seen.expected_spend is not None and np.isfinite(purchases):
            total += purchases * seen.expected_spend
    return {
        "expected": round(total, 2),
        "actual": round(sum(spent.get(h.customer_id, 0.0) for h in histories), 2),
    }


def _flags(
    states: dict[str, CustomerState],
    cutoff: datetime,
    policy: RiskPolicy,
    lifecycle: LifecyclePolicy,
    fit: Any,
    came: dict[str, set[int]],
) -> dict[str, Any]:
    flagged = silent_flagged = others = silent_others = 0
    for cid, state in states.items():
        ev = evaluate(state, cutoff, policy, lifecycle, fit, None)
        if ev.status == "churned":
            continue  # lost already: not a prediction
        silent = not came.get(cid)
        if ev.status == "at_risk":
            flagged += 1
            silent_flagged += silent
        else:
            others += 1
            silent_others += silent
    return {
        "flagged": flagged,
        "flag_right_share": round(silent_flagged / flagged, 4) if flagged else None,
        "not_flagged": others,
        "silent_share_not_flagged": round(silent_others / others, 4) if others else None,
    }


def cutoff_for(last: datetime, days: int) -> datetime:
    """The cutoff that leaves ``days`` whole days of history after it."""
    end = datetime.combine(last.date(), datetime.min.time(), last.tzinfo) + timedelta(days=1)
    return end - timedelta(days=days)
