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
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date
from typing import Any, cast

import numpy as np
from numpy.typing import NDArray

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

Ints = NDArray[np.int64]

#: Each model's mean negative log-likelihood over weighted rows, prepared once per fit:
#: the objective its own ``fit`` minimises, with the same options (:func:`search`).
_OBJECTIVES: dict[
    ModelName, Callable[[Floats, Floats, Floats, Floats], Callable[[Floats], float]]
] = {
    "bgnbd": bgnbd.Likelihood,
    "mbgnbd": mbgnbd.Likelihood,
    "paretonbd": pareto_nbd.Likelihood,
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


#: A cell field as the fast parser takes it: three integers of at most 15 digits (so no
#: int64 overflows), each field on its own line. Anything else goes field by field.
_FIELDS = re.compile(r"(?:-?[0-9]{1,15}:-?[0-9]{1,15}:-?[0-9]{1,15}\n)*")
_COUNTS = re.compile(r"(?:-?[0-9]{1,15}\n)*")
#: Bits per column of the sort key of a row (days, last - first, as_of - first).
_KEY_BITS = 21


@dataclass(frozen=True, slots=True)
class Cells:
    """Readable cells with a positive count, as columns (a cell may occur more than once:
    shards count their own buyers), and how many fields were unreadable."""

    first: Ints
    last: Ints
    days: Ints
    count: Ints
    malformed: int = 0

    @classmethod
    def of(cls, cells: Mapping[Cell, int], malformed: int = 0) -> Cells:
        table = np.array(
            [(c.first, c.last, c.days, n) for c, n in cells.items() if n > 0], dtype=np.int64
        ).reshape(-1, 4)
        return cls(table[:, 0], table[:, 1], table[:, 2], table[:, 3], malformed)

    @classmethod
    def joined(cls, parts: Sequence[Cells]) -> Cells:
        def column(name: str) -> Ints:
            return np.concatenate([getattr(p, name) for p in parts] or [_NONE])

        malformed = sum(p.malformed for p in parts)
        return cls(column("first"), column("last"), column("days"), column("count"), malformed)

    def __len__(self) -> int:
        return int(self.count.size)


_NONE = np.empty(0, dtype=np.int64)


def _numbers(text: str, pattern: re.Pattern[str], size: int) -> Ints | None:
    """``size`` integers from newline-ended lines matching ``pattern``, None otherwise."""
    if pattern.fullmatch(text) is None:
        return None
    flat = np.fromstring(text.replace(":", " ").replace("\n", " "), dtype=np.int64, sep=" ")
    return flat if flat.size == size else None


def parse_cells(fields: Sequence[str], counts: Sequence[str | int]) -> Cells:
    """One shard's cells from its ``fitgrid`` fields and counts, the same as
    :meth:`Cell.parse` and ``int`` field by field would read them: the text is checked
    whole and parsed by numpy, falling back to field by field when anything in it is
    unusual. Counts of zero or below are skipped (the script deletes a cell it empties; a
    negative count can only come from a store the grid was added to after it had
    customers)."""
    n = len(fields)
    flat = _numbers("".join(f + "\n" for f in fields), _FIELDS, 3 * n) if n else _NONE
    number = _numbers("".join(f"{c}\n" for c in counts), _COUNTS, n) if n else _NONE
    if flat is None or number is None:
        cells, malformed = merge_cells([dict(zip(fields, counts, strict=True))])
        return Cells.of(cells, malformed)
    first, last, days = (flat[i::3] for i in range(3))
    valid = (days >= 1) & (last >= first) & ((days > 1) | (last == first))
    valid &= days <= last - first + 1  # no more distinct days than the span holds
    keep = valid & (number > 0)
    return Cells(first[keep], last[keep], days[keep], number[keep], int(n - np.sum(valid)))


def merge_cells(shards: Iterable[Mapping[str, str | int]]) -> tuple[dict[Cell, int], int]:
    """The grid summed over shards, field by field: buyers per cell, and how many fields
    were unreadable. Counts of zero or below are skipped, as in :func:`parse_cells`."""
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


def grid_rows(cells: Mapping[Cell, int] | Cells, as_of: int, malformed: int = 0) -> GridRows:
    """The rows of a fit as of the end of day ``as_of`` from buyers per cell.

    Rows come sorted as ``np.unique`` sorts (x, t_x, T): a cell's (days, last - first,
    as_of - first) orders rows the same way, as one integer key when the columns fit."""
    if not isinstance(cells, Cells):
        cells = Cells.of(cells, malformed)
    buyer = cells.first <= as_of  # not a buyer yet on that day otherwise
    late = buyer & (cells.last > as_of)
    left_out = int(np.sum(cells.count[late]))
    kept = buyer & ~late
    days, span, age = cells.days[kept], (cells.last - cells.first)[kept], as_of - cells.first[kept]
    counts = cells.count[kept].astype(np.float64)
    weights: Floats
    limit = 1 << _KEY_BITS
    if days.size and max(int(days.max()), int(span.max()), int(age.max())) >= limit:
        x, t_x, T = _stats(days, span, age)
        (x, t_x, T), weights = merged_rows([x, t_x, T], counts)
    else:
        key = (days << (2 * _KEY_BITS)) | (span << _KEY_BITS) | age
        unique, inverse = np.unique(key, return_inverse=True)
        weights = np.bincount(inverse.ravel(), weights=counts, minlength=unique.size).astype(
            np.float64
        )
        mask = limit - 1
        x, t_x, T = _stats(unique >> (2 * _KEY_BITS), (unique >> _KEY_BITS) & mask, unique & mask)
    return GridRows(x, t_x, T, weights, x.size, left_out, cells.malformed)


def _stats(days: Ints, span: Ints, age: Ints) -> tuple[Floats, Floats, Floats]:
    # the same float operations as processors.forecast.stats_from_days, so equal rows
    x = (days - 1).astype(np.float64)
    t_x = span.astype(np.float64) / DAYS_PER_WEEK
    T = age.astype(np.float64) / DAYS_PER_WEEK
    return x, t_x, T


def warm_start(previous: Fit | None, options: ModelOptions) -> Floats | None:
    """Where a refit's search starts: the previous fit's parameters when it is of the same
    model and they are usable (all finite and > 0), else None (a cold start)."""
    if previous is None or previous.model != options.alive_model:
        return None
    model = MODELS[options.alive_model]
    raw = previous.params.as_dict()
    start = np.array([float(raw[name]) for name in model.param_names], dtype=np.float64)
    return start if bool(np.all(np.isfinite(start)) and np.all(start > 0)) else None


def fit_alive(
    rows: GridRows, options: ModelOptions, start: Floats | None = None
) -> tuple[object, float | None]:
    """The chosen P(alive) model over the weighted rows, and its total log-likelihood.

    ``start`` (from :func:`warm_start`) starts the search from a previous fit; should it
    not converge from there to a finite likelihood, the fit starts again from scratch."""
    model = MODELS[options.alive_model]
    objective = _OBJECTIVES[options.alive_model](rows.x, rows.t_x, rows.T, rows.weights)
    size = len(model.param_names)

    def build(v: Floats) -> object:
        return model.params_type(*(float(e) for e in v))

    params = None if start is None else _warm(objective, size, model.title, build, start)
    if params is None:
        try:
            params = search(objective, size, (), model.title, build)
        except FitError as exc:
            logger.warning(f"{model.title} fit did not converge", extra={"error": str(exc)})
            params = exc.best
    with np.errstate(all="ignore"):
        total = float(np.sum(rows.weights * model.log_likelihood(params, rows.x, rows.t_x, rows.T)))
    return params, total if np.isfinite(total) else None


def _warm(
    objective: Callable[[Floats], float],
    size: int,
    title: str,
    build: Callable[[Floats], object],
    start: Floats,
) -> object | None:
    """The search from ``start``; None when it did not converge to a finite likelihood."""
    try:
        with np.errstate(all="ignore"):  # a start far off may meet only infinities
            params: object = search(objective, size, (), title, build, start)
    except FitError as exc:
        logger.warning(f"{title} warm fit did not converge", extra={"error": str(exc)})
        return None
    values = np.array(list(cast(Any, params).as_dict().values()), dtype=np.float64)
    with np.errstate(all="ignore"):
        found = objective(np.log(values))
    if not np.isfinite(found):
        logger.warning(f"{title} warm fit ended where the likelihood is not finite")
        return None
    return params


def sample_spend(sample: list[History]) -> SpendFit | None:
    """The Gamma-Gamma fit over a sample of buyers' live spend."""
    if not sample:
        return None
    x = np.array([h.x for h in sample], dtype=np.float64)
    spend = np.array([h.spend for h in sample], dtype=np.float64)
    return fit_spend_model(x, spend)


def fit_grid(
    rows: GridRows,
    sample: list[History],
    as_of: date,
    options: ModelOptions,
    previous: Fit | None = None,
) -> Fit:
    """The P(alive) model over the grid and the spend model over the sample (pure,
    CPU-bound); ``previous``, the stored fit, warm-starts the P(alive) search."""
    params, total = fit_alive(rows, options, warm_start(previous, options))
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
