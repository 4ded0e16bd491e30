"""Fits from the fit grid: the same P(alive) numbers as the per-customer computation."""

from __future__ import annotations

import random
from collections import Counter
from datetime import date, timedelta

import numpy as np
import pytest

from processors.alive_models import ModelName
from processors.fit_grid import (
    Cell,
    Cells,
    cltv_quantile,
    fit_grid,
    grid_rows,
    merge_cells,
    parse_cells,
)
from processors.fitting import merged_rows
from processors.forecast import (
    History,
    ModelOptions,
    approximate_spend,
    day_number,
    fit_histories,
    stats_from_days,
    values,
)

AS_OF = date(2024, 6, 30)


@pytest.mark.parametrize(
    ("field", "cell"),
    [
        ("19800:19810:3", Cell(19800, 19810, 3)),
        ("19800:19800:1", Cell(19800, 19800, 1)),  # a one-time buyer
        ("19800:19801:2", Cell(19800, 19801, 2)),  # every day of the span
        ("19800:19801:3", None),  # more days than the span holds
        ("19800:19810:1", None),  # one day cannot span ten
        ("19800:19790:2", None),  # last before first
        ("19800:19810:0", None),  # no order day
        ("19800:19810", None),  # a part missing
        ("19800:19810:3:64", None),  # a part too many (an older grid's revenue)
        ("a:b:c", None),
    ],
)
def test_cells_parse_or_are_refused(field: str, cell: Cell | None) -> None:
    assert Cell.parse(field) == cell
    if cell is not None:
        assert cell.field() == field


def test_shards_are_summed_and_unreadable_fields_counted() -> None:
    cells, malformed = merge_cells(
        [
            {"10:12:2": "3", "10:10:1": "1", "junk": "4"},
            {"10:12:2": "2", "11:11:1": "x", "12:12:1": "0", "13:13:1": "-1"},
        ]
    )
    assert cells == {Cell(10, 12, 2): 5, Cell(10, 10, 1): 1}
    assert malformed == 2  # "junk", and a count that is not a number


def test_rows_leave_out_later_buyers() -> None:
    limit = day_number(AS_OF)
    rows = grid_rows(
        {
            Cell(limit - 14, limit, 2): 3,
            Cell(limit - 14, limit - 7, 2): 1,
            Cell(limit - 10, limit + 1, 3): 2,  # ordered after the as-of day
            Cell(limit + 1, limit + 1, 1): 5,  # not a buyer yet
        },
        limit,
    )
    assert (rows.customers, rows.cells, rows.left_out) == (4, 2, 2)
    # rows sorted as np.unique sorts them: by x, then t_x, then T
    assert rows.x.tolist() == [1.0, 1.0]
    assert rows.t_x.tolist() == [1.0, 2.0]
    assert rows.T.tolist() == [2.0, 2.0]
    assert rows.weights.tolist() == [1.0, 3.0]


def random_grid(rng: random.Random, size: int) -> dict[str, str]:
    """Cells of buyers around the as-of day, some of them later buyers."""
    limit = day_number(AS_OF)
    grid: dict[str, str] = {}
    for _ in range(size):
        first = limit - rng.randrange(-3, 400)
        last = first + rng.choice([0, 0, rng.randrange(0, 200)])
        days = 1 if last == first else rng.randrange(2, last - first + 2)
        grid[f"{first}:{last}:{days}"] = str(rng.choice([1, 1, 2, rng.randrange(1, 500), 0]))
    return grid


@pytest.mark.parametrize(
    "odd",
    [
        {},  # clean: numpy parses the whole text
        {"19800:19801:3": "2", "19800:19790:2": "1", "5:5:0": "1"},  # well-formed, refused
        {"junk": "4", "1::3": "1", "1 2:3:4": "1"},  # unreadable fields
        {"19800:19810:3": "x"},  # an unreadable count
        {"19800:19810:3:64": "2", "19800:19810": "1"},  # parts too many, too few
        {"19800:19800:1": "-3"},  # a negative count, skipped
        {"123456789012345678:123456789012345678:1": "1"},  # too long for the fast path
    ],
)
def test_parsing_a_shard_at_once_reads_what_field_by_field_reads(odd: dict[str, str]) -> None:
    shards = [{**random_grid(random.Random(n), 300), **(odd if n == 1 else {})} for n in range(3)]
    by_field, malformed = merge_cells(shards)
    parsed = Cells.joined([parse_cells(list(g), list(g.values())) for g in shards])
    assert parsed.malformed == malformed
    summed: Counter[Cell] = Counter()
    for first, last, days, count in zip(
        parsed.first, parsed.last, parsed.days, parsed.count, strict=True
    ):
        summed[Cell(int(first), int(last), int(days))] += int(count)
    assert dict(summed) == by_field
    # and the rows, their order and weights, bit for bit
    limit = day_number(AS_OF)
    want, got = grid_rows(by_field, limit, malformed), grid_rows(parsed, limit)
    for name in ("x", "t_x", "T", "weights"):
        assert np.array_equal(getattr(got, name), getattr(want, name)), name
    assert (got.cells, got.left_out, got.malformed) == (want.cells, want.left_out, malformed)


