"""What the model fits share: folding equal customers into weighted rows, and one search.

Every fit here is maximum likelihood over log-parameters with Nelder-Mead, so each step
stays in the valid region (all parameters > 0) and no gradient is needed. Customers with
equal sufficient statistics are folded into one row with a weight, which keeps a refit
over a large customer base cheap: the work grows with distinct histories, not customers.

The P(alive) models' likelihoods are prepared once per fit (:class:`Rows`): each of x,
t_x and T takes few distinct values (order days are whole days), so what depends on one
column alone (Γ and B functions of x, logs of α + T and α + t_x) is computed once per
distinct value and gathered per row, and the terms that are sums over rows of a function of
one column become short dot products with per-value weights. Only the term that mixes the
three columns is computed per row, in reused buffers.

Pure: numpy and scipy only, no I/O.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray
from scipy.optimize import minimize

Floats = NDArray[np.float64]
Indices = NDArray[np.intp]

#: Nelder-Mead's stopping rule, the same for every fit and every start.
TOLERANCES = {"xatol": 1e-10, "fatol": 1e-12, "maxiter": 20_000, "maxfev": 40_000}
#: Side of the first simplex of a warm start, in log-parameters (about 5% per parameter):
#: large enough to cover the step of a day's new orders, small enough to start near.
WARM_STEP = 0.05


class FitError(RuntimeError):
    """The search stopped before converging; ``best`` is where it stopped."""

    def __init__(self, message: str, best: Any) -> None:
        super().__init__(message)
        self.best = best


def weighted_rows(*columns: Floats) -> tuple[list[Floats], Floats]:
    """The distinct rows of the columns, and how many customers each stands for."""
    rows, counts = np.unique(np.column_stack(columns), axis=0, return_counts=True)
    return [rows[:, i] for i in range(rows.shape[1])], counts.astype(np.float64)


def merged_rows(columns: list[Floats], weights: Floats) -> tuple[list[Floats], Floats]:
    """:func:`weighted_rows` for rows that already stand for several customers: equal
    rows merged, their weights summed, in the same sorted order, so a fit over them takes
    the same steps as one over the customers they stand for."""
    if weights.size == 0:
        return [np.empty(0, dtype=np.float64) for _ in columns], np.empty(0, dtype=np.float64)
    rows, inverse = np.unique(np.column_stack(columns), axis=0, return_inverse=True)
    summed = np.bincount(inverse.ravel(), weights=weights, minlength=rows.shape[0])
    return [rows[:, i] for i in range(rows.shape[1])], summed.astype(np.float64)


def mean_negative(total: float, weights: Floats) -> float:
    """Minus the mean log-likelihood, or +inf where the terms overflowed, which tells the
    optimiser that this is a bad place rather than stopping it."""
    return -total / float(np.sum(weights)) if np.isfinite(total) else np.inf


@dataclass(frozen=True, slots=True)
class Column:
    """A column as its distinct values and, per row, the position of the row's value."""

    values: Floats
    index: Indices

    @classmethod
    def of(cls, column: Floats) -> Column:
        values, index = np.unique(column, return_inverse=True)
        return cls(values.astype(np.float64), index.ravel().astype(np.intp))

    def gather(self, table: Floats, out: Floats) -> Floats:
        """``table`` (one entry per distinct value) spread over the rows, into ``out``."""
        result: Floats = np.take(table, self.index, out=out, mode="clip")
        return result

    def summed(self, weights: Floats) -> Floats:
        """``weights`` summed per distinct value."""
        return np.bincount(self.index, weights=weights, minlength=self.values.size).astype(
            np.float64
        )


class Rows:
    """Weighted rows (x, t_x, T) prepared for many likelihood evaluations.

    Holds each column's distinct values with the rows' positions among them, per-value
    sums of the weights (and of weight · x by T), and two work buffers of one float per
    row, so an evaluation allocates nothing of the rows' size.
    """

    def __init__(self, x: Floats, t_x: Floats, T: Floats, weights: Floats) -> None:
        self.x, self.t_x, self.T, self.weights = x, t_x, T, weights
        self.xs, self.txs, self.Ts = Column.of(x), Column.of(t_x), Column.of(T)
        self.total = float(np.sum(weights))
        #: Σ w per distinct x, Σ w and Σ w·x per distinct T
        self.w_by_x = self.xs.summed(weights)
        self.w_by_T = self.Ts.summed(weights)
        self.wx_by_T = self.Ts.summed(weights * x)
        self.work = np.empty_like(x)
        self.spare = np.empty_like(x)

    def mean_negative(self, total: float) -> float:
        return -total / self.total if np.isfinite(total) else np.inf

    def softplus_sum(self, d: Floats) -> float:
        """Σ w · log(1 + e^d) over rows, overwriting ``d`` (and the spare buffer); exact
        for any d: max(d, 0) + log1p(e^-|d|), with log(1 + e^-inf) = 0."""
        spare = self.spare
        np.abs(d, out=spare)
        np.negative(spare, out=spare)
        np.exp(spare, out=spare)
        np.log1p(spare, out=spare)
        np.maximum(d, 0.0, out=d)
        np.add(d, spare, out=d)
        return float(np.dot(self.weights, d))


def search(
    objective: Callable[..., float],
    size: int,
    args: tuple[Any, ...],
    name: str,
    build: Callable[[Floats], Any],
    start: Floats | None = None,
) -> Any:
    """Minimise ``objective`` over ``size`` log-parameters.

    Cold (no ``start``) from 0, all parameters 1, with scipy's first simplex. Warm from
    the parameters ``start`` (a previous fit's), with a first simplex of side
    :data:`WARM_STEP` around them: near the optimum, the search then needs far fewer
    steps. Both stop by the same rule (:data:`TOLERANCES`).

    Returns ``build(parameters)``; raises :class:`FitError` carrying that best point when
    the search did not converge.
    """
    options: dict[str, Any] = dict(TOLERANCES)
    x0 = np.zeros(size)
    if start is not None:
        x0 = np.log(np.asarray(start, dtype=np.float64))
        options["initial_simplex"] = np.vstack([x0, x0 + WARM_STEP * np.eye(size)])
    result = minimize(objective, x0=x0, args=args, method="Nelder-Mead", options=options)
    best = build(np.exp(result.x))
    if not result.success:
        raise FitError(f"{name} fit did not converge: {result.message}", best)
    return best


def fit_folded(
    likelihood: Callable[..., Callable[..., float]],
    columns: tuple[Floats, ...],
    size: int,
    name: str,
    build: Callable[[Floats], Any],
    start: Floats | None = None,
) -> Any:
    """Maximum likelihood over the customers given by ``columns`` (one array per
    statistic): customers with equal statistics are folded into one weighted row, then
    :func:`search` minimises ``likelihood(*rows, weights)`` over ``size`` parameters."""
    rows, weights = weighted_rows(*columns)
    return search(likelihood(*rows, weights), size, (), name, build, start)
