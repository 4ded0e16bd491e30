"""What the model fits share: folding equal customers into weighted rows, and one search.

Every fit here is maximum likelihood over log-parameters with Nelder-Mead, so each step
stays in the valid region (all parameters > 0) and no gradient is needed. Customers with
equal sufficient statistics are folded into one row with a weight, which keeps a refit
over a large customer base cheap: the work grows with distinct histories, not customers.

Pure: numpy and scipy only, no I/O.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from numpy.typing import NDArray
from scipy.optimize import minimize

Floats = NDArray[np.float64]


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


def search(
    objective: Callable[..., float],
    size: int,
    args: tuple[Any, ...],
    name: str,
    build: Callable[[Floats], Any],
) -> Any:
    """Minimise ``objective`` over ``size`` log-parameters from 0 (all parameters 1).

    Returns ``build(parameters)``; raises :class:`FitError` carrying that best point when
    the search did not converge.
    """
    result = minimize(
        objective,
        x0=np.zeros(size),
        args=args,
        method="Nelder-Mead",
        options={"xatol": 1e-10, "fatol": 1e-12, "maxiter": 20_000, "maxfev": 40_000},
    )
    best = build(np.exp(result.x))
    if not result.success:
        raise FitError(f"{name} fit did not converge: {result.message}", best)
    return best
