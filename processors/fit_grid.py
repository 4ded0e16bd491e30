"""Fits from the fit grid: buyers counted by cell instead of read one by one.

The batch script keeps, per shard under ``fitgrid``, how many buyers share each cell
``first:last:days``: first and last order day (day numbers) and distinct order days. The
P(alive) models need nothing else: a buyer's (x, t_x, T) is a function of its cell and the
as-of day (x = days − 1, t_x = (last − first) / 7, T = (as_of − first) / 7 weeks). So a
refit reads a few hashes whose size grows with distinct cells, not with customers, and fits
one weighted row per distinct (x, t_x, T): the rows, their order and their weights are
those :func:`processors.forecast.fit_histories` builds from every buyer's history, so the
search takes the same steps and lands on the same parameters.

The spend model and the high-value threshold need each buyer's money, which no small grid
keeps exactly; they use a bounded uniform sample of customers (:mod:`store.models`), read
per customer as before (docs/metrics.md, "What a live refit reads").

Buyers with an order after the as-of day are left out (a cell does not say what they had
bought by then) and counted in :attr:`GridRows.left_out`.

Pure: numpy only, no I/O.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import date

import numpy as np

from processors import bgnbd, mbgnbd, pareto_nbd
from processors.alive_models import MODELS, ModelName
from processors.fitting import FitError, Floats, merged_rows, search
from processors.forecast import (
    DAYS_PER_WEEK,
    Fit,
    History,
    ModelOptions,
    SpendFit,
    fit_spend_model,
    values,
)

logger = logging.getLogger(__name__)

#: Each model's mean negative log-likelihood over weighted rows: the objective its own
#: ``fit`` minimises, from the same start with the same options (:func:`search`).
_OBJECTIVES: dict[ModelName, Callable[..., float]] = {
    "bgnbd": bgnbd.negative_log_likelihood,
    "mbgnbd": mbgnbd.negative_log_likelihood,
    "paretonbd": pareto_nbd.negative_log_likelihood,
}


@dataclass(frozen=True, slots=True)
class Cell:
    """A grid cell: first and last order day, distinct order days."""

    first: int
    last: int
    days: int

    @classmethod
    def parse(cls, field: str) -> Cell | None:
        """A cell from its field name; None for anything malformed."""
        parts = field.split(":")
        if len(parts) != 3:
            return None
        try:
            first, last, days = (int(p) for p in parts)
        except ValueError:
            return None
        if days < 1 or last < first or (days == 1 and last != first):
            return None
        if days > last - first + 1:
            return None  # more distinct days than the span holds
        return cls(first, last, days)

    def field(self) -> str:
        return f"{self.first}:{self.last}:{self.days}"


@dataclass(frozen=True, slots=True)
class GridRows:
    """One row per distinct (x, t_x, T), sorted as ``np.unique`` sorts, with its buyers."""

    x: Floats
    t_x: Floats
    T: Floats
    weights: Floats
    #: distinct cells read (summed over shards)
    cells: int
    #: buyers with an order after the as-of day, not in the rows
    left_out: int
    #: cells whose field or count could not be read, not in the rows
    malformed: int

    @property
    def customers(self) -> int:
        return int(np.sum(self.weights))


def merge_cells(shards: Iterable[Mapping[str, str | int]]) -> tuple[dict[Cell, int], int]:
    """The grid summed over shards: buyers per cell, and how many fields were unreadable.

    Counts of zero or below are skipped (the script deletes a cell it empties; a negative
    count can only come from a store the grid was added to after it had customers)."""
    summed: dict[Cell, int] = {}
    malformed = 0
    for shard in shards:
        for field, raw in shard.items():
            cell = Cell.parse(field)
            try:
                count = int(raw)
            except ValueError:
                cell = None
            if cell is None:
                malformed += 1
            elif count > 0:
                summed[cell] = summed.get(cell, 0) + count
    return summed, malformed


def grid_rows(cells: Mapping[Cell, int], as_of: int, malformed: int = 0) -> GridRows:
    """The rows of a fit as of the end of day ``as_of`` from buyers per cell."""
    kept: list[tuple[int, int, int, int]] = []
    left_out = 0
    for cell, count in cells.items():
        if cell.first > as_of:
            continue  # not a buyer yet on that day
        if cell.last > as_of:
            left_out += count
            continue
        kept.append((cell.first, cell.last, cell.days, count))
    columns = np.array(kept, dtype=np.int64).reshape(-1, 4)
    first, last, days, counts = (columns[:, i] for i in range(4))
    # the same float operations as processors.forecast.stats_from_days, so equal rows
    x = (days - 1).astype(np.float64)
    t_x = (last - first).astype(np.float64) / DAYS_PER_WEEK
    T = (as_of - first).astype(np.float64) / DAYS_PER_WEEK
    (x, t_x, T), weights = merged_rows([x, t_x, T], counts.astype(np.float64))
    return GridRows(x, t_x, T, weights, len(kept), left_out, malformed)


def fit_alive(rows: GridRows, options: ModelOptions) -> tuple[object, float | None]:
    """The chosen P(alive) model over the weighted rows, and its total log-likelihood."""
    model = MODELS[options.alive_model]
    try:
        params = search(
            _OBJECTIVES[options.alive_model],
            len(model.param_names),
            (rows.x, rows.t_x, rows.T, rows.weights),
            model.title,
            lambda v: model.params_type(*(float(e) for e in v)),
        )
    except FitError as exc:
        logger.warning(f"{model.title} fit did not converge", extra={"error": str(exc)})
        params = exc.best
    with np.errstate(all="ignore"):
        total = float(np.sum(rows.weights * model.log_likelihood(params, rows.x, rows.t_x, rows.T)))
    return params, total if np.isfinite(total) else None


def sample_spend(sample: list[History]) -> SpendFit | None:
    """The Gamma-Gamma fit over a sample of buyers' live spend."""
    if not sample:
        return None
    x = np.array([h.x for h in sample], dtype=np.float64)
    spend = np.array([h.spend for h in sample], dtype=np.float64)
    return fit_spend_model(x, spend)


def fit_grid(rows: GridRows, sample: list[History], as_of: date, options: ModelOptions) -> Fit:
    """The P(alive) model over the grid and the spend model over the sample (pure,
    CPU-bound)."""
    params, total = fit_alive(rows, options)
    return Fit(
        params,
        as_of,
        rows.customers,
        options.alive_model,
        total,
        sample_spend(sample),
        options.cltv_months,
        options.cltv_discount_monthly,
    )


def cltv_quantile(
    fit: Fit, histories: list[History], quantile: float, spend: Mapping[str, float] | None = None
) -> float | None:
    """Predicted CLTV at ``quantile`` over the given buyers (numpy's linear quantile);
    ``spend`` gives exact repeat-purchase means by customer instead of the live ones. None
    without a finite CLTV."""
    if not histories:
        return None
    x, t_x, T, means = (
        np.array(column, dtype=np.float64)
        for column in zip(
            *(
                (h.x, h.t_x, h.T, h.spend if spend is None else spend.get(h.customer_id, 0.0))
                for h in histories
            ),
            strict=True,
        )
    )
    _, totals = values(fit, x, t_x, T, means)
    totals = totals[np.isfinite(totals)]
    return float(np.quantile(totals, quantile)) if totals.size else None
