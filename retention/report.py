"""Text tables and a heatmap for period metrics and cohorts (docs/metrics.md, Backtest report).

Pure presentation: the inputs are the report's JSON shapes (``periods`` entries and the
``cohorts`` map), so the same code renders a live store, a backtest and a saved report.

- :func:`render_periods` prints one line per period: customer flow, rates as percentages,
  money with two decimals, ``-`` where a value is null (its divisor was 0).
- :func:`render_cohorts` prints the cohort matrix twice, as counts and as percentages of the
  cohort size; wide matrices are wrapped into blocks of offsets that fit the line width.
- :func:`plot_cohorts` draws the percentages as a heatmap PNG. Matplotlib is imported only
  there, with the Agg canvas, so the text output works without it and nothing needs a display.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from processors.model_params import TITLES
from processors.windows import PERIODS, current_calendar

NULL = "-"
OPEN_MARKER = "(open)"
DEFAULT_WIDTH = 100
#: Above this many offsets the heatmap cells are too narrow to carry their percentage.
MAX_ANNOTATED_OFFSETS = 40
_GAP = "  "


def _check_period(period: str) -> str:
    if period not in PERIODS:
        raise ValueError(f"unknown period {period!r}; expected one of {', '.join(PERIODS)}")
    return period


_ADJECTIVES = {"day": "daily", "week": "weekly", "month": "monthly"}


def _plural(period: str) -> str:
    return f"{_check_period(period)}s"


def _count(value: Any) -> str:
    return NULL if value is None else f"{int(value):,}"


def _money(value: Any) -> str:
    return NULL if value is None else f"{float(value):,.2f}"


def _rate(value: Any) -> str:
    return NULL if value is None else f"{float(value) * 100:.1f}%"


def _ratio(value: Any) -> str:
    return NULL if value is None else f"{float(value):.2f}"


#: Columns of :func:`render_periods` after the period itself: key, header, formatter.
PERIOD_COLUMNS: tuple[tuple[str, str, Callable[[Any], str]], ...] = (
    ("start_customers", "start", _count),
    ("end_customers", "end", _count),
    ("new_customers", "new", _count),
    ("lost_customers", "lost", _count),
    ("reactivated_customers", "react.", _count),
    ("crr", "CRR", _rate),
    ("churn_rate", "churn", _rate),
    ("orders", "orders", _count),
    ("revenue", "revenue", _money),
    ("aov", "AOV", _money),
    ("purchase_frequency", "freq", _ratio),
    ("repeat_customer_rate", "repeat", _rate),
)

PERIOD_LEGEND = (
    "start/end: customers active at the period's start/end; react.: reactivated;\n"
    "CRR = (end - new) / start; churn = lost / start; AOV: average order value;\n"
    "freq: orders per buyer; repeat: buyers with 2+ orders; -: no value (divisor 0)."
)


def _table(header: Sequence[str], body: Sequence[Sequence[str]], left: int) -> list[str]:
    """Aligned lines: the first ``left`` columns flush left, the others flush right."""
    widths = [len(h) for h in header]
    for cells in body:
        widths = [max(w, len(c)) for w, c in zip(widths, cells, strict=True)]

    def line(cells: Sequence[str]) -> str:
        parts = [
            c.ljust(w) if i < left else c.rjust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ]
        return _GAP.join(parts).rstrip()

    rule = _GAP.join("-" * w for w in widths)
    return [line(header), rule, *(line(cells) for cells in body)]


def render_periods(
    rows: Sequence[Mapping[str, Any]], period: str, currency: str | None = None
) -> str:
    """The ``periods`` entries as an aligned text table, oldest first as given.

    Columns: period start date, customers at the start and end, new, lost and reactivated
    customers, CRR and churn rate, orders, revenue, AOV, purchase frequency (orders per
    buyer) and repeat-customer rate; a legend follows. A row with ``"open": True`` is the
    current period, not closed yet: it is marked ``(open)`` and a note says its numbers can
    still change.
    """
    _check_period(period)
    if not rows:
        return f"No {period} periods."
    header = ["period", *(h for _, h, _ in PERIOD_COLUMNS)]
    body = [
        [
            f"{row['period']} {OPEN_MARKER}" if row.get("open") else str(row["period"]),
            *(fmt(row.get(key)) for key, _, fmt in PERIOD_COLUMNS),
        ]
        for row in rows
    ]
    lines = [f"Retention by {period} (period start dates, {current_calendar().describe()})", ""]
    lines += _table(header, body, left=1)
    lines += ["", PERIOD_LEGEND]
    if currency:
        lines.append(f"revenue and AOV in {currency}.")
    if any(row.get("open") for row in rows):
        lines.append(f"{OPEN_MARKER} = the current {period}, not closed yet: it can still change.")
    return "\n".join(lines)


def value_heading(by: str, value: str | None, customers: int | None = None) -> str:
    """The line above one value's table in a breakdown."""
    name = f"{by} {value}" if value is not None else f"no {by}"
    return f"== {name}" + ("" if customers is None else f" ({customers:,} customers)")


