"""Period retention metrics and cohorts, computed plainly from a batch of events.

This is the reference for docs/metrics.md, "Activity and churn" and "Cohorts": it reads the
definitions literally, with no incremental state, so that the streaming computation can be
checked against it over the same events. It favours being obviously right over being fast,
but stays linear in the events plus the (customer, active boundary) pairs, so a whole CDNOW
backtest runs in seconds.

Conventions shared by both entry points:
- ``events`` are accepted events, already deduplicated by the caller;
- the observed span runs from the period of the first event through the period holding the
  last event, or the period holding ``until`` when given; events after ``until`` are left
  out, as if the data ended there (the analogue of "the last event");
- activity is what :func:`is_activity` says: only placed orders are order activity.
"""

from __future__ import annotations

from bisect import bisect_right
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from typing import Any

from contract.events import MICROS, Event, LoginEvent, OrderEvent
from processors.state import carried_attributes
from processors.windows import (
    Period,
    local_date,
    local_midnight,
    next_period,
    period_index,
    periods_between,
)

ActivityKinds = frozenset[str]


@dataclass(frozen=True, slots=True)
class PeriodRow:
    """One entry of the backtest report's ``periods`` list (docs/metrics.md, Backtest report)."""

    period: str
    start_customers: int
    end_customers: int
    new_customers: int
    lost_customers: int
    reactivated_customers: int
    crr: float | None
    churn_rate: float | None
    orders: int
    revenue: float
    aov: float | None
    purchase_frequency: float | None
    repeat_customer_rate: float | None
    #: ``revenue`` in millionths, exact at any size (``revenue``, a float, is not past
    #: some 9e9 units)
    revenue_micros: int

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class Cohort:
    """One entry of the report's ``cohorts`` map: ``active[k]`` counts period ``c + k``,
    ``revenue_micros[k]`` the cohort's revenue in it (placed minus refunded)."""

    size: int
    active: list[int]
    revenue_micros: list[int] | None = None

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"size": self.size, "active": list(self.active)}
        if self.revenue_micros is not None:
            first = self.revenue_micros[0]
            out["revenue_micros"] = list(self.revenue_micros)
            out["revenue"] = [m / MICROS for m in self.revenue_micros]
            # the share of the cohort's first-period revenue, as active[k] / size is of its
            # customers (none when its first period brought no revenue)
            out["revenue_share"] = [m / first if first > 0 else None for m in self.revenue_micros]
        return out


@dataclass(slots=True)
class _Flow:
    """Customer movements across one period, counted customer by customer."""

    start: int = 0
    end: int = 0
    new: int = 0
    lost: int = 0
    reactivated: int = 0


@dataclass(slots=True)
class _Sales:
    orders: int = 0
    placed_micros: int = 0
    refunded_micros: int = 0
    per_buyer: Counter[str] = field(default_factory=Counter)


def is_activity(event: Event, kinds: ActivityKinds) -> bool:
    """Whether ``event`` counts as activity (docs/metrics.md: only placed orders are activity).

    The same rule as :func:`processors.state.apply_event`, so per-customer state and these
    metrics agree on who was active when.
    """
    if isinstance(event, OrderEvent):
        return event.status == "placed" and "order" in kinds
    if isinstance(event, LoginEvent):
        return "login" in kinds
    return "support" in kinds


def _observed(events: Iterable[Event], until: datetime | None) -> list[Event]:
    kept = list(events)
    if until is None:
        return kept
    return [e for e in kept if e.ts <= until]


def _span(events: Sequence[Event], period: Period, until: datetime | None) -> list[datetime]:
    """Period starts of the observed span (see the module docstring)."""
    if not events:
        return []
    first = min(e.ts for e in events)
    last = until if until is not None else max(e.ts for e in events)
    return periods_between(first, last, period)


def _activity_times(events: Iterable[Event], kinds: ActivityKinds) -> dict[str, list[datetime]]:
    times: dict[str, list[datetime]] = defaultdict(list)
    for event in events:
        if is_activity(event, kinds):
            times[event.customer_id].append(event.ts)
    return {cid: sorted(ts) for cid, ts in times.items()}


