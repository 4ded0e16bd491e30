"""The Pareto/NBD model: purchases at a gamma-mixed Poisson rate until an exponential death.

References
----------
Schmittlein, D. C., Morrison, D. G. and Colombo, R. (1987), "Counting Your Customers: Who
Are They and What Will They Do Next?", Management Science 33(1), 1-24.
Fader, P. S. and Hardie, B. G. S. (2005), "A Note on Deriving the Pareto/NBD Model and
Related Expressions", http://brucehardie.com/notes/009/; equation numbers below are the
note's: likelihood (18)-(20), P(alive) (36)-(37), conditional expectation (41).

Unlike BG/NBD, a customer may die at any moment, not only after a purchase, so a silent
one-time buyer's P(alive) falls with time. Its likelihood needs the Gauss hypergeometric
function, which makes a fit slower than BG/NBD's. Data as in :mod:`processors.bgnbd`:
``x`` repeat purchase days, ``t_x`` and ``T`` in weeks since the first purchase.

Pure: numpy and scipy only, no I/O.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike
from scipy.special import gammaln, hyp2f1

from processors.bgnbd import _arrays
from processors.fitting import Column, Floats, Rows, fit_folded, mean_negative
from processors.model_params import ParetoNbdParams as ParetoNbdParams


def _hyp_term(p: ParetoNbdParams, xs: Floats, ts: Floats) -> Floats:
    """log[2F1(r+s+x, c; r+s+x+1; z(t)) / (M+t)^(r+s+x)], one of equation (19)'s terms."""
    r, alpha, s, beta = p.r, p.alpha, p.s, p.beta
    if alpha < beta:
        low, high, c = alpha, beta, r + xs
    else:
        low, high, c = beta, alpha, np.full_like(xs, s + 1)
    rsx = r + s + xs
    result: Floats = np.log(hyp2f1(rsx, c, rsx + 1, (high - low) / (high + ts)))
    result -= rsx * np.log(high + ts)
    return result


def _log_a0(p: ParetoNbdParams, xs: Floats, txs: Floats, Ts: Floats) -> Floats:
    """log A_0, equations (19) and (20).

    With the larger of α and β called M and z(u) = |α-β| / (M+u):
    A_0 = 2F1(r+s+x, c; r+s+x+1; z(t_x)) / (M+t_x)^(r+s+x) - 2F1(...; z(T)) / (M+T)^(r+s+x),
    where c = r+x when α < β and s+1 otherwise. The difference is taken in log space; it is
    0 (log -inf) when t_x = T.
    """
    first, second = _hyp_term(p, xs, txs), _hyp_term(p, xs, Ts)
    # log(e^first - e^second), with first >= second since t_x <= T
    with np.errstate(divide="ignore"):
        result: Floats = first + np.log1p(-np.exp(second - first))
    return result


def _log_alive_part(p: ParetoNbdParams, xs: Floats, Ts: Floats) -> Floats:
    """log[(α+T)^-(r+x) (β+T)^-s]: the likelihood's term for a customer still alive at T."""
    result: Floats = -(p.r + xs) * np.log(p.alpha + Ts) - p.s * np.log(p.beta + Ts)
    return result


def log_likelihood(p: ParetoNbdParams, x: ArrayLike, t_x: ArrayLike, T: ArrayLike) -> Floats:
    """Each customer's log-likelihood, equation (18) in logs:

    L = Γ(r+x) α^r β^s / Γ(r) · [(α+T)^-(r+x) (β+T)^-s + s/(r+s+x) A_0]
    """
    xs, txs, Ts = _arrays(x, t_x, T)
    r, alpha, s, beta = p.r, p.alpha, p.s, p.beta
    head = gammaln(r + xs) - gammaln(r) + r * np.log(alpha) + s * np.log(beta)
    died = np.log(s) - np.log(r + s + xs) + _log_a0(p, xs, txs, Ts)
    result: Floats = head + np.logaddexp(_log_alive_part(p, xs, Ts), died)
    return result


def negative_log_likelihood(
    log_params: Floats, x: Floats, t_x: Floats, T: Floats, weights: Floats
) -> float:
    """Mean negative log-likelihood over customers, of log-parameters."""
    p = ParetoNbdParams(*np.exp(log_params))
    with np.errstate(all="ignore"):
        total = float(np.sum(weights * log_likelihood(p, x, t_x, T)))
    return mean_negative(total, weights)


