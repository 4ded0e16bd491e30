"""The Gamma-Gamma model of monetary value: expected spend per purchase.

References
----------
Fader, P. S. and Hardie, B. G. S. (2013), "The Gamma-Gamma Model of Monetary Value",
http://brucehardie.com/notes/025/. Equation numbers below are the note's.

A customer with ``x`` repeat purchases of mean value ``m`` spends, per purchase, a
gamma(p, ν) amount whose scale ν is itself gamma(q, v) across customers. The data are the
repeat buyers only (x > 0), as the note prescribes, with ``m`` the mean value of their
repeat purchases (first purchase excluded, purchases counted per day, as ``x`` is). The
model assumes spend is independent of purchase frequency; :func:`correlation` measures that.

Pure: numpy and scipy only, no I/O.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike
from scipy.special import gammaln

from processors.fitting import Column, Floats, fit_folded, mean_negative
from processors.model_params import GammaGammaParams as GammaGammaParams


def _arrays(x: ArrayLike, m: ArrayLike) -> tuple[Floats, Floats]:
    xs = np.asarray(x, dtype=np.float64)
    ms = np.asarray(m, dtype=np.float64)
    if np.any(xs < 0) or np.any(ms < 0):
        raise ValueError("need x >= 0 and m >= 0")
    return xs, ms


def repeat_buyers(x: ArrayLike, m: ArrayLike) -> tuple[Floats, Floats]:
    """The customers the model is fitted to: x > 0 and a positive mean spend."""
    xs, ms = _arrays(x, m)
    keep = (xs > 0) & (ms > 0)
    return xs[keep], ms[keep]


def log_likelihood(p: GammaGammaParams, x: ArrayLike, m: ArrayLike) -> Floats:
    """Each repeat buyer's log-likelihood of its mean spend, equation (1a) in logs:

    Γ(px+q) / (Γ(px) Γ(q)) · v^q · m^(px-1) · x^(px) / (v + x m)^(px+q)
    """
    xs, ms = _arrays(x, m)
    px = p.p * xs
    result: Floats = (
        gammaln(px + p.q)
        - gammaln(px)
        - gammaln(p.q)
        + p.q * np.log(p.v)
        + (px - 1) * np.log(ms)
        + px * np.log(xs)
        - (px + p.q) * np.log(p.v + xs * ms)
    )
    return result


def negative_log_likelihood(log_params: Floats, x: Floats, m: Floats, weights: Floats) -> float:
    """Mean negative log-likelihood over customers, of log-parameters."""
    p = GammaGammaParams(*np.exp(log_params))
    with np.errstate(all="ignore"):
        total = float(np.sum(weights * log_likelihood(p, x, m)))
    return mean_negative(total, weights)


class Likelihood:
    """:func:`negative_log_likelihood` over fixed weighted rows, prepared once per fit.

    In equation (1a) the Γ terms depend on x alone (few distinct values), the terms in
    log m and log x are the parameters times sums fixed by the data, so only
    log(v + x m) is computed per row. The same value as the per-row sum, up to rounding.
    """

    def __init__(self, x: Floats, m: Floats, weights: Floats) -> None:
        self.xs = Column.of(x)
        self.w_by_x = self.xs.summed(weights)
        self.xm = x * m
        self.weights, self.wx = weights, weights * x
        self.total = float(np.sum(weights))
        with np.errstate(all="ignore"):
            log_m = np.log(m)
            # Σ w (px - 1) log m + Σ w px log x = p · fixed_p - fixed_1
            self.fixed_p = float(np.dot(self.wx, log_m) + np.dot(self.wx, np.log(x)))
            self.fixed_1 = float(np.dot(weights, log_m))
        self.work = np.empty_like(x)

    def __call__(self, log_params: Floats) -> float:
        with np.errstate(all="ignore"):
            p, q, v = (float(e) for e in np.exp(log_params))
            px = p * self.xs.values
            head = gammaln(px + q) - gammaln(px) - gammaln(q) + q * np.log(v)
            total = float(np.dot(self.w_by_x, head)) + p * self.fixed_p - self.fixed_1
            # - Σ w (px + q) log(v + x m) = -p Σ w x log(v + x m) - q Σ w log(v + x m)
            logs = np.log(np.add(self.xm, v, out=self.work), out=self.work)
            total -= p * float(np.dot(self.wx, logs)) + q * float(np.dot(self.weights, logs))
        return -total / self.total if np.isfinite(total) else np.inf


def fit(x: ArrayLike, m: ArrayLike) -> GammaGammaParams:
    """Maximum-likelihood (p, q, v) over the repeat buyers among ``x``, ``m``.

    Raises ``ValueError`` without a repeat buyer, :class:`~processors.fitting.FitError`
    when the search does not converge.
    """
    xs, ms = repeat_buyers(x, m)
    if xs.size == 0:
        raise ValueError("the Gamma-Gamma model needs at least one repeat buyer")
    params: GammaGammaParams = fit_folded(
        Likelihood,
        (xs, ms),
        3,
        "Gamma-Gamma",
        lambda v: GammaGammaParams(*(float(e) for e in v)),
    )
    return params


def expected_spend(p: GammaGammaParams, x: ArrayLike, m: ArrayLike) -> Floats:
    """E[M | x, m]: expected spend per purchase, equation (5).

    A weighted mean of the population mean p v / (q - 1) and the customer's own mean ``m``,
    with weight p x / (p x + q - 1) on the latter; with x = 0 it is the population mean.
    Needs q > 1 (a finite population mean); a fit with q <= 1 gives infinities.
    """
    xs, ms = _arrays(x, m)
    own = p.p * xs / (p.p * xs + p.q - 1)
    population = p.v * p.p / (p.q - 1)
    result: Floats = (1 - own) * population + own * ms
    return result


def correlation(x: ArrayLike, m: ArrayLike) -> float | None:
    """Pearson correlation of frequency and mean spend over the repeat buyers.

    The model assumes the two independent; a value far from 0 says its spend forecasts
    should not be trusted. None with fewer than two buyers or no spread.
    """
    xs, ms = repeat_buyers(x, m)
    if xs.size < 2 or np.std(xs) == 0 or np.std(ms) == 0:
        return None
    return float(np.corrcoef(xs, ms)[0, 1])