@dataclass(frozen=True, slots=True)
class CohortRow:
    """One cohort ready to show: ``percent[k]`` is ``active[k]`` over the size, in %."""

    start: str
    size: int
    active: tuple[int, ...]
    percent: tuple[float | None, ...]


def cohort_rows(cohorts: Mapping[str, Mapping[str, Any]], revenue: bool = False) -> list[CohortRow]:
    """The cohort map in start-date order, with retention percentages of each cohort's size
    (``revenue``: of its first period's revenue, from ``revenue_share``).

    A percentage is ``None`` when there is nothing to divide by: an empty cohort, or no
    revenue in its first period.
    """
    rows = []
    for start in sorted(cohorts):
        cohort = cohorts[start]
        size = int(cohort["size"])
        active = tuple(int(n) for n in cohort["active"])
        if revenue:
            if "revenue_share" not in cohort:
                raise ValueError("these cohorts carry no revenue")
            shares = cohort["revenue_share"]
            percent = tuple(None if v is None else 100.0 * v for v in shares)
        else:
            percent = tuple(100.0 * n / size if size else None for n in active)
        rows.append(CohortRow(start, size, active, percent))
    return rows


def _percent(value: float | None) -> str:
    return NULL if value is None else f"{value:.1f}%"


def _blocks(label_width: int, cell_widths: Sequence[int], width: int) -> list[range]:
    """Ranges of offsets whose cells fit on one line after the labels (at least one each)."""
    blocks: list[range] = []
    first, used = 0, label_width
    for k, cell in enumerate(cell_widths):
        if k > first and used + len(_GAP) + cell > width:
            blocks.append(range(first, k))
            first, used = k, label_width
        used += len(_GAP) + cell
    blocks.append(range(first, len(cell_widths)))
    return blocks


def _matrix(rows: Sequence[CohortRow], cells: Sequence[Sequence[str]], width: int) -> list[str]:
    """Cohort labels and size, then the offsets; wrapped into blocks that fit ``width``."""
    offsets = max(len(c) for c in cells)
    labels = [[r.start, f"{r.size:,}"] for r in rows]
    label_header = ["cohort", "size"]
    label_widths = [max(len(h), *(len(lb[i]) for lb in labels)) for i, h in enumerate(label_header)]
    cell_widths = [
        max(len(str(k)), *(len(c[k]) for c in cells if k < len(c))) for k in range(offsets)
    ]
    label_width = sum(label_widths) + len(_GAP) * (len(label_widths) - 1)
    lines: list[str] = []
    for block in _blocks(label_width, cell_widths, width):
        if lines:
            lines.append("")
        header = [*label_header, *(str(k) for k in block)]
        body = [
            [*label, *(c[k] if k < len(c) else "" for k in block)]
            for label, c in zip(labels, cells, strict=True)
            if len(c) > block.start or block.start == 0
        ]
        lines += _table(header, body, left=2)
    return lines