def _pairs(first: Column, second: Column) -> tuple[Floats, Floats, Column]:
    """The distinct (first, second) value pairs of the rows, as two value arrays, and
    per row the position of its pair."""
    key = first.index * second.values.size + second.index
    pairs = Column.of(key.astype(np.float64))
    codes = pairs.values.astype(np.intp)
    return (
        first.values[codes // second.values.size],
        second.values[codes % second.values.size],
        pairs,
    )


class Likelihood:
    """:func:`negative_log_likelihood` over fixed weighted rows, prepared once per fit.

    Equation (18) in logs is the part of x alone, plus the alive term
    -(r+x) log(α+T) - s log(β+T), plus log(1 + e^d) with d the died term (s/(r+s+x) A_0)
    minus the alive term, in logs. The first two are summed per distinct x and T
    (:class:`processors.fitting.Rows`). A_0's two hypergeometric terms depend on (x, t_x)
    and on (x, T) only, so they are computed once per distinct pair; d and its softplus
    are computed per row. The same value as the per-row sum, up to rounding.
    """

    def __init__(self, x: Floats, t_x: Floats, T: Floats, weights: Floats) -> None:
        self.rows = Rows(x, t_x, T, weights)
        self.x_tx, self.tx_pair, self.by_tx = _pairs(self.rows.xs, self.rows.txs)
        self.x_T, self.T_pair, self.by_T = _pairs(self.rows.xs, self.rows.Ts)

    def __call__(self, log_params: Floats) -> float:
        rows = self.rows
        ux = rows.xs.values
        with np.errstate(all="ignore"):
            p = ParetoNbdParams(*(float(v) for v in np.exp(log_params)))
            r, alpha, s, beta = p.r, p.alpha, p.s, p.beta
            head = gammaln(r + ux) - gammaln(r) + r * np.log(alpha) + s * np.log(beta)
            log_a = np.log(alpha + rows.Ts.values)
            log_b = np.log(beta + rows.Ts.values)
            alive = float(np.dot(rows.w_by_x, head)) - s * float(np.dot(rows.w_by_T, log_b))
            alive -= r * float(np.dot(rows.w_by_T, log_a)) + float(np.dot(rows.wx_by_T, log_a))
            first = _hyp_term(p, self.x_tx, self.tx_pair)
            second = _hyp_term(p, self.x_T, self.T_pair)
            # log A_0 = first + log(1 - e^(second - first)), row by row
            d = self.by_T.gather(second, rows.work)
            top = self.by_tx.gather(first, rows.spare)
            np.subtract(d, top, out=d)
            np.exp(d, out=d)
            np.negative(d, out=d)
            np.log1p(d, out=d)
            np.add(d, top, out=d)
            # minus the alive term: + (r+x) log(alpha+T) + s log(beta+T)
            np.add(d, rows.xs.gather(np.log(s) - np.log(r + s + ux), rows.spare), out=d)
            np.add(d, rows.Ts.gather(s * log_b, rows.spare), out=d)
            log_a_rows = rows.Ts.gather(log_a, rows.spare)
            np.multiply(log_a_rows, rows.x, out=log_a_rows)
            np.add(d, log_a_rows, out=d)
            np.add(d, rows.Ts.gather(r * log_a, rows.spare), out=d)
            total = alive + rows.softplus_sum(d)
        return rows.mean_negative(total)


def fit(
    x: ArrayLike, t_x: ArrayLike, T: ArrayLike, start: ParetoNbdParams | None = None
) -> ParetoNbdParams:
    """Maximum-likelihood estimates of (r, α, s, β), equation (18) summed over customers;
    ``start`` warm-starts the search from a previous fit."""
    params: ParetoNbdParams = fit_folded(
        Likelihood,
        _arrays(x, t_x, T),
        4,
        "Pareto/NBD",
        lambda v: ParetoNbdParams(*(float(e) for e in v)),
        None if start is None else np.array([start.r, start.alpha, start.s, start.beta]),
    )
    return params


def p_alive(p: ParetoNbdParams, x: ArrayLike, t_x: ArrayLike, T: ArrayLike) -> Floats:
    """P(alive | x, t_x, T), equation (36):

    1 / (1 + s/(r+s+x) · (α+T)^(r+x) (β+T)^s · A_0)
    """
    xs, txs, Ts = _arrays(x, t_x, T)
    log_odds = (
        np.log(p.s) - np.log(p.r + p.s + xs) - _log_alive_part(p, xs, Ts) + _log_a0(p, xs, txs, Ts)
    )
    result: Floats = 1.0 / (1.0 + np.exp(log_odds))
    return result


def expected_purchases(
    p: ParetoNbdParams, t: float, x: ArrayLike, t_x: ArrayLike, T: ArrayLike
) -> Floats:
    """E[Y(t) | x, t_x, T]: purchases expected in the next ``t`` weeks, equation (41):

    P(alive) · (r+x)(β+T) / ((α+T)(s-1)) · [1 - ((β+T)/(β+T+t))^(s-1)]

    where P(alive) is written as the alive term of the likelihood over the likelihood.
    """
    xs, txs, Ts = _arrays(x, t_x, T)
    r, alpha, s, beta = p.r, p.alpha, p.s, p.beta
    head = gammaln(r + xs) - gammaln(r) + r * np.log(alpha) + s * np.log(beta)
    alive = head + _log_alive_part(p, xs, Ts) - log_likelihood(p, xs, txs, Ts)
    rate = np.log(r + xs) + np.log(beta + Ts) - np.log(alpha + Ts)
    horizon = (1 - ((beta + Ts) / (beta + Ts + t)) ** (s - 1)) / (s - 1)
    result: Floats = np.exp(alive + rate) * horizon
    return result
