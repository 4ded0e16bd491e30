"""Period metrics and cohorts: hand-computed scenarios, then properties on random data.

Most scenarios use weekly periods with a one-week churn window, so that S is "active in
the week before" and E is "active in this week" and the numbers can be checked by eye.
Weeks: w0 = 2024-01-01 (a Monday), w1 = 01-08, w2 = 01-15, w3 = 01-22.
"""

from __future__ import annotations

import random
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from typing import Any

import pytest

from contract.events import Event, OrderEvent, build_event
from processors.metrics import Cohort, PeriodRow, cohorts, is_activity, period_rows
from processors.windows import PERIODS, Period, next_period, period_index, periods_between
from tests.eventgen import random_events

W0 = datetime(2024, 1, 1, tzinfo=UTC)
WEEK = timedelta(days=7)
ORDERS_LOGINS = frozenset({"order", "login"})
_ids = iter(range(1_000_000))


def at(week: int, day: int = 1, hour: int = 12) -> datetime:
    return W0 + week * WEEK + timedelta(days=day, hours=hour)


def order(cid: str, ts: datetime, amount: float = 10, status: str = "placed") -> Event:
    return build_event(
        {
            "event_id": f"e{next(_ids)}",
            "customer_id": cid,
            "ts": ts.isoformat(),
            "type": "order",
            "amount": amount,
            "status": status,
        }
    )


def login(cid: str, ts: datetime) -> Event:
    data = {"event_id": f"e{next(_ids)}", "customer_id": cid, "ts": ts.isoformat()}
    return build_event({**data, "type": "login"})


def support(cid: str, ts: datetime) -> Event:
    data = {"event_id": f"e{next(_ids)}", "customer_id": cid, "ts": ts.isoformat()}
    return build_event({**data, "type": "support", "ticket_id": "t", "action": "opened"})


def weekly(events: list[Event], **kwargs: Any) -> list[dict[str, Any]]:
    options: dict[str, Any] = {"churn_after": WEEK, "activity_kinds": ORDERS_LOGINS}
    rows = period_rows(events, period="week", **(options | kwargs))
    return [row.as_dict() for row in rows]


def flow(row: dict[str, Any]) -> tuple[Any, ...]:
    keys = ("start_customers", "end_customers", "new_customers", "lost_customers")
    return (*(row[k] for k in keys), row["reactivated_customers"], row["crr"], row["churn_rate"])


def test_a_lost_customer() -> None:
    rows = weekly([order("a", at(0)), order("b", at(0)), order("b", at(1))])
    assert [r["period"] for r in rows] == ["2024-01-01", "2024-01-08"]
    # w0: nobody active at the start, so the ratios are null; both are new and active at the end
    assert flow(rows[0]) == (0, 2, 2, 0, 0, None, None)
    # w1: a is lost, b retained
    assert flow(rows[1]) == (2, 1, 0, 1, 0, 0.5, 0.5)


def test_a_reactivation_makes_crr_plus_churn_exceed_one() -> None:
    events = [order(c, at(0)) for c in "abc"] + [
        login("b", at(1)),
        order("c", at(1)),
        login("a", at(2)),  # a comes back after a silent week
        order("c", at(2)),
    ]
    rows = weekly(events)
    assert flow(rows[1]) == (3, 2, 0, 1, 0, 2 / 3, 1 / 3)
    # w2: S = {b, c}, E = {a, c}; b lost, a reactivated
    assert flow(rows[2]) == (2, 2, 0, 1, 1, 1.0, 0.5)
    assert rows[2]["crr"] + rows[2]["churn_rate"] == 1.5


def test_a_new_customer_who_churns_within_the_period_is_not_in_n() -> None:
    events = [
        order("x", datetime(2024, 1, 3, tzinfo=UTC)),
        order("y", datetime(2024, 1, 28, tzinfo=UTC)),
    ]
    rows = period_rows(events, period="month", churn_after=WEEK, activity_kinds=ORDERS_LOGINS)
    # at 2024-02-01 only y (active since 01-28) is active; x went silent on 01-03
    assert [r.as_dict()["new_customers"] for r in rows] == [1]
    assert (rows[0].end_customers, rows[0].lost_customers, rows[0].reactivated_customers) == (
        1,
        0,
        0,
    )


def test_the_window_is_half_open() -> None:
    """Active at t needs t - W <= ts < t: an event at the boundary counts for the next one."""
    boundary = W0 + WEEK
    rows = weekly([order("a", W0), order("b", boundary)])
    # a at exactly w0's start: active at w1's start (t - W == ts), not at w2's
    # b at exactly w1's start: not active at w1's start (ts == t), active at w1's end
    assert flow(rows[0]) == (0, 1, 1, 0, 0, None, None)
    assert flow(rows[1]) == (1, 1, 1, 1, 0, 0.0, 1.0)