def render_cohorts(
    cohorts: Mapping[str, Mapping[str, Any]],
    period: str,
    width: int = DEFAULT_WIDTH,
    revenue: str | None = None,
) -> str:
    """The cohort matrix as two stacked text tables: active customers, then % of size;
    with ``revenue`` (the reporting currency), the cohorts' revenue instead, then its % of
    each cohort's first-period revenue.

    One row per cohort (start date of its first-activity period, and its size), one column
    per offset ``k`` = periods since first activity; a younger cohort has a shorter row.
    When the offsets do not fit in ``width`` characters, each table continues in further
    blocks of offsets that repeat the labels of the cohorts old enough to reach them.
    """
    since = f"{_plural(period)} since first activity"
    rows = cohort_rows(cohorts, revenue=revenue is not None)
    if not rows:
        return f"No {period} cohorts."
    percents = [[_percent(p) for p in r.percent] for r in rows]
    if revenue is not None:
        money = [
            [f"{m / 1_000_000:,.2f}" for m in cohorts[r.start]["revenue_micros"]] for r in rows
        ]
        lines = [f"Revenue per {period} cohort ({revenue}, placed minus refunded), by {since}", ""]
        lines += _matrix(rows, money, width)
        lines += ["", "", f"Revenue retention (% of the cohort's first {period}), by {since}", ""]
        lines += _matrix(rows, percents, width)
        return "\n".join(lines)
    counts = [[f"{n:,}" for n in r.active] for r in rows]
    lines = [f"Active customers per {period} cohort, by {since}", ""]
    lines += _matrix(rows, counts, width)
    lines += ["", "", f"Retention (% of cohort size still active), by {since}", ""]
    lines += _matrix(rows, percents, width)
    return "\n".join(lines)


def _cell_label(value: float) -> str:
    if 0 < value < 0.5:
        return "<1%"
    return f"{value:.0f}%"


def _layout(rows: int, cols: int) -> tuple[float, float, float | None]:
    """Cell width and height in inches, and the annotation font size (None: no annotations)."""
    if cols <= 15:
        cell_w, font = 0.62, 9.0
    elif cols <= 25:
        cell_w, font = 0.5, 8.0
    elif cols <= MAX_ANNOTATED_OFFSETS:
        cell_w, font = 0.42, 6.5
    else:
        cell_w, font = max(0.08, min(0.3, 14 / cols)), 0.0
    cell_h = 0.42 if rows <= 25 else max(0.12, min(0.42, 16 / rows))
    if cell_h < 0.2:
        font = 0.0
    return cell_w, cell_h, (font or None)