def _active_boundaries(
    times: Sequence[datetime], boundaries: Sequence[datetime], window: timedelta
) -> set[int]:
    """Indexes ``j`` such that the customer is active at ``boundaries[j]``.

    Active at t means an activity with ``t - W <= ts < t``, that is ``ts < t <= ts + W``; so
    each activity covers the boundaries in ``(ts, ts + W]``. W counts calendar days: the
    boundaries are local midnights, and ``ts + W`` is taken as midnight W days after the
    local date of ``ts``, so that a window across a daylight-saving change still spans W
    dates (in UTC the two are the same). ``times`` is sorted, so the covered ranges only
    move forward and each index is visited once.
    """
    active: set[int] = set()
    reached = 0
    days = window.days if window == timedelta(days=window.days) else None
    for ts in times:
        low = max(bisect_right(boundaries, ts), reached)
        reach = ts + window if days is None else local_midnight(local_date(ts) + timedelta(days))
        high = bisect_right(boundaries, reach)
        active.update(range(low, high))
        reached = max(reached, high)
    return active


def _tally(flow: _Flow, in_start: bool, in_end: bool, is_new: bool) -> None:
    """Add one customer to a period's counts (docs/metrics.md, Activity and churn).

    ``N`` = new ∩ E; lost = S \\ E; reactivated = E \\ S \\ N. A new customer cannot be in S
    (its first activity lies after the start), so the three sets never overlap.
    """
    flow.start += in_start
    flow.end += in_end
    flow.new += in_end and is_new
    flow.lost += in_start and not in_end
    flow.reactivated += in_end and not in_start and not is_new


def _flows(
    activity: dict[str, list[datetime]],
    starts: Sequence[datetime],
    period: Period,
    window: timedelta,
) -> list[_Flow]:
    """S, E, N, lost and reactivated counts for each period of ``starts``."""
    boundaries = [*starts, next_period(starts[-1], period)]
    base = period_index(starts[0], period)
    flows = [_Flow() for _ in starts]
    for times in activity.values():
        active = _active_boundaries(times, boundaries, window)
        first = period_index(times[0], period) - base
        # only periods with the customer active at one of their two ends can count it
        touched = {j for j in active if j < len(starts)} | {j - 1 for j in active if j > 0}
        for i in touched:
            _tally(flows[i], i in active, i + 1 in active, i == first)
    return flows


def _sales(events: Iterable[Event], starts: Sequence[datetime], period: Period) -> list[_Sales]:
    """Orders and money per period, in integer micros so that sums are exact."""
    base = period_index(starts[0], period)
    sales = [_Sales() for _ in starts]
    for event in events:
        if not isinstance(event, OrderEvent):
            continue
        bucket = sales[period_index(event.ts, period) - base]
        if event.status == "placed":
            bucket.orders += 1
            bucket.placed_micros += event.amount_micros
            bucket.per_buyer[event.customer_id] += 1
        elif event.status == "refunded":
            bucket.refunded_micros += event.amount_micros
    return sales


def _ratio(numerator: float, denominator: int) -> float | None:
    """docs/metrics.md: a ratio is null where its divisor is 0."""
    return numerator / denominator if denominator else None


@dataclass(frozen=True, slots=True)
class PeriodCounts:
    """The integers a period row is made of; the streaming store counts the same ones."""

    start: int
    end: int
    new: int
    lost: int
    reactivated: int
    orders: int
    placed_micros: int
    refunded_micros: int
    buyers: int
    repeaters: int


def row_from_counts(start: datetime, c: PeriodCounts) -> PeriodRow:
    """The ratios of docs/metrics.md, Activity and churn, in one place for batch and stream."""
    return PeriodRow(
        period=start.date().isoformat(),
        start_customers=c.start,
        end_customers=c.end,
        new_customers=c.new,
        lost_customers=c.lost,
        reactivated_customers=c.reactivated,
        crr=_ratio(c.end - c.new, c.start),
        churn_rate=_ratio(c.lost, c.start),
        orders=c.orders,
        revenue=(c.placed_micros - c.refunded_micros) / MICROS,
        aov=_ratio(c.placed_micros / MICROS, c.orders),
        purchase_frequency=_ratio(c.orders, c.buyers),
        repeat_customer_rate=_ratio(c.repeaters, c.buyers),
        revenue_micros=c.placed_micros - c.refunded_micros,
    )


