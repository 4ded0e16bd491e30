"""Do the predictions hold: a calibration / holdout test, as lifetimes' calibration plots and
CLVTools' tracking plots do it.

The history is cut at ``cutoff``. Everything is computed from the events before it, as the
tracker would have seen them then: each customer's state, the purchase and spend models
(each P(alive) model: BG/NBD, MBG/NBD and Pareto/NBD, fitted on the same data), P(alive),
the purchases expected in the holdout window, predicted CLTV and the risk rules' at-risk
flags. Then the ``days`` after the cutoff say what happened:

- purchases: repeat purchase days (distinct order days, the model's unit) expected against
  those that came, in total and by the number of repeat days a customer had made;
- no purchase: P(alive) as a score for "no order in the holdout": the area under its ROC
  curve, and precision and recall of P(alive) < 0.5;
- value: predicted CLTV against the spend placed in the holdout: rank correlation, and the
  share of the holdout's revenue the top tenth by CLTV placed;
- P(alive) in tenths, and the holdout spend the configured model expects against the one
  placed;
- at risk: the customers flagged at the cutoff, with the configured model, read as a
  prediction of no order in the holdout: precision and recall.

Every score can be recomputed from the per-customer rows (``Holdout.customers``).

Pure: the backtest gives the events (``retention backtest --holdout`` or
``--holdout-until``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

import numpy as np

from contract.events import EPOCH, MICROS, MS_PER_DAY, Event, OrderEvent
from processors.alive_models import MODEL_NAMES, MODELS
from processors.evaluator import as_of_day, evaluate_seen
from processors.forecast import (
    DAYS_PER_WEEK,
    Fit,
    History,
    ModelOptions,
    day_number,
    fit_histories,
    outlooks,
    spend_from_days,
    stats_from_days,
    values,
)
from processors.lifecycle import LifecyclePolicy
from processors.outcomes import Raised, tally
from processors.risk import RiskPolicy
from processors.state import CustomerState, apply_event
from processors.windows import local_day

#: customers with this many repeat days or more are one group in the frequency table
FREQUENCY_CAP = 7
#: P(alive) under this reads as a prediction of no purchase, for precision and recall
P_ALIVE_FLAG = 0.5


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
            day = local_day(event.ts_ms)
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
        days.setdefault(event.customer_id, set()).add(local_day(event.ts_ms))
        spent[event.customer_id] = spent.get(event.customer_id, 0.0) + event.amount_micros / MICROS
    return days, spent


@dataclass(frozen=True)
class Holdout:
    """The report (``holdout`` in the backtest's JSON) and one row per customer known at
    the cutoff, from which every score of the report can be recomputed."""

    report: dict[str, Any]
    customers: list[dict[str, Any]]


def holdout_report(
    events: Sequence[Event],
    cutoff: datetime,
    days: int,
    options: ModelOptions,
    policy: RiskPolicy,
    lifecycle: LifecyclePolicy,
    kinds: frozenset[str],
) -> Holdout:
    """Every prediction made at ``cutoff``, scored against the ``days`` after it: for each
    P(alive) model fitted on the same calibration data, and for the risk rules with the
    configured model (``options.alive_model``)."""
    cut_ms = int(cutoff.timestamp() * 1000)
    end_ms = cut_ms + days * MS_PER_DAY
    states, amounts = _calibration(events, cut_ms, kinds)
    came, spent = _holdout(events, cut_ms, end_ms)
    as_of = as_of_day(cutoff)
    limit = day_number(as_of)
    rows: dict[str, dict[str, Any]] = {}
    histories: list[History] = []
    spend: dict[str, float] = {}
    for cid, state in states.items():
        bought = came.get(cid)
        row = rows[cid] = {
            "customer_id": cid,
            "holdout_days": len(bought or ()),
            "holdout_first_day": _iso_day(min(bought)) if bought else None,
            "holdout_spend": round(spent.get(cid, 0.0), 2),
        }
        stats = stats_from_days(list(state.orders_by_day), limit)
        if stats is None:
            continue
        spend[cid] = spend_from_days(amounts.get(cid, {}), limit)
        histories.append(History(cid, *stats, spend[cid]))
        row.update(repeat_days=stats[0], recency_weeks=stats[1], age_weeks=stats[2])
        row["spend_per_repeat"] = spend[cid]
    report: dict[str, Any] = {
        "cutoff": cutoff.isoformat(),
        "holdout_days": days,
        "holdout_end": (cutoff + timedelta(days=days)).isoformat(),
        "customers": len(states),
        "buyers": len(histories),
    }
    if not histories:
        return Holdout(report, list(rows.values()))
    x, t_x, T = (
        np.array(c, dtype=float) for c in zip(*((h.x, h.t_x, h.T) for h in histories), strict=True)
    )
    m = np.array([h.spend for h in histories], dtype=float)
    ids = np.array([h.customer_id for h in histories])
    actual = np.array([len(came.get(h.customer_id, ())) for h in histories], dtype=float)
    # money to the cent, as the customer rows carry it
    placed = np.array([round(spent.get(h.customer_id, 0.0), 2) for h in histories], dtype=float)
    fits: dict[str, Fit] = {}
    scored: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
    report["models"] = {}
    for name in MODEL_NAMES:
        fit = fits[name] = fit_histories(
            histories, as_of, replace(options, alive_model=name), spend
        )
        scores = scored[name] = _scores(fit, days, x, t_x, T, m)
        for h, *numbers in zip(histories, *scores, strict=True):
            for what, value in zip(("p_alive", "expected", "cltv"), numbers, strict=True):
                rows[h.customer_id][f"{name}_{what}"] = _number(value)
        report["models"][name] = _model_block(fit, scores, x, actual, placed, ids)
    fit = fits[options.alive_model]
    chosen = report["models"][options.alive_model]
    report["model"] = fit.model
    report["params"] = chosen["params"]
    report["purchases"] = chosen["purchases"]
    alive, expected, _ = scored[options.alive_model]
    ok = np.isfinite(alive)
    report["p_alive"] = _by_tenth(alive[ok], actual[ok] > 0)
    report["spend"] = _spend(fit, x, t_x, T, m, expected, placed)
    report["at_risk"] = _flags(states, cutoff, policy, lifecycle, fit, came, rows, end_ms)
    return Holdout(report, list(rows.values()))


def _iso_day(day: int) -> str:
    return (EPOCH + timedelta(days=day)).date().isoformat()


def _number(value: float) -> float | None:
    return float(value) if np.isfinite(value) else None


def _scores(
    fit: Fit, days: int, x: np.ndarray, t_x: np.ndarray, T: np.ndarray, m: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per buyer: P(alive) at the cutoff, repeat purchase days expected in the holdout,
    and predicted CLTV (NaN where a number overflows or there is no spend model)."""
    model = MODELS[fit.model]
    with np.errstate(all="ignore"):
        alive = model.p_alive(fit.params, x, t_x, T)
        expected = model.expected_purchases(fit.params, days / DAYS_PER_WEEK, x, t_x, T)
    _, value = values(fit, x, t_x, T, m)
    return alive, expected, value


def _model_block(
    fit: Fit,
    scores: tuple[np.ndarray, np.ndarray, np.ndarray],
    x: np.ndarray,
    actual: np.ndarray,
    placed: np.ndarray,
    ids: np.ndarray,
) -> dict[str, Any]:
    alive, expected, value = scores
    ok = np.isfinite(expected) & np.isfinite(alive)
    silent = actual == 0
    block: dict[str, Any] = {
        "params": fit.params.as_dict(),
        "log_likelihood": fit.log_likelihood,
        "purchases": {
            "expected": round(float(expected[ok].sum()), 2),
            "actual": int(actual[ok].sum()),
            "by_repeat_days": _by_frequency(x[ok], expected[ok], actual[ok]),
        },
        # P(alive) read as a score for "no purchase in the holdout"
        "no_purchase": {
            "silent": int(silent[ok].sum()),
            "auc": _auc(1.0 - alive[ok], silent[ok]),
            **_precision_recall(alive[ok] < P_ALIVE_FLAG, silent[ok]),
        },
    }
    valued = np.isfinite(value)
    block["value"] = _value(value[valued], placed[valued], ids[valued]) if valued.any() else None
    return block


def _by_frequency(x: np.ndarray, expected: np.ndarray, actual: np.ndarray) -> list[dict[str, Any]]:
    """Per number of repeat days in the calibration (the last row those with
    :data:`FREQUENCY_CAP` or more): the holdout's repeat days, expected and come."""
    rows = []
    capped = np.minimum(x, FREQUENCY_CAP)
    for value in sorted(set(capped.tolist())):
        mask = capped == value
        rows.append(
            {
                "repeat_days": f"{int(value)}+" if value == FREQUENCY_CAP else str(int(value)),
                "customers": int(mask.sum()),
                "expected": float(expected[mask].sum()),
                "actual": int(actual[mask].sum()),
                "expected_mean": float(expected[mask].mean()),
                "actual_mean": float(actual[mask].mean()),
            }
        )
    return rows


def _auc(score: np.ndarray, positive: np.ndarray) -> float | None:
    """The area under the ROC curve: the chance that a positive scores above a negative,
    ties counting half (Mann-Whitney, from mid-ranks)."""
    n_pos = int(positive.sum())
    n_neg = positive.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return None
    from scipy.stats import rankdata  # slow to import, and only the scores need it

    ranks = rankdata(score)
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def _precision_recall(flagged: np.ndarray, positive: np.ndarray) -> dict[str, Any]:
    hits = int((flagged & positive).sum())
    return {
        "flagged": int(flagged.sum()),
        "precision": hits / int(flagged.sum()) if flagged.any() else None,
        "recall": hits / int(positive.sum()) if positive.any() else None,
    }


def _value(value: np.ndarray, placed: np.ndarray, ids: np.ndarray) -> dict[str, Any]:
    """Predicted CLTV against the spend placed in the holdout: Spearman's rank correlation,
    and the share of the holdout's revenue placed by the tenth of buyers (rounded up) valued
    highest, ties in value taken in customer id order."""
    top = max(1, -(-value.size // 10))
    order = np.lexsort((ids, -value))
    total = float(placed.sum())
    from scipy.stats import spearmanr

    rho = spearmanr(value, placed).statistic if value.size > 1 else np.nan
    return {
        "customers": int(value.size),
        "spearman": float(rho) if np.isfinite(rho) else None,
        "top_decile": top,
        "top_decile_revenue_share": float(placed[order[:top]].sum()) / total if total else None,
    }


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
    fit: Fit,
    x: np.ndarray,
    t_x: np.ndarray,
    T: np.ndarray,
    m: np.ndarray,
    expected: np.ndarray,
    placed: np.ndarray,
) -> dict[str, Any]:
    """Expected purchases in the holdout times the expected spend per purchase, summed,
    against what the same customers placed there."""
    spends, _ = values(fit, x, t_x, T, m)
    with np.errstate(all="ignore"):
        each = expected * spends
    return {
        "expected": round(float(each[np.isfinite(each)].sum()), 2),
        "actual": round(float(placed.sum()), 2),
    }


def _flags(
    states: dict[str, CustomerState],
    cutoff: datetime,
    policy: RiskPolicy,
    lifecycle: LifecyclePolicy,
    fit: Fit,
    came: dict[str, set[int]],
    rows: dict[str, dict[str, Any]],
    end_ms: int,
) -> dict[str, Any]:
    """The risk rules' at-risk flags at the cutoff read as a prediction of "no order in the
    holdout", over the customers not churned already (a loss, not a prediction); and read
    as at-risk alerts raised at the cutoff, their outcomes as ``retention alerts
    --outcomes`` counts them (the risk file's window), beside the same count for the
    customers not flagged."""
    flagged, silent = [], []
    raised: list[Raised] = []
    seen = outlooks(list(states.values()), fit, as_of_day(cutoff))
    at_ms = int(cutoff.timestamp() * 1000) - 1  # the last instant the tracker saw
    for (cid, state), outlook in zip(states.items(), seen, strict=True):
        ev = evaluate_seen(state, cutoff, policy, lifecycle, outlook, None)
        rows[cid]["status"] = ev.status
        rows[cid]["at_risk"] = ev.status == "at_risk"
        if ev.status == "churned":
            continue
        flagged.append(ev.status == "at_risk")
        silent.append(not came.get(cid))
        if ev.status == "at_risk":
            raised.append(Raised(cid, cid, "at_risk", policy.bands.of(ev.risk.score) or "", at_ms))
        else:
            raised.append(Raised(cid, cid, "not_flagged", "", at_ms))
    f, s = np.array(flagged, dtype=bool), np.array(silent, dtype=bool)
    others = ~f
    after = {
        cid: CustomerState(cid, orders_by_day=dict.fromkeys(days, 1)) for cid, days in came.items()
    }
    return {
        "customers": int(f.size),
        "silent": int(s.sum()),
        **_precision_recall(f, s),
        "flag_right_share": round(float(s[f].mean()), 4) if f.any() else None,
        "not_flagged": int(others.sum()),
        "silent_share_not_flagged": round(float(s[others].mean()), 4) if others.any() else None,
        "outcomes": tally(raised, after, policy.outcome_window_days, end_ms).rows(),
        "outcome_window_days": policy.outcome_window_days,
    }


def cutoff_for(last: datetime, days: int) -> datetime:
    """The cutoff that leaves ``days`` whole days of history after it."""
    end = datetime.combine(last.date(), datetime.min.time(), last.tzinfo) + timedelta(days=1)
    return end - timedelta(days=days)