def plot_cohorts(
    cohorts: Mapping[str, Mapping[str, Any]],
    period: str,
    path: Path,
    title: str | None = None,
    revenue: bool = False,
) -> None:
    """Write the retention matrix as a heatmap PNG to ``path``.

    Rows are cohorts (labelled with their start date and size), columns the periods since
    first activity; the colour is the percentage of the cohort still active, on a fixed
    0-100 scale, and each cell carries its percentage while the matrix is narrow enough
    (``revenue``: the cohort's revenue as a percentage of its first period's, on a scale
    from 0 to 100 or the highest share if above). Cells past a cohort's age are left
    blank. Raises ``ValueError`` with no cohorts.
    """
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.colors import Normalize
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator, PercentFormatter

    unit = _check_period(period)
    rows = cohort_rows(cohorts, revenue=revenue)
    if not rows:
        raise ValueError(f"no {period} cohorts to plot")
    n_rows, n_cols = len(rows), max(1, *(len(r.percent) for r in rows))

    values = np.full((n_rows, n_cols), np.nan)
    for i, row in enumerate(rows):
        for k, pct in enumerate(row.percent):
            if pct is not None:
                values[i, k] = pct
    grid = np.ma.masked_invalid(values)

    cell_w, cell_h, font = _layout(n_rows, n_cols)
    fig = Figure(
        figsize=(max(6.0, 3.6 + n_cols * cell_w), max(3.5, 1.6 + n_rows * cell_h)),
        dpi=120,
        layout="constrained",
    )
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    top = float(np.nanmax(values)) if revenue and np.isfinite(values).any() else 100.0
    norm = Normalize(vmin=0, vmax=max(100.0, top))
    image = ax.imshow(grid, cmap="viridis", norm=norm, aspect="auto", interpolation="nearest")
    cmap = image.get_cmap()

    label_size = 9.0 if n_rows <= 30 else 7.0
    step = max(1, math.ceil(n_rows / 60))
    ax.set_yticks(
        range(0, n_rows, step),
        [f"{r.start} (n={r.size:,})" for r in rows[::step]],
        fontsize=label_size,
    )
    if n_cols <= MAX_ANNOTATED_OFFSETS:
        ax.set_xticks(range(n_cols), [str(k) for k in range(n_cols)], fontsize=label_size)
    else:
        ax.xaxis.set_major_locator(MaxNLocator(nbins=20, integer=True))
        ax.tick_params(axis="x", labelsize=label_size)
    ax.set_xticks(np.arange(-0.5, n_cols, 1.0), minor=True)
    ax.set_yticks(np.arange(-0.5, n_rows, 1.0), minor=True)
    if n_cols <= MAX_ANNOTATED_OFFSETS and n_rows <= 60:
        ax.grid(which="minor", color="white", linewidth=1.0)
    ax.tick_params(which="minor", length=0)
    ax.tick_params(which="major", length=2)
    for spine in ax.spines.values():
        spine.set_visible(False)

    if font is not None:
        for i, row in enumerate(rows):
            for k, pct in enumerate(row.percent):
                if pct is None:
                    continue
                red, green, blue, _ = cmap(norm(pct))
                dark = 0.299 * red + 0.587 * green + 0.114 * blue < 0.5
                ax.text(
                    k,
                    i,
                    _cell_label(pct),
                    ha="center",
                    va="center",
                    fontsize=font,
                    color="white" if dark else "black",
                )

    ax.set_xlabel(f"{_plural(unit).capitalize()} since first activity")
    ax.set_ylabel(f"Cohort (first activity {unit})")
    what = "Revenue retention" if revenue else "Customer retention"
    ax.set_title(title if title is not None else f"{what} by {_ADJECTIVES[unit]} cohort")
    bar = fig.colorbar(image, ax=ax, fraction=0.05, pad=0.02, shrink=1.0)
    bar.set_label(
        f"Revenue (% of the cohort's first {unit})"
        if revenue
        else "Customers still active (% of cohort size)"
    )
    bar.ax.yaxis.set_major_formatter(PercentFormatter(xmax=100, decimals=0))
    fig.savefig(Path(path), format="png")


