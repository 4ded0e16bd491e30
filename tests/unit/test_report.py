"""Text tables and the cohort heatmap: exact cells on small hand-written inputs."""

from __future__ import annotations

from itertools import pairwise
from pathlib import Path
from typing import Any

import matplotlib.image
import pytest

from processors.metrics import Cohort, PeriodRow
from retention.report import (
    NULL,
    cohort_rows,
    plot_cohorts,
    render_cohorts,
    render_periods,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def period_row(period: str, **values: Any) -> dict[str, Any]:
    row = PeriodRow(
        period=period,
        start_customers=0,
        end_customers=0,
        new_customers=0,
        lost_customers=0,
        reactivated_customers=0,
        crr=None,
        churn_rate=None,
        orders=0,
        revenue=0.0,
        aov=None,
        purchase_frequency=None,
        repeat_customer_rate=None,
        revenue_micros=0,
    ).as_dict()
    row.update(values)
    return row


ROWS = [
    period_row(
        "2024-01-01",
        end_customers=4,
        new_customers=4,
        orders=6,
        revenue=1234.5,
        aov=205.75,
        purchase_frequency=1.5,
        repeat_customer_rate=0.5,
    ),
    period_row(
        "2024-01-08",
        start_customers=4,
        end_customers=3,
        new_customers=1,
        lost_customers=2,
        crr=0.5,
        churn_rate=0.5,
        orders=2,
        revenue=-20.0,
        aov=15.0,
        purchase_frequency=1.0,
        repeat_customer_rate=0.0,
    ),
]

COHORTS = {
    "2024-01-15": Cohort(size=2, active=[2]).as_dict(),
    "2024-01-01": Cohort(size=4, active=[4, 3, 1]).as_dict(),
    "2024-01-08": Cohort(size=3, active=[3, 1]).as_dict(),
}


def table_lines(text: str) -> list[str]:
    """The header, rule and rows of the first table in ``text``."""
    lines = text.splitlines()
    first = next(i for i, line in enumerate(lines) if line.startswith(("period", "cohort")))
    end = next((i for i in range(first, len(lines)) if not lines[i]), len(lines))
    return lines[first:end]


def test_periods_header_and_cells() -> None:
    text = render_periods(ROWS, "week")
    header, _, first, second = table_lines(text)
    assert header.split() == [
        "period",
        "start",
        "end",
        "new",
        "lost",
        "react.",
        "CRR",
        "churn",
        "orders",
        "revenue",
        "AOV",
        "freq",
        "repeat",
    ]
    assert text.startswith("Retention by week")
    assert first.split() == [
        "2024-01-01",
        "0",
        "4",
        "4",
        "0",
        "0",
        "-",
        "-",
        "6",
        "1,234.50",
        "205.75",
        "1.50",
        "50.0%",
    ]
    assert second.split() == [
        "2024-01-08",
        "4",
        "3",
        "1",
        "2",
        "0",
        "50.0%",
        "50.0%",
        "2",
        "-20.00",
        "15.00",
        "1.00",
        "0.0%",
    ]
    assert "(open)" not in text


def test_periods_columns_are_aligned() -> None:
    header, rule, *body = table_lines(render_periods(ROWS, "week"))
    assert {len(line) for line in [header, rule, *body]} == {len(rule)}
    # Numbers are flush right: each column ends where its rule segment ends.
    ends = [i + 1 for i, (a, b) in enumerate(pairwise(rule + " ")) if a == "-" != b]
    for line in [header, *body]:
        for end in ends[1:]:
            assert line[end - 1] != " "


def test_periods_nulls_everywhere() -> None:
    row = {"period": "2024-03-01", "revenue": None}
    _, _, line = table_lines(render_periods([row], "month"))
    assert line.split() == ["2024-03-01", *["-"] * 12]


def test_periods_rates_above_one_and_rounding() -> None:
    row = period_row("2024-01-01", crr=1.0456, churn_rate=0.12345, repeat_customer_rate=1 / 3)
    _, _, line = table_lines(render_periods([row], "day"))
    cells = line.split()
    assert cells[6:8] == ["104.6%", "12.3%"]
    assert cells[-1] == "33.3%"


def test_periods_open_marker() -> None:
    rows = [ROWS[0], {**ROWS[1], "open": True}]
    text = render_periods(rows, "week")
    _, _, first, second = table_lines(text)
    assert "(open)" not in first
    assert second.startswith("2024-01-08 (open)")
    assert len(first) == len(second)
    assert "(open) = the current week, not closed yet" in text


def test_periods_false_open_is_not_marked() -> None:
    text = render_periods([{**ROWS[0], "open": False}], "week")
    assert "(open)" not in text


def test_periods_empty_and_unknown_period() -> None:
    assert render_periods([], "month") == "No month periods."
    with pytest.raises(ValueError, match="unknown period"):
        render_periods(ROWS, "year")


def test_cohort_rows_order_and_percentages() -> None:
    rows = cohort_rows(COHORTS)
    assert [r.start for r in rows] == ["2024-01-01", "2024-01-08", "2024-01-15"]
    assert rows[0].active == (4, 3, 1)
    assert rows[0].percent == (100.0, 75.0, 25.0)
    assert rows[1].percent == pytest.approx((100.0, 100 / 3))
    assert cohort_rows({"2024-01-01": {"size": 0, "active": [0]}})[0].percent == (None,)


def test_cohorts_counts_then_percentages() -> None:
    text = render_cohorts(COHORTS, "week")
    counts_at = text.index("Active customers per week cohort, by weeks since first activity")
    percent_at = text.index("Retention (% of cohort size still active), by weeks since")
    assert counts_at < percent_at

    header, _, *counts = table_lines(text[counts_at:])
    assert header.split() == ["cohort", "size", "0", "1", "2"]
    assert [line.split() for line in counts] == [
        ["2024-01-01", "4", "4", "3", "1"],
        ["2024-01-08", "3", "3", "1"],
        ["2024-01-15", "2", "2"],
    ]
    header, _, *percents = table_lines(text[percent_at:])
    assert header.split() == ["cohort", "size", "0", "1", "2"]
    assert [line.split() for line in percents] == [
        ["2024-01-01", "4", "100.0%", "75.0%", "25.0%"],
        ["2024-01-08", "3", "100.0%", "33.3%"],
        ["2024-01-15", "2", "100.0%"],
    ]
    # A younger cohort's row stops early instead of showing zeros.
    assert len(percents[0]) > len(percents[1]) > len(percents[2])


def test_cohorts_empty_cohort_and_thousands() -> None:
    cohorts = {
        "2024-01-01": {"size": 12345, "active": [12345, 6789]},
        "2024-02-01": {"size": 0, "active": [0]},
    }
    text = render_cohorts(cohorts, "month")
    assert "2024-01-01  12,345  12,345  6,789" in text
    assert "55.0%" in text
    percent_rows = table_lines(text[text.index("Retention") :])[2:]
    assert percent_rows[1].split() == ["2024-02-01", "0", "-"]


def test_cohorts_wrap_to_width() -> None:
    ages = {"2024-01-01": 30, "2024-02-01": 10, "2024-03-01": 5}
    cohorts = {
        start: {"size": 10_000, "active": [10_000 - 300 * k for k in range(age)]}
        for start, age in ages.items()
    }
    text = render_cohorts(cohorts, "month", width=100)
    assert max(len(line) for line in text.splitlines()) <= 100
    for table in text.split("Retention"):
        headers = [line.split() for line in table.splitlines() if line.startswith("cohort")]
        assert len(headers) > 1
        assert [int(k) for h in headers for k in h[2:]] == list(range(30))
    # Later blocks only list the cohorts old enough to reach their offsets.
    last_block = table_lines(text.split("\n\n")[-1])
    assert [line.split()[0] for line in last_block[2:]] == ["2024-01-01"]


def test_cohorts_empty_and_unknown_period() -> None:
    assert render_cohorts({}, "week") == "No week cohorts."
    with pytest.raises(ValueError, match="unknown period"):
        render_cohorts(COHORTS, "quarter")


def decaying_cohorts(count: int, offsets: int) -> dict[str, dict[str, Any]]:
    """``count`` monthly cohorts, the oldest ``offsets`` periods old, retention decaying."""
    cohorts = {}
    for i in range(count):
        size = 1000 + 523 * i
        age = offsets - i
        active = [size] + [round(size * 0.4 * 0.85**k) for k in range(age - 1)]
        cohorts[f"{1997 + i // 12}-{i % 12 + 1:02d}-01"] = {"size": size, "active": active}
    return cohorts


def png_size(path: Path) -> tuple[int, int]:
    image = matplotlib.image.imread(path)
    height, width = image.shape[:2]
    return width, height


@pytest.mark.parametrize(
    ("count", "offsets", "period"),
    [(18, 18, "month"), (12, 78, "week"), (1, 1, "week"), (70, 70, "day")],
)
def test_plot_cohorts_writes_png(tmp_path: Path, count: int, offsets: int, period: str) -> None:
    path = tmp_path / "cohorts.png"
    plot_cohorts(decaying_cohorts(count, offsets), period, path)
    data = path.read_bytes()
    assert data.startswith(PNG_MAGIC)
    width, height = png_size(path)
    assert 500 <= width <= 4000
    assert 300 <= height <= 4000


def test_plot_cohorts_scales_with_matrix(tmp_path: Path) -> None:
    small, large = tmp_path / "small.png", tmp_path / "large.png"
    plot_cohorts(decaying_cohorts(3, 4), "month", small, title="Small")
    plot_cohorts(decaying_cohorts(18, 18), "month", large, title="Large")
    (small_w, small_h), (large_w, large_h) = png_size(small), png_size(large)
    assert large_w > small_w
    assert large_h > small_h


def test_plot_cohorts_rejects_empty_and_unknown_period(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no month cohorts"):
        plot_cohorts({}, "month", tmp_path / "empty.png")
    with pytest.raises(ValueError, match="unknown period"):
        plot_cohorts(COHORTS, "year", tmp_path / "year.png")
    assert not list(tmp_path.iterdir())


def test_the_table_names_the_currency_of_its_money() -> None:
    assert "revenue and AOV in EUR." in render_periods(ROWS, "week", "EUR")
    assert " in " not in render_periods(ROWS, "week").splitlines()[-1]


def test_cohorts_revenue_then_its_share_of_the_first_period() -> None:
    from processors.metrics import Cohort

    cohorts = {
        "2024-01-01": Cohort(4, [4, 3, 1], [100_000_000, 125_500_000, -2_000_000]).as_dict(),
        "2024-01-08": Cohort(3, [3, 1], [0, 9_990_000]).as_dict(),
    }
    text = render_cohorts(cohorts, "week", revenue="EUR")
    money_at = text.index("Revenue per week cohort (EUR, placed minus refunded), by weeks since")
    share_at = text.index("Revenue retention (% of the cohort's first week), by weeks since")
    header, _, *money = table_lines(text[money_at:share_at])
    assert header.split() == ["cohort", "size", "0", "1", "2"]
    assert [line.split() for line in money] == [
        ["2024-01-01", "4", "100.00", "125.50", "-2.00"],
        ["2024-01-08", "3", "0.00", "9.99"],
    ]
    _, _, *shares = table_lines(text[share_at:])
    assert [line.split() for line in shares] == [
        ["2024-01-01", "4", "100.0%", "125.5%", "-2.0%"],
        ["2024-01-08", "3", NULL, NULL],
    ]
    with pytest.raises(ValueError, match="no revenue"):
        render_cohorts(COHORTS, "week", revenue="EUR")


def test_plot_cohort_revenue_writes_png(tmp_path: Path) -> None:
    from processors.metrics import Cohort

    cohorts = {"2024-01-01": Cohort(2, [2, 1], [10_000_000, 30_000_000]).as_dict()}
    path = tmp_path / "revenue.png"
    plot_cohorts(cohorts, "month", path, revenue=True)
    assert path.read_bytes().startswith(PNG_MAGIC)