def test_rows_are_sorted_as_np_unique_sorts_them() -> None:
    cells = merge_cells([random_grid(random.Random(4), 2000)])[0]
    limit = day_number(AS_OF)
    rows = grid_rows(cells, limit)
    kept = [(c, n) for c, n in cells.items() if c.last <= limit]
    x = np.array([c.days - 1 for c, _ in kept], dtype=np.float64)
    t_x = np.array([c.last - c.first for c, _ in kept], dtype=np.float64) / 7
    T = np.array([limit - c.first for c, _ in kept], dtype=np.float64) / 7
    (x, t_x, T), weights = merged_rows([x, t_x, T], np.array([n for _, n in kept], dtype=float))
    assert np.array_equal(rows.x, x) and np.array_equal(rows.t_x, t_x)
    assert np.array_equal(rows.T, T) and np.array_equal(rows.weights, weights)
    # cells too far apart for one sort key take the general sort, in the same order
    far = grid_rows({**cells, Cell(limit - (1 << 22), limit - 5, 3): 2}, limit)
    assert far.T[far.T.argmax()] == (1 << 22) / 7 and far.cells == rows.cells + 1


def test_merged_rows_sum_the_weights_of_equal_rows() -> None:
    (a, b), w = merged_rows(
        [np.array([2.0, 1.0, 2.0]), np.array([0.5, 0.5, 0.5])], np.array([1.0, 4.0, 2.0])
    )
    assert (a.tolist(), b.tolist(), w.tolist()) == ([1.0, 2.0], [0.5, 0.5], [4.0, 3.0])


def buyers(seed: int, customers: int) -> list[tuple[list[int], int]]:
    """Order days (repeats on one day included) and net revenue of synthetic buyers."""
    rng = random.Random(seed)
    limit = day_number(AS_OF)
    found = []
    for _ in range(customers):
        first = limit - rng.randrange(0, 200)
        days = [first] + [
            first + rng.randrange(0, limit - first + 1) for _ in range(rng.choice([0, 0, 1, 3]))
        ]
        typical = rng.lognormvariate(3.0, 0.8)  # buyers differ in what they spend
        revenue = sum(int(typical * rng.uniform(0.5, 1.5) * 1_000_000) for _ in days)
        found.append((days, revenue))
    return found


def per_customer(found: list[tuple[list[int], int]]) -> list[History]:
    limit = day_number(AS_OF)
    histories = []
    for n, (days, revenue) in enumerate(found):
        stats = stats_from_days(days, limit)
        assert stats is not None
        histories.append(History(f"c{n}", *stats, approximate_spend(revenue, len(set(days)))))
    return histories


def grid(found: list[tuple[list[int], int]], shards: int) -> list[dict[str, str]]:
    """The fit grid the batch script keeps for these buyers, spread over shards."""
    counted: list[Counter[str]] = [Counter() for _ in range(shards)]
    for n, (days, _) in enumerate(found):
        counted[n % shards][f"{min(days)}:{max(days)}:{len(set(days))}"] += 1
    return [{field: str(count) for field, count in shard.items()} for shard in counted]


@pytest.mark.parametrize(
    ("model", "shards", "customers"),
    [("mbgnbd", 1, 400), ("mbgnbd", 4, 400), ("bgnbd", 4, 150), ("paretonbd", 1, 150)],
)
def test_grid_fit_is_the_per_customer_fit(model: ModelName, shards: int, customers: int) -> None:
    found = buyers(11, customers)
    options = ModelOptions(model)
    histories = per_customer(found)
    reference = fit_histories(histories, AS_OF, options)
    cells, malformed = merge_cells(grid(found, shards))
    rows = grid_rows(cells, day_number(AS_OF), malformed)
    assert rows.cells < len(found)  # buyers do share cells
    fit = fit_grid(rows, histories, AS_OF, options)
    # the same search over the same rows: the same parameters, to the last bit
    assert fit.params == reference.params
    assert fit.customers == reference.customers == customers
    assert fit.spend == reference.spend  # the sample is every buyer here
    assert fit.log_likelihood == pytest.approx(reference.log_likelihood, rel=1e-12)


def test_cltv_quantile_over_every_buyer_is_numpy_quantile() -> None:
    found = buyers(5, 300)
    histories = per_customer(found)
    fit = fit_histories(histories, AS_OF, ModelOptions())
    assert fit.spend is not None
    x, t_x, T = (
        np.array(c, dtype=np.float64)
        for c in zip(*((h.x, h.t_x, h.T) for h in histories), strict=True)
    )
    _, totals = values(fit, x, t_x, T, np.array([h.spend for h in histories]))
    for quantile in (0.0, 0.5, 0.8, 1.0):
        assert cltv_quantile(fit, histories, quantile) == float(np.quantile(totals, quantile))
    exact = {h.customer_id: 10.0 for h in histories}
    assert cltv_quantile(fit, histories, 0.5, exact) != cltv_quantile(fit, histories, 0.5)
    assert cltv_quantile(fit, [], 0.5) is None


def test_a_later_as_of_day_moves_every_buyers_age() -> None:
    cells, _ = merge_cells(grid(buyers(3, 50), 1))
    later = AS_OF + timedelta(days=7)
    before = grid_rows(cells, day_number(AS_OF))
    after = grid_rows(cells, day_number(later))
    assert np.allclose(after.T, before.T + 1.0) and np.array_equal(after.x, before.x)