def test_refunds_reduce_revenue_in_the_period_of_the_refund() -> None:
    events = [
        order("a", at(0), 10.10),
        order("a", at(0, 2), 99, status="cancelled"),
        order("a", at(1), 4.05, status="refunded"),
    ]
    rows = weekly(events)
    assert (rows[0]["orders"], rows[0]["revenue"], rows[0]["aov"]) == (1, 10.1, 10.1)
    assert rows[1]["orders"] == 0
    assert rows[1]["revenue"] == -4.05
    assert (rows[1]["aov"], rows[1]["purchase_frequency"], rows[1]["repeat_customer_rate"]) == (
        None,
        None,
        None,
    )
    # a refund is not activity: a is lost in w1
    assert flow(rows[1])[:4] == (1, 0, 0, 1)


def test_revenue_is_summed_exactly() -> None:
    rows = weekly([order("a", at(0), 0.1), order("a", at(0), 0.2)])
    assert rows[0]["revenue"] == 0.3  # 0.1 + 0.2 in floats would be 0.30000000000000004


def test_repeat_rate_and_purchase_frequency() -> None:
    events = [
        *(order("a", at(0), 10) for _ in range(2)),
        order("b", at(0), 10),
        *(order("c", at(0), 10) for _ in range(3)),
        login("d", at(0)),  # a login is activity but not a purchase
    ]
    (row,) = weekly(events)
    assert row["orders"] == 6
    assert row["aov"] == 10.0
    assert row["purchase_frequency"] == 2.0
    assert row["repeat_customer_rate"] == 2 / 3
    assert row["end_customers"] == 4


def test_activity_kinds_decide_who_is_active() -> None:
    events = [login("a", at(0)), support("b", at(0)), order("c", at(0))]
    assert flow(weekly(events, activity_kinds=frozenset({"order"}))[0])[:3] == (0, 1, 1)
    assert flow(weekly(events)[0])[:3] == (0, 2, 2)
    all_kinds = frozenset({"order", "login", "support"})
    assert flow(weekly(events, activity_kinds=all_kinds)[0])[:3] == (0, 3, 3)


def test_until_extends_the_rows_and_drops_later_events() -> None:
    until = at(2)
    rows = weekly([order("a", at(0)), order("b", at(3))], until=until)
    assert [r["period"] for r in rows] == ["2024-01-01", "2024-01-08", "2024-01-15"]
    assert flow(rows[1]) == (1, 0, 0, 1, 0, 0.0, 1.0)
    assert flow(rows[2]) == (0, 0, 0, 0, 0, None, None)


def test_no_events_no_rows() -> None:
    assert period_rows([], period="day", churn_after=WEEK, activity_kinds=ORDERS_LOGINS) == []
    assert cohorts([], period="day", activity_kinds=ORDERS_LOGINS) == {}


def test_row_as_dict_has_the_report_fields_in_order() -> None:
    (row,) = period_rows(
        [order("a", at(0))], period="month", churn_after=WEEK, activity_kinds=ORDERS_LOGINS
    )
    assert list(row.as_dict()) == [
        "period",
        "start_customers",
        "end_customers",
        "new_customers",
        "lost_customers",
        "reactivated_customers",
        "crr",
        "churn_rate",
        "orders",
        "revenue",
        "aov",
        "purchase_frequency",
        "repeat_customer_rate",
        "revenue_micros",
    ]
    assert isinstance(row, PeriodRow)


def test_cohort_matrix() -> None:
    events = [
        order("a", at(0)),
        login("a", at(2)),
        order("b", at(0)),
        order("b", at(1)),
        order("b", at(1, 3)),
        login("c", at(1)),
        order("c", at(3)),
        order("d", at(2), 5, status="refunded"),  # no activity: no cohort
        order("a", at(2, 1), 4, status="refunded"),  # lowers its cohort's revenue then
        order("b", at(3), 7, status="cancelled"),  # no money
        support("e", at(3)),  # not an activity kind here: no cohort
    ]
    result = cohorts(events, period="week", activity_kinds=ORDERS_LOGINS)
    assert {k: (v.size, v.active, v.revenue_micros) for k, v in result.items()} == {
        "2024-01-01": (2, [2, 1, 1, 0], [20_000_000, 20_000_000, -4_000_000, 0]),
        "2024-01-08": (1, [1, 0, 1], [0, 0, 10_000_000]),
    }
    shares = {k: v.as_dict()["revenue_share"] for k, v in result.items()}
    assert shares == {"2024-01-01": [1.0, 1.0, -0.2, 0.0], "2024-01-08": [None, None, None]}
    assert list(result) == ["2024-01-01", "2024-01-08"]
    # with until the rows run through until's period, and later events are left out
    later = cohorts(events, period="week", activity_kinds=ORDERS_LOGINS, until=at(4))
    assert later["2024-01-08"] == Cohort(
        size=1, active=[1, 0, 1, 0], revenue_micros=[0, 0, 10_000_000, 0]
    )
    earlier = cohorts(events, period="week", activity_kinds=ORDERS_LOGINS, until=at(2, 0, 0))
    assert {k: v.active for k, v in earlier.items()} == {
        "2024-01-01": [2, 1, 0],
        "2024-01-08": [1, 0],
    }


