"""The MBG/NBD model: a BG/NBD in which a customer may drop out before any repeat purchase.

References
----------
Batislam, E. P., Denizel, M. and Filiztekin, A. (2007), "Empirical validation and
comparison of models for customer base analysis", International Journal of Research in
Marketing 24(3), 201-209; Appendix A, equations (1) (likelihood), (5) (P(alive)).
Wagner, U. and Hoppe, D. (2008), "Erratum on the MBG/NBD model", for the conditional
expectation (the form :func:`expected_purchases` uses).

In BG/NBD a customer can only drop out right after a repeat purchase, so a one-time buyer is
alive with probability 1 however long it stays silent. MBG/NBD lets the drop-out coin be
tossed at time zero as well: with x repeat purchases there are x + 1 chances to have left,
and a long silence lowers P(alive) for one-time buyers too. Data as in :mod:`processors.bgnbd`:
``x`` repeat purchase days, ``t_x`` and ``T`` in weeks since the first purchase.

Pure: numpy and scipy only, no I/O.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike
from scipy.special import betaln, gammaln, hyp2f1

from processors.bgnbd import _arrays
from processors.fitting import Floats, Rows, fit_folded, mean_negative
from processors.model_params import MbgNbdParams as MbgNbdParams


def _log_death_odds(p: MbgNbdParams, xs: Floats, txs: Floats, Ts: Floats) -> Floats:
    """log[a/(b+x) · ((α+T)/(α+t_x))^(r+x)]: odds of having left after the last purchase
    (or at the first, for x = 0) rather than being alive."""
    result: Floats = (
        np.log(p.a) - np.log(p.b + xs) + (p.r + xs) * (np.log(p.alpha + Ts) - np.log(p.alpha + txs))
    )
    return result


def log_likelihood(p: MbgNbdParams, x: ArrayLike, t_x: ArrayLike, T: ArrayLike) -> Floats:
    """Each customer's log-likelihood, equation (1) in logs:

    L = B(a, b+x+1)/B(a, b) · Γ(r+x) α^r / Γ(r) · (α+T)^-(r+x) · [1 + a/(b+x) ((α+T)/(α+t_x))^(r+x)]
    """
    xs, txs, Ts = _arrays(x, t_x, T)
    r, alpha, a, b = p.r, p.alpha, p.a, p.b
    head = gammaln(r + xs) - gammaln(r) + r * np.log(alpha) + betaln(a, b + xs + 1) - betaln(a, b)
    result: Floats = (
        head - (r + xs) * np.log(alpha + Ts) + np.logaddexp(0.0, _log_death_odds(p, xs, txs, Ts))
    )
    return result


def negative_log_likelihood(
    log_params: Floats, x: Floats, t_x: Floats, T: Floats, weights: Floats
) -> float:
    """Mean negative log-likelihood over customers, of log-parameters."""
    p = MbgNbdParams(*np.exp(log_params))
    with np.errstate(all="ignore"):
        total = float(np.sum(weights * log_likelihood(p, x, t_x, T)))
    return mean_negative(total, weights)


class Likelihood:
    """:func:`negative_log_likelihood` over fixed weighted rows, prepared once per fit.

    Equation (1) in logs splits into a part of x alone, -(r+x) log(α+T), and
    log(1 + e^d) with d the death log-odds of :func:`_log_death_odds`. The first two are
    summed per distinct x and T (:class:`processors.fitting.Rows`); only d and its
    softplus are computed per row. The same value as the per-row sum, up to rounding.
    """

    def __init__(self, x: Floats, t_x: Floats, T: Floats, weights: Floats) -> None:
        self.rows = Rows(x, t_x, T, weights)

    def __call__(self, log_params: Floats) -> float:
        rows = self.rows
        ux = rows.xs.values
        with np.errstate(all="ignore"):
            r, alpha, a, b = (float(v) for v in np.exp(log_params))
            head = gammaln(r + ux) - gammaln(r) + r * np.log(alpha) + betaln(a, b + ux + 1)
            head -= betaln(a, b)
            log_T = np.log(alpha + rows.Ts.values)
            log_tx = np.log(alpha + rows.txs.values)
            alive = float(np.dot(rows.w_by_x, head))
            alive -= r * float(np.dot(rows.w_by_T, log_T)) + float(np.dot(rows.wx_by_T, log_T))
            # d = log a - log(b+x) + (r+x) (log(alpha+T) - log(alpha+t_x)), row by row
            d = rows.Ts.gather(log_T, rows.work)
            np.subtract(d, rows.txs.gather(log_tx, rows.spare), out=d)
            np.multiply(d, np.add(rows.x, r, out=rows.spare), out=d)
            np.add(d, rows.xs.gather(np.log(a) - np.log(b + ux), rows.spare), out=d)
            total = alive + rows.softplus_sum(d)
        return rows.mean_negative(total)


def fit(
    x: ArrayLike, t_x: ArrayLike, T: ArrayLike, start: MbgNbdParams | None = None
) -> MbgNbdParams:
    """Maximum-likelihood estimates of (r, α, a, b), equation (1) summed over customers;
    ``start`` warm-starts the search from a previous fit."""
    params: MbgNbdParams = fit_folded(
        Likelihood,
        _arrays(x, t_x, T),
        4,
        "MBG/NBD",
        lambda v: MbgNbdParams(*(float(e) for e in v)),
        None if start is None else np.array([start.r, start.alpha, start.a, start.b]),
    )
    return params


def p_alive(p: MbgNbdParams, x: ArrayLike, t_x: ArrayLike, T: ArrayLike) -> Floats:
    """P(alive | x, t_x, T) = 1 / (1 + a/(b+x) ((α+T)/(α+t_x))^(r+x)), equation (5).

    Below 1 for one-time buyers too (x = 0, t_x = 0), falling as they stay silent.
    """
    xs, txs, Ts = _arrays(x, t_x, T)
    result: Floats = 1.0 / (1.0 + np.exp(_log_death_odds(p, xs, txs, Ts)))
    return result


def expected_purchases(
    p: MbgNbdParams, t: float, x: ArrayLike, t_x: ArrayLike, T: ArrayLike
) -> Floats:
    """E[Y(t) | x, t_x, T]: purchases expected in the next ``t`` weeks.

    (a+b+x)/(a-1) · [1 - ((α+T)/(α+T+t))^(r+x) · 2F1(r+x, b+x+1; a+b+x; t/(α+T+t))]
    divided by 1 + a/(b+x) ((α+T)/(α+t_x))^(r+x). Undefined at a = 1 exactly, as in BG/NBD.
    """
    xs, txs, Ts = _arrays(x, t_x, T)
    r, alpha, a, b = p.r, p.alpha, p.a, p.b
    hyp = hyp2f1(r + xs, b + xs + 1, a + b + xs, t / (alpha + Ts + t))
    shrink = np.exp((r + xs) * np.log((alpha + Ts) / (alpha + Ts + t)))
    numerator = (a + b + xs) / (a - 1) * (1 - shrink * hyp)
    result: Floats = numerator / (1.0 + np.exp(_log_death_odds(p, xs, txs, Ts)))
    return result
