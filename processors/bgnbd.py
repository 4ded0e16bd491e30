"""The BG/NBD model: probability that a customer is still alive, and expected purchases.

Fader, P. S., Hardie, B. G. S. and Lee, K. L. (2005), "'Counting Your Customers' the Easy
Way: An Alternative to the Pareto/NBD Model", Marketing Science 24(2), 275-284. Equation
numbers below are the paper's. Per docs/metrics.md the data are per customer: ``x`` repeat
purchases (distinct order days minus one), ``t_x`` the time of the last purchase and ``T``
the age, both since the first purchase, in weeks.

Pure: numpy and scipy only, no I/O.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy.special import betaln, gammaln, hyp2f1

from processors.fitting import FitError, Rows, fit_folded, mean_negative
from processors.model_params import BgNbdParams

Floats = NDArray[np.float64]

__all__ = ["BgNbdParams", "FitError", "expected_purchases", "fit", "log_likelihood", "p_alive"]


def _arrays(x: ArrayLike, t_x: ArrayLike, T: ArrayLike) -> tuple[Floats, Floats, Floats]:
    xs = np.asarray(x, dtype=np.float64)
    txs = np.asarray(t_x, dtype=np.float64)
    Ts = np.asarray(T, dtype=np.float64)
    if np.any(xs < 0) or np.any(txs < 0) or np.any(Ts < txs):
        raise ValueError("need x >= 0 and 0 <= t_x <= T")
    return xs, txs, Ts


def log_likelihood(p: BgNbdParams, x: ArrayLike, t_x: ArrayLike, T: ArrayLike) -> Floats:
    """Each customer's log-likelihood, equation (6) in logs.

    L = B(a, b+x)/B(a, b) · Γ(r+x) α^r / Γ(r) · [(α+T)^-(r+x) + δ(x>0) a/(b+x-1) (α+t_x)^-(r+x)]

    The bracket is summed in log space (``logaddexp``) so that large ``x`` or ``T`` cannot
    overflow; for x = 0 its second term is absent.
    """
    xs, txs, Ts = _arrays(x, t_x, T)
    r, alpha, a, b = p.r, p.alpha, p.a, p.b
    head = gammaln(r + xs) - gammaln(r) + r * np.log(alpha) + betaln(a, b + xs) - betaln(a, b)
    still_alive = -(r + xs) * np.log(alpha + Ts)
    repeat = xs > 0
    died = np.full_like(xs, -np.inf)
    died[repeat] = (
        np.log(a) - np.log(b + xs[repeat] - 1) - (r + xs[repeat]) * np.log(alpha + txs[repeat])
    )
    result: Floats = head + np.logaddexp(still_alive, died)
    return result


def negative_log_likelihood(
    log_params: Floats, x: Floats, t_x: Floats, T: Floats, weights: Floats
) -> float:
    """Mean negative log-likelihood over customers, of log-parameters (all must be > 0)."""
    p = BgNbdParams(*np.exp(log_params))
    with np.errstate(all="ignore"):
        total = float(np.sum(weights * log_likelihood(p, x, t_x, T)))
    return mean_negative(total, weights)


class Likelihood:
    """:func:`negative_log_likelihood` over fixed weighted rows, prepared once per fit.

    Equation (6) in logs is the part of x alone, plus -(r+x) log(α+T), plus
    log(1 + e^d) with d = log a - log(b+x-1) + (r+x) (log(α+T) - log(α+t_x)) the log-odds
    of having died (d = -inf for x = 0, where the bracket has one term). The first two
    are summed per distinct x and T (:class:`processors.fitting.Rows`); only d and its
    softplus are computed per row. The same value as the per-row sum, up to rounding.
    """

    def __init__(self, x: Floats, t_x: Floats, T: Floats, weights: Floats) -> None:
        self.rows = Rows(x, t_x, T, weights)
        self.repeat = self.rows.xs.values > 0

    def __call__(self, log_params: Floats) -> float:
        rows = self.rows
        ux = rows.xs.values
        with np.errstate(all="ignore"):
            r, alpha, a, b = (float(v) for v in np.exp(log_params))
            head = gammaln(r + ux) - gammaln(r) + r * np.log(alpha) + betaln(a, b + ux)
            head -= betaln(a, b)
            log_T = np.log(alpha + rows.Ts.values)
            log_tx = np.log(alpha + rows.txs.values)
            alive = float(np.dot(rows.w_by_x, head))
            alive -= r * float(np.dot(rows.w_by_T, log_T)) + float(np.dot(rows.wx_by_T, log_T))
            odds = np.where(self.repeat, np.log(a) - np.log(b + ux - 1), -np.inf)
            d = rows.Ts.gather(log_T, rows.work)
            np.subtract(d, rows.txs.gather(log_tx, rows.spare), out=d)
            np.multiply(d, np.add(rows.x, r, out=rows.spare), out=d)
            np.add(d, rows.xs.gather(odds, rows.spare), out=d)
            total = alive + rows.softplus_sum(d)
        return rows.mean_negative(total)


def fit(
    x: ArrayLike, t_x: ArrayLike, T: ArrayLike, start: BgNbdParams | None = None
) -> BgNbdParams:
    """Maximum-likelihood estimates of (r, α, a, b), equation (6) summed over customers;
    ``start`` warm-starts the search from a previous fit.

    Customers with equal (x, t_x, T) are folded into one weighted row, which makes a refit
    over a large customer base cheap. The search runs over log-parameters, so every step
    stays in the valid region.
    """
    params: BgNbdParams = fit_folded(
        Likelihood,
        _arrays(x, t_x, T),
        4,
        "BG/NBD",
        lambda v: BgNbdParams(*(float(e) for e in v)),
        None if start is None else np.array([start.r, start.alpha, start.a, start.b]),
    )
    return params


def _death_odds(p: BgNbdParams, xs: Floats, txs: Floats, Ts: Floats) -> Floats:
    """δ(x>0) · a/(b+x-1) · ((α+T)/(α+t_x))^(r+x): the odds of having died after the last
    purchase rather than being alive, given the customer's history."""
    odds = np.zeros_like(xs)
    repeat = xs > 0
    odds[repeat] = (
        p.a
        / (p.b + xs[repeat] - 1)
        * np.exp((p.r + xs[repeat]) * np.log((p.alpha + Ts[repeat]) / (p.alpha + txs[repeat])))
    )
    return odds