# Properties on random data ---------------------------------------------------------------


def _random(rng: random.Random) -> list[Event]:
    return [build_event(raw) for raw in random_events(rng, customers=40, count=600)]


def _brute_force_active(events: list[Event], at_: datetime, window: timedelta) -> set[str]:
    """docs/metrics.md read literally: an activity with at_ - W <= ts < at_."""
    return {
        e.customer_id
        for e in events
        if is_activity(e, ORDERS_LOGINS) and at_ - window <= e.ts < at_
    }


@pytest.mark.parametrize("period", PERIODS)
@pytest.mark.parametrize("days", [1, 30, 90])
def test_period_rows_agree_with_the_definitions(
    rng: random.Random, period: Period, days: int
) -> None:
    events = _random(rng)
    window = timedelta(days=days)
    rows = period_rows(events, period=period, churn_after=window, activity_kinds=ORDERS_LOGINS)
    first_activity: dict[str, datetime] = {}
    for e in sorted(events, key=lambda e: e.ts):
        if is_activity(e, ORDERS_LOGINS):
            first_activity.setdefault(e.customer_id, e.ts)
    starts = periods_between(min(e.ts for e in events), max(e.ts for e in events), period)
    assert [r.period for r in rows] == [s.date().isoformat() for s in starts]
    for start, row in zip(starts, rows, strict=True):
        end = next_period(start, period)
        at_start = _brute_force_active(events, start, window)
        at_end = _brute_force_active(events, end, window)
        new = {c for c, t in first_activity.items() if start <= t < end}
        assert row.start_customers == len(at_start)
        assert row.end_customers == len(at_end)
        assert row.new_customers == len(new & at_end)
        assert row.lost_customers == len(at_start - at_end)
        assert row.reactivated_customers == len(at_end - at_start - new)


@pytest.mark.parametrize("period", PERIODS)
def test_period_row_identities(rng: random.Random, period: Period) -> None:
    events = _random(rng)
    rows = period_rows(
        events, period=period, churn_after=timedelta(days=30), activity_kinds=ORDERS_LOGINS
    )
    for row in rows:
        retained = row.start_customers - row.lost_customers
        assert row.lost_customers + retained == row.start_customers
        assert 0 <= retained <= row.end_customers
        # E splits into retained, new and reactivated
        assert row.end_customers == retained + row.new_customers + row.reactivated_customers
        assert row.new_customers <= row.end_customers
        if row.start_customers:
            assert row.crr == (row.end_customers - row.new_customers) / row.start_customers
        else:
            assert row.crr is None and row.churn_rate is None
    # one period's end is the next one's start
    for before, after in pairwise(rows):
        assert before.end_customers == after.start_customers
    placed = [e for e in events if isinstance(e, OrderEvent) and e.status == "placed"]
    refunded = [e for e in events if isinstance(e, OrderEvent) and e.status == "refunded"]
    assert sum(r.orders for r in rows) == len(placed)
    total_micros = sum(e.amount_micros for e in placed) - sum(e.amount_micros for e in refunded)
    assert round(sum(r.revenue for r in rows) * 1_000_000) == total_micros


@pytest.mark.parametrize("period", PERIODS)
def test_cohort_properties(rng: random.Random, period: Period) -> None:
    events = _random(rng)
    result = cohorts(events, period=period, activity_kinds=ORDERS_LOGINS)
    last = period_index(max(e.ts for e in events), period)
    periods: dict[str, set[int]] = defaultdict(set)
    for e in events:
        if is_activity(e, ORDERS_LOGINS):
            periods[e.customer_id].add(period_index(e.ts, period))
    assert sum(c.size for c in result.values()) == len(periods)
    for label, cohort in result.items():
        c = period_index(datetime.fromisoformat(label).replace(tzinfo=UTC), period)
        members = [seen for seen in periods.values() if min(seen) == c]
        assert cohort.size == len(members) > 0
        assert cohort.active[0] == cohort.size
        assert len(cohort.active) == last - c + 1
        assert cohort.active == [
            sum(c + k in seen for seen in members) for k in range(last - c + 1)
        ]
