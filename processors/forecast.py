"""Each customer's forecast: P(alive), expected purchases, expected spend and predicted
CLTV, from the chosen P(alive) model (:mod:`processors.alive_models`) and the spend model
fitted together. Pure. The records (:class:`Fit`, :class:`Outlook`, ...) and the purchase
statistics are in :mod:`processors.fits`; one customer's outlook without numpy is in
:mod:`processors.customer_outlook`.

The purchase statistics come from each customer's placed orders per day (``od:<id>``),
which the batch script keeps live: x = days with an order − 1, t_x and T in weeks from the
first order day (docs/alerts.md, "P(alive) and predicted CLTV"). The leader refits the P(alive)
model chosen by ``RETENTION_ALIVE_MODEL`` and the Gamma-Gamma spend model together and
stores both in one document under ``bgnbd`` (the key keeps its first model's name), with
the as-of day and the CLTV horizon and discount, so every reader computes P(alive),
expected purchases, spend and CLTV against the same parameters.

Spend per purchase. Gamma-Gamma wants each repeat buyer's mean value of its repeat purchase
days (the first day left out), which needs the amount of every order day. The store keeps
order counts per day and the customer's placed and refunded totals only, so live fits use
an approximation: the customer's net revenue over its order days, first day included
(:func:`approximate_spend`). A backtest has the events and passes the exact values
(:func:`spend_from_days`) instead, so its figures are the model's own.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from datetime import date

import numpy as np

from processors.alive_models import MODELS
from processors.cltv import cltv
from processors.fits import (
    DAYS_PER_WEEK,
    DEFAULT_MODEL,
    NO_VALUE,
    Fit,
    History,
    ModelOptions,
    ModelSettings,
    Outlook,
    SpendFit,
    approximate_spend,
    customer_spend,
    day_number,
    model_options,
    spend_from_days,
    stats_from_days,
)
from processors.fitting import FitError, Floats
from processors.gamma_gamma import correlation, expected_spend, repeat_buyers
from processors.gamma_gamma import fit as fit_spend
from processors.state import CustomerState

# the records live in processors/fits.py, so that readers need no numpy; they are
# named here as well, beside the numerics that use them
__all__ = [
    "DAYS_PER_WEEK",
    "DEFAULT_MODEL",
    "NO_VALUE",
    "Fit",
    "History",
    "ModelOptions",
    "ModelSettings",
    "Outlook",
    "SpendFit",
    "approximate_spend",
    "customer_spend",
    "day_number",
    "fit_histories",
    "fit_spend_model",
    "model_options",
    "outlook",
    "outlooks",
    "spend_from_days",
    "stats_from_days",
    "values",
]

logger = logging.getLogger(__name__)


def _columns(histories: list[History]) -> tuple[Floats, Floats, Floats]:
    x, t_x, T = (
        np.array(c, dtype=np.float64)
        for c in zip(*((h.x, h.t_x, h.T) for h in histories), strict=True)
    )
    return x, t_x, T


def _spends(histories: list[History], exact: Mapping[str, float] | None) -> Floats:
    if exact is None:
        return np.array([h.spend for h in histories], dtype=np.float64)
    return np.array([exact.get(h.customer_id, 0.0) for h in histories], dtype=np.float64)


def fit_spend_model(x: Floats, spend: Floats) -> SpendFit | None:
    """Gamma-Gamma over the repeat buyers; None without one, or when the fit has no finite
    population mean (q <= 1): a spend forecast from it would be infinite."""
    buyers, _ = repeat_buyers(x, spend)
    if buyers.size == 0:
        return None
    try:
        params = fit_spend(x, spend)
    except FitError as exc:
        logger.warning("Gamma-Gamma fit did not converge", extra={"error": str(exc)})
        params = exc.best
    if params.q <= 1:
        logger.warning("Gamma-Gamma fit has no finite mean spend", extra=params.as_dict())
        return None
    return SpendFit(params, correlation(x, spend), int(buyers.size))


def fit_histories(
    histories: list[History],
    as_of: date,
    options: ModelOptions,
    spend: Mapping[str, float] | None = None,
) -> Fit:
    """Fit the chosen P(alive) model and the spend model (pure, CPU-bound)."""
    model = MODELS[options.alive_model]
    x, t_x, T = _columns(histories)
    try:
        params = model.fit(x, t_x, T)
    except FitError as exc:
        # data far from the model's assumptions: keep the best point found, and say so
        logger.warning(f"{model.title} fit did not converge", extra={"error": str(exc)})
        params = exc.best
    with np.errstate(all="ignore"):
        total = float(np.sum(model.log_likelihood(params, x, t_x, T)))
    return Fit(
        params,
        as_of,
        len(histories),
        options.alive_model,
        total if np.isfinite(total) else None,
        fit_spend_model(x, _spends(histories, spend)),
        options.cltv_months,
        options.cltv_discount_monthly,
    )


def values(fit: Fit, x: Floats, t_x: Floats, T: Floats, spend: Floats) -> tuple[Floats, Floats]:
    """Per customer, expected spend per purchase and predicted CLTV (NaN without a spend
    model or where the numbers overflow)."""
    if fit.spend is None:
        nan = np.full_like(x, np.nan)
        return nan, nan.copy()
    model = MODELS[fit.model]
    with np.errstate(all="ignore"):
        spends = expected_spend(fit.spend.params, x, spend)
        totals = cltv(
            lambda t: model.expected_purchases(fit.params, t, x, t_x, T),
            spends,
            fit.cltv_months,
            fit.cltv_discount_monthly,
        )
    return spends, totals


def outlook(
    state: CustomerState, model: Fit, as_of: date, spend: float | None = None
) -> Outlook | None:
    """P(alive), purchases expected in 30 and 90 days, expected spend and predicted CLTV,
    for a customer who has ordered; ``spend`` overrides the live approximation."""
    limit = day_number(as_of)
    stats = stats_from_days(list(state.orders_by_day), limit)
    if stats is None:
        return None
    x, t_x, T = ([float(v)] for v in stats)
    p, alive = model.params, MODELS[model.model]
    with np.errstate(all="ignore"):
        numbers = (
            float(alive.p_alive(p, x, t_x, T)[0]),
            float(alive.expected_purchases(p, 30 / DAYS_PER_WEEK, x, t_x, T)[0]),
            float(alive.expected_purchases(p, 90 / DAYS_PER_WEEK, x, t_x, T)[0]),
        )
    if not all(np.isfinite(numbers)):
        return None  # parameters from a fit that went astray: no number beats a wrong one
    m = customer_spend(state, limit) if spend is None else spend
    arrays = (np.array(v) for v in (x, t_x, T, [m]))
    spends, totals = values(model, *arrays)
    money = (float(spends[0]), float(totals[0]))
    if not all(np.isfinite(money)):
        return Outlook(*numbers)
    return Outlook(*numbers, *money)


def outlooks(
    states: Sequence[CustomerState],
    model: Fit,
    as_of: date,
    spends: Mapping[str, float] | None = None,
) -> list[Outlook | None]:
    """:func:`outlook` of many customers, computed on arrays: the same numbers element by
    element, for a fraction of the per-customer cost of numpy calls on one-element arrays.
    None where :func:`outlook` gives None. ``spends`` holds exact spends by customer, as
    :func:`outlook`'s ``spend`` (the live approximation for the others)."""
    limit = day_number(as_of)
    exact = spends or {}
    rows: list[tuple[int, float, float, float, float]] = []
    for i, state in enumerate(states):
        stats = stats_from_days(list(state.orders_by_day), limit)
        if stats is not None:
            given = exact.get(state.customer_id)
            spend = customer_spend(state, limit) if given is None else given
            rows.append((i, *stats, spend))
    out: list[Outlook | None] = [None] * len(states)
    if not rows:
        return out
    index = [row[0] for row in rows]
    x, t_x, T, m = (
        np.array(column, dtype=np.float64) for column in list(zip(*rows, strict=True))[1:]
    )
    p, alive = model.params, MODELS[model.model]
    with np.errstate(all="ignore"):
        alive_now = alive.p_alive(p, x, t_x, T)
        in_30 = alive.expected_purchases(p, 30 / DAYS_PER_WEEK, x, t_x, T)
        in_90 = alive.expected_purchases(p, 90 / DAYS_PER_WEEK, x, t_x, T)
    per_purchase, totals = values(model, x, t_x, T, m)
    for k, i in enumerate(index):
        numbers = (float(alive_now[k]), float(in_30[k]), float(in_90[k]))
        if not all(np.isfinite(numbers)):
            continue
        money = (float(per_purchase[k]), float(totals[k]))
        out[i] = Outlook(*numbers, *money) if all(np.isfinite(money)) else Outlook(*numbers)
    return out
