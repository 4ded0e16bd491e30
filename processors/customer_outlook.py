"""One customer's outlook in plain Python floats: P(alive), expected purchases, expected
spend and predicted CLTV, without numpy or scipy.

:func:`processors.forecast.outlook` computes the same numbers on one-element numpy arrays;
this module writes each model's formula once more over floats, in the same order of
operations, so that reading one customer (``retention customer``, the read API's and the
web view's customer) does not load the numerics. The formulas, their equations and papers
are documented where the arrays are: :mod:`processors.bgnbd`, :mod:`processors.mbgnbd`,
:mod:`processors.pareto_nbd`, :mod:`processors.gamma_gamma` and :mod:`processors.cltv`.
The two agree to about 1e-15 relative (numpy's exp and log may differ from the C
library's in the last bit); ``tests/unit/test_customer_outlook.py`` holds them to it.

Arithmetic that numpy carries on with as infinities or NaN (an overflowing exp, the log
of 0) is carried on the same way here, so the same customers get no outlook, or one
without money, as with the arrays.
"""

from __future__ import annotations

import math
from datetime import date

from processors.fits import (
    DAYS_PER_WEEK,
    Fit,
    Outlook,
    SpendFit,
    customer_spend,
    day_number,
    stats_from_days,
)
from processors.hypergeometric import hyp2f1
from processors.model_params import AliveParams, BgNbdParams, MbgNbdParams, ParetoNbdParams
from processors.state import CustomerState

#: processors/cltv.py's month: 30 days, in weeks
WEEKS_PER_MONTH = 30.0 / 7.0


def _exp(v: float) -> float:
    try:
        return math.exp(v)
    except OverflowError:
        return math.inf


def _log(v: float) -> float:
    if v > 0:
        return math.log(v)
    return -math.inf if v == 0 else math.nan


def _log1p(v: float) -> float:
    if v > -1:
        return math.log1p(v)
    return -math.inf if v == -1 else math.nan


def _logaddexp(x: float, y: float) -> float:
    """log(e^x + e^y), as numpy's ``logaddexp`` computes it."""
    if x == y:
        return x + math.log(2.0)
    gap = x - y
    if gap > 0:
        return x + _log1p(_exp(-gap))
    if gap <= 0:
        return y + _log1p(_exp(gap))
    return gap  # NaN


def p_alive(p: AliveParams, x: float, t_x: float, T: float) -> float:
    if isinstance(p, BgNbdParams):
        return 1.0 / (1.0 + _bg_death_odds(p, x, t_x, T))
    if isinstance(p, MbgNbdParams):
        return 1.0 / (1.0 + _exp(_mbg_log_death_odds(p, x, t_x, T)))
    log_odds = (
        _log(p.s) - _log(p.r + p.s + x) - _pareto_alive_part(p, x, T) + _pareto_log_a0(p, x, t_x, T)
    )
    return 1.0 / (1.0 + _exp(log_odds))


def expected_purchases(p: AliveParams, t: float, x: float, t_x: float, T: float) -> float:
    """E[Y(t) | x, t_x, T]: purchases expected in the next ``t`` weeks."""
    if isinstance(p, BgNbdParams):
        r, alpha, a, b = p.r, p.alpha, p.a, p.b
        hyp = hyp2f1(r + x, b + x, a + b + x - 1, t / (alpha + T + t))
        shrink = _exp((r + x) * _log((alpha + T) / (alpha + T + t)))
        numerator = (a + b + x - 1) / (a - 1) * (1 - shrink * hyp)
        return numerator / (1.0 + _bg_death_odds(p, x, t_x, T))
    if isinstance(p, MbgNbdParams):
        r, alpha, a, b = p.r, p.alpha, p.a, p.b
        hyp = hyp2f1(r + x, b + x + 1, a + b + x, t / (alpha + T + t))
        shrink = _exp((r + x) * _log((alpha + T) / (alpha + T + t)))
        numerator = (a + b + x) / (a - 1) * (1 - shrink * hyp)
        return numerator / (1.0 + _exp(_mbg_log_death_odds(p, x, t_x, T)))
    r, alpha, s, beta = p.r, p.alpha, p.s, p.beta
    head = _pareto_head(p, x)
    alive = head + _pareto_alive_part(p, x, T) - _pareto_log_likelihood(p, x, t_x, T)
    rate = _log(r + x) + _log(beta + T) - _log(alpha + T)
    horizon = (1 - math.pow((beta + T) / (beta + T + t), s - 1)) / (s - 1)
    return _exp(alive + rate) * horizon