def _row(start: datetime, flow: _Flow, sales: _Sales) -> PeriodRow:
    counts = PeriodCounts(
        start=flow.start,
        end=flow.end,
        new=flow.new,
        lost=flow.lost,
        reactivated=flow.reactivated,
        orders=sales.orders,
        placed_micros=sales.placed_micros,
        refunded_micros=sales.refunded_micros,
        buyers=len(sales.per_buyer),
        repeaters=sum(1 for n in sales.per_buyer.values() if n >= 2),
    )
    return row_from_counts(start, counts)


def period_rows(
    events: Iterable[Event],
    *,
    period: Period,
    churn_after: timedelta,
    activity_kinds: ActivityKinds,
    until: datetime | None = None,
) -> list[PeriodRow]:
    """The report's ``periods`` (docs/metrics.md, Activity and churn; Backtest report).

    Each period ``[s, e)`` is evaluated at its end: S is who was active at ``s``, E who was
    active at ``e``, with ``churn_after`` as the window W. ``crr`` is (|E| - |N|) / |S| as
    the seed articles define it, so with reactivations ``crr + churn_rate`` may exceed 1.
    Orders and revenue use every order event whatever the activity kinds: a refund lowers
    the revenue of the period it happens in, not of the order it refunds.
    """
    kept = _observed(events, until)
    starts = _span(kept, period, until)
    if not starts:
        return []
    flows = _flows(_activity_times(kept, activity_kinds), starts, period, churn_after)
    sales = _sales(kept, starts, period)
    return [_row(s, f, m) for s, f, m in zip(starts, flows, sales, strict=True)]


def cohorts(
    events: Iterable[Event],
    *,
    period: Period,
    activity_kinds: ActivityKinds,
    until: datetime | None = None,
) -> dict[str, Cohort]:
    """The report's ``cohorts``, keyed by the cohort period's start date (docs/metrics.md, Cohorts).

    A customer's cohort is the period of its first activity; customers without activity
    belong to none. Every row runs through the last period of the observed span, the same
    last period as :func:`period_rows`, so the two views of one backtest line up.
    """
    kept = _observed(events, until)
    starts = _span(kept, period, until)
    if not starts:
        return {}
    label = {period_index(s, period): s.date().isoformat() for s in starts}
    last = period_index(starts[-1], period)
    seen: dict[str, set[int]] = defaultdict(set)
    for event in kept:
        if is_activity(event, activity_kinds):
            seen[event.customer_id].add(period_index(event.ts, period))
    matrix: dict[int, list[int]] = {}
    cohort_of: dict[str, int] = {}
    for customer, indexes in seen.items():
        cohort = cohort_of[customer] = min(indexes)
        row = matrix.setdefault(cohort, [0] * (last - cohort + 1))
        for index in indexes:
            row[index - cohort] += 1
    # revenue: each placed order adds, each refund takes off, in the period it happens in,
    # for the cohort of its customer; orders before a customer's first activity (when
    # orders do not count as activity) belong to no cohort period
    money = {c: [0] * len(row) for c, row in matrix.items()}
    for event in kept:
        if not isinstance(event, OrderEvent) or event.status == "cancelled":
            continue
        home = cohort_of.get(event.customer_id)
        offset = -1 if home is None else period_index(event.ts, period) - home
        if home is not None and offset >= 0:
            sign = 1 if event.status == "placed" else -1
            money[home][offset] += sign * event.amount_micros
    return {
        label[c]: Cohort(size=row[0], active=row, revenue_micros=money[c])
        for c, row in sorted(matrix.items())
    }


def latest_values(events: Iterable[Event], attribute: str) -> dict[str, str]:
    """Each customer's latest value of a customer attribute (contract.events.DIMENSIONS):
    the value of its latest event that carried it; of events at the same time, the largest
    value (the store keeps the same, whatever the order the events came in)."""
    latest: dict[str, tuple[datetime, str]] = {}
    for event in events:
        value = carried_attributes(event).get(attribute)
        if value is None:
            continue
        seen = latest.get(event.customer_id)
        if seen is None or (event.ts, value) > seen:
            latest[event.customer_id] = (event.ts, value)
    return {customer: value for customer, (_, value) in latest.items()}


def by_latest_value(events: Sequence[Event], attribute: str) -> dict[str | None, list[Event]]:
    """The events split by their customer's latest value of ``attribute`` (None: customers
    whose events never carried one), for the breakdowns' batch computation."""
    latest = latest_values(events, attribute)
    out: dict[str | None, list[Event]] = defaultdict(list)
    for event in events:
        out[latest.get(event.customer_id)].append(event)
    return dict(out)