def p_alive(p: BgNbdParams, x: ArrayLike, t_x: ArrayLike, T: ArrayLike) -> Floats:
    """P(alive | x, t_x, T) = 1 / (1 + δ(x>0) a/(b+x-1) ((α+T)/(α+t_x))^(r+x)).

    From Fader, Hardie and Lee (2008), "Computing P(alive) Using the BG/NBD Model". In this
    model a customer can only drop out right after a purchase, so one without a repeat
    purchase is alive with probability 1.
    """
    xs, txs, Ts = _arrays(x, t_x, T)
    result: Floats = 1.0 / (1.0 + _death_odds(p, xs, txs, Ts))
    return result


def expected_purchases(
    p: BgNbdParams, t: float, x: ArrayLike, t_x: ArrayLike, T: ArrayLike
) -> Floats:
    """E[Y(t) | x, t_x, T]: purchases expected in the next ``t`` weeks, equation (10).

    (a+b+x-1)/(a-1) · [1 - ((α+T)/(α+T+t))^(r+x) · 2F1(r+x, b+x; a+b+x-1; t/(α+T+t))]
    divided by 1 + δ(x>0) a/(b+x-1) ((α+T)/(α+t_x))^(r+x). The expression is undefined
    at a = 1 exactly (a removable singularity the paper does not treat); fits do not land
    there in practice.
    """
    xs, txs, Ts = _arrays(x, t_x, T)
    r, alpha, a, b = p.r, p.alpha, p.a, p.b
    z = t / (alpha + Ts + t)
    hyp = hyp2f1(r + xs, b + xs, a + b + xs - 1, z)
    shrink = np.exp((r + xs) * np.log((alpha + Ts) / (alpha + Ts + t)))
    numerator = (a + b + xs - 1) / (a - 1) * (1 - shrink * hyp)
    result: Floats = numerator / (1.0 + _death_odds(p, xs, txs, Ts))
    return result