def _bg_death_odds(p: BgNbdParams, x: float, t_x: float, T: float) -> float:
    if x <= 0:
        return 0.0
    return p.a / (p.b + x - 1) * _exp((p.r + x) * _log((p.alpha + T) / (p.alpha + t_x)))


def _mbg_log_death_odds(p: MbgNbdParams, x: float, t_x: float, T: float) -> float:
    return _log(p.a) - _log(p.b + x) + (p.r + x) * (_log(p.alpha + T) - _log(p.alpha + t_x))


def _pareto_head(p: ParetoNbdParams, x: float) -> float:
    return math.lgamma(p.r + x) - math.lgamma(p.r) + p.r * _log(p.alpha) + p.s * _log(p.beta)


def _pareto_alive_part(p: ParetoNbdParams, x: float, T: float) -> float:
    return -(p.r + x) * _log(p.alpha + T) - p.s * _log(p.beta + T)


def _pareto_hyp_term(p: ParetoNbdParams, x: float, t: float) -> float:
    r, alpha, s, beta = p.r, p.alpha, p.s, p.beta
    if alpha < beta:
        low, high, c = alpha, beta, r + x
    else:
        low, high, c = beta, alpha, s + 1
    rsx = r + s + x
    return _log(hyp2f1(rsx, c, rsx + 1, (high - low) / (high + t))) - rsx * _log(high + t)


def _pareto_log_a0(p: ParetoNbdParams, x: float, t_x: float, T: float) -> float:
    first, second = _pareto_hyp_term(p, x, t_x), _pareto_hyp_term(p, x, T)
    return first + _log1p(-_exp(second - first))


def _pareto_log_likelihood(p: ParetoNbdParams, x: float, t_x: float, T: float) -> float:
    died = _log(p.s) - _log(p.r + p.s + x) + _pareto_log_a0(p, x, t_x, T)
    return _pareto_head(p, x) + _logaddexp(_pareto_alive_part(p, x, T), died)


def expected_spend(spend: SpendFit, x: float, m: float) -> float:
    """E[M | x, m], processors/gamma_gamma.py's equation (5)."""
    p = spend.params
    own = p.p * x / (p.p * x + p.q - 1)
    population = p.v * p.p / (p.q - 1)
    return (1 - own) * population + own * m


def cltv(fit: Fit, spend: float, x: float, t_x: float, T: float) -> float:
    """Predicted CLTV, the discounted sum of processors/cltv.py."""
    total = before = 0.0
    for k in range(1, fit.cltv_months + 1):
        upto = expected_purchases(fit.params, k * WEEKS_PER_MONTH, x, t_x, T)
        total += spend * (upto - before) / (1.0 + fit.cltv_discount_monthly) ** k
        before = upto
    return total


def outlook(
    state: CustomerState, model: Fit, as_of: date, spend: float | None = None
) -> Outlook | None:
    """:func:`processors.forecast.outlook` of one customer, in floats."""
    limit = day_number(as_of)
    stats = stats_from_days(list(state.orders_by_day), limit)
    if stats is None:
        return None
    x, t_x, T = (float(v) for v in stats)
    p = model.params
    try:
        numbers = (
            p_alive(p, x, t_x, T),
            expected_purchases(p, 30 / DAYS_PER_WEEK, x, t_x, T),
            expected_purchases(p, 90 / DAYS_PER_WEEK, x, t_x, T),
        )
    except (ZeroDivisionError, OverflowError):  # numpy's inf or NaN
        return None
    if not all(math.isfinite(v) for v in numbers):
        return None  # parameters from a fit that went astray: no number beats a wrong one
    if model.spend is None:
        return Outlook(*numbers)
    m = customer_spend(state, limit) if spend is None else spend
    try:
        per_purchase = expected_spend(model.spend, x, m)
        money = (per_purchase, cltv(model, per_purchase, x, t_x, T))
    except (ZeroDivisionError, OverflowError):
        return Outlook(*numbers)
    if not all(math.isfinite(v) for v in money):
        return Outlook(*numbers)
    return Outlook(*numbers, *money)