def render_holdout(h: Mapping[str, Any]) -> str:
    """The backtest's calibration / holdout test as text (processors/holdout.py)."""
    lines = [
        "",
        f"Holdout: predictions made at {h['cutoff'][:10]} against the {h['holdout_days']} days "
        f"after ({h['buyers']} buyers of {h['customers']} customers)",
    ]
    if "purchases" not in h:
        return "\n".join([*lines, "no buyer before the cutoff: nothing to predict"])
    models = h["models"]
    title = {n: TITLES[n] for n in models}
    lines.append("repeat purchase days in the holdout per customer, by repeat days before it:")
    first = next(iter(models.values()))["purchases"]
    rows = []
    for k, row in enumerate(first["by_repeat_days"]):
        cells = [row["repeat_days"], str(row["customers"]), f"{row['actual_mean']:.2f}"]
        for m in models.values():
            cells.append(f"{m['purchases']['by_repeat_days'][k]['expected_mean']:.2f}")
        rows.append(cells)
    total = ["all, summed", str(h["buyers"]), f"{first['actual']:,}"]
    rows.append(total + [f"{m['purchases']['expected']:,.1f}" for m in models.values()])
    lines += _table(["repeat days", "customers", "came", *title.values()], rows, left=1)
    lines.append("")
    lines.append("P(alive) as a prediction of no order in the holdout, CLTV against its spend:")
    rows = []
    for n, m in models.items():
        no, value = m["no_purchase"], m["value"] or {}
        rows.append(
            [
                title[n],
                _share(no["auc"], "{:.3f}"),
                _share(no["precision"]),
                _share(no["recall"]),
                _share(value.get("spearman"), "{:.3f}"),
                _share(value.get("top_decile_revenue_share")),
            ]
        )
    heads = ["model", "AUC", "precision", "recall", "Spearman", "top 10% revenue"]
    lines += _table(heads, rows, left=1)
    lines.append(f"(precision and recall of P(alive) < 0.5; configured model {title[h['model']]})")
    lines.append("")
    lines += _table(
        ["P(alive)", "customers", "mean P(alive)", "bought"],
        [
            [
                r["p_alive"],
                str(r["customers"]),
                f"{r['mean_p_alive']:.1%}",
                f"{r['bought_share']:.1%}",
            ]
            for r in h["p_alive"]
        ],
        left=1,
    )
    s, f = h["spend"], h["at_risk"]
    lines.append("")
    lines.append(f"spend in the holdout: expected {s['expected']:,.2f}, placed {s['actual']:,.2f}")
    lines.append(
        f"at risk at the cutoff: {f['flagged']} flagged of {f['customers']} not churned; "
        f"precision {_share(f['precision'])} (flagged who ordered nothing), "
        f"recall {_share(f['recall'])} (of those who ordered nothing); "
        f"{_share(f['silent_share_not_flagged'])} of the {f['not_flagged']} not flagged "
        "ordered nothing"
    )
    if f.get("outcomes"):
        counted = ", ".join(
            f"{r['kind'].replace('_', ' ')}{' ' + r['band'] if r['band'] else ''}: "
            f"{r['returned']} of {r['alerts']} ({_share(r['return_rate'])})"
            for r in f["outcomes"]
        )
        lines.append(
            f"read as alerts at the cutoff, ordered again within {f['outcome_window_days']} "
            f"days: {counted}"
        )
    return "\n".join(lines)


def _share(value: float | None, fmt: str = "{:.1%}") -> str:
    return "-" if value is None else fmt.format(value)


def plot_holdout(h: Mapping[str, Any], path: Path) -> None:
    """Write the holdout's repeat purchase days per customer, by repeat days before the
    cutoff, as a PNG: what came against each model's expectation (lifetimes'
    calibration / holdout plot). Raises ``ValueError`` without a prediction."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if "models" not in h:
        raise ValueError("no buyer before the cutoff: nothing to plot")
    models = h["models"]
    first = next(iter(models.values()))["purchases"]["by_repeat_days"]
    ticks = list(range(len(first)))
    fig = Figure(figsize=(7, 4.5))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.plot(ticks, [row["actual_mean"] for row in first], "ko-", label="came")
    for (name, m), style in zip(models.items(), ["s--", "^-.", "d:"], strict=False):
        means = [row["expected_mean"] for row in m["purchases"]["by_repeat_days"]]
        ax.plot(ticks, means, style, label=TITLES[name])
    ax.set_xticks(ticks, [row["repeat_days"] for row in first])
    ax.set_xlabel(f"repeat purchase days before {h['cutoff'][:10]}")
    ax.set_ylabel(f"mean repeat purchase days in the {h['holdout_days']} days after")
    ax.set_title("Calibration / holdout: predicted against actual purchases")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
