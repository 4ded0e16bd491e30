"""An independent batch computation of docs/metrics.md's period metrics and cohorts, in pandas.

Written from the definitions alone, without the project's period or metrics code, so that
the streaming numbers and the project's own reference are both checked against it. Times
are naive local times here (pandas periods carry no zone): UTC unless a zone is given, in
which case every event time is first turned into the zone's wall time, so that days start
at local midnight and a window of W days spans W dates across daylight-saving changes.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

import pandas as pd

from contract.events import Event, LoginEvent, OrderEvent

FREQ = {"day": "D", "week": "W-SUN", "month": "M"}  # W-SUN: weeks ending Sunday, ISO weeks
_DAYS = ("MON", "TUE", "WED", "THU", "FRI", "SAT", "SUN")


def _freq(period: str, week_start: int) -> str:
    """The pandas frequency; a week starting on day d ends on the day before."""
    return f"W-{_DAYS[(week_start - 1) % 7]}" if period == "week" else FREQ[period]


def _local(ts: pd.Series | pd.Timestamp, zone: str) -> pd.Series | pd.Timestamp:
    """Aware UTC times as naive wall times of ``zone``."""
    if isinstance(ts, pd.Series):
        return ts.dt.tz_convert(zone).dt.tz_localize(None)
    return ts.tz_convert(zone).tz_localize(None)


def frame(events: Sequence[Event], kinds: frozenset[str], zone: str = "UTC") -> pd.DataFrame:
    rows = []
    for e in events:
        if isinstance(e, OrderEvent):
            active = e.status == "placed" and "order" in kinds
            rows.append((e.customer_id, e.ts, e.status, e.amount_micros, active))
        elif isinstance(e, LoginEvent):
            rows.append((e.customer_id, e.ts, "login", 0, "login" in kinds))
        else:
            rows.append((e.customer_id, e.ts, "support", 0, "support" in kinds))
    df = pd.DataFrame(rows, columns=["customer", "ts", "kind", "micros", "active"])
    df["ts"] = _local(pd.to_datetime(df["ts"], utc=True), zone)
    return df


def _span(df: pd.DataFrame, freq: str, until: datetime | None, zone: str = "UTC") -> pd.PeriodIndex:
    last = df["ts"].max() if until is None else _local(pd.Timestamp(until), zone)
    return pd.period_range(df["ts"].min().to_period(freq), last.to_period(freq))


def _active_at(act: pd.DataFrame, t: pd.Timestamp, window: timedelta) -> set[str]:
    return set(act.loc[(act["ts"] >= t - window) & (act["ts"] < t), "customer"])


def _ratio(a: float, b: int) -> float | None:
    return a / b if b else None


def period_rows(
    events: Sequence[Event],
    period: str,
    churn_days: int,
    kinds: frozenset[str],
    until: datetime | None = None,
    zone: str = "UTC",
    week_start: int = 0,
) -> list[dict[str, Any]]:
    df = frame(events, kinds, zone)
    if until is not None:
        df = df[df["ts"] <= _local(pd.Timestamp(until), zone)]
    window = timedelta(days=churn_days)
    act = df[df["active"]]
    first = act.groupby("customer")["ts"].min()
    out = []
    for p in _span(df, _freq(period, week_start), until, zone):
        s, e = p.start_time, (p + 1).start_time
        start, end = _active_at(act, s, window), _active_at(act, e, window)
        new = set(first[(first >= s) & (first < e)].index) & end
        inside = df[(df["ts"] >= s) & (df["ts"] < e)]
        placed = inside[inside["kind"] == "placed"]
        refunded = inside.loc[inside["kind"] == "refunded", "micros"].sum()
        per_buyer = placed.groupby("customer").size()
        orders, placed_micros = len(placed), int(placed["micros"].sum())
        out.append(
            {
                "period": s.date().isoformat(),
                "start_customers": len(start),
                "end_customers": len(end),
                "new_customers": len(new),
                "lost_customers": len(start - end),
                "reactivated_customers": len(end - start - new),
                "crr": _ratio(len(end) - len(new), len(start)),
                "churn_rate": _ratio(len(start - end), len(start)),
                "orders": orders,
                "revenue": (placed_micros - int(refunded)) / 1e6,
                "aov": _ratio(placed_micros / 1e6, orders),
                "purchase_frequency": _ratio(orders, len(per_buyer)),
                "repeat_customer_rate": _ratio(int((per_buyer >= 2).sum()), len(per_buyer)),
                "revenue_micros": placed_micros - int(refunded),
            }
        )
    return out


def cohorts(
    events: Sequence[Event],
    period: str,
    kinds: frozenset[str],
    until: datetime | None = None,
    zone: str = "UTC",
    week_start: int = 0,
) -> dict[str, dict[str, Any]]:
    freq = _freq(period, week_start)
    df = frame(events, kinds, zone)
    if until is not None:
        df = df[df["ts"] <= _local(pd.Timestamp(until), zone)]
    span = _span(df, freq, until, zone)
    act = df[df["active"]].copy()
    act["p"] = act["ts"].dt.to_period(freq)
    act["cohort"] = act.groupby("customer")["p"].transform("min")
    # revenue: placed amounts in, refunded out, in the period each happens, by the cohort
    # of its customer, from the cohort's period on
    first = act.groupby("customer")["p"].min()
    money = df[df["kind"].isin(["placed", "refunded"])].copy()
    money["p"] = money["ts"].dt.to_period(freq)
    money["cohort"] = money["customer"].map(first)
    money = money.dropna(subset=["cohort"])
    money["signed"] = money["micros"].where(money["kind"] == "placed", -money["micros"])
    out: dict[str, dict[str, Any]] = {}
    for cohort, members in act.groupby("cohort"):
        ages = (members["p"] - cohort).apply(lambda offset: offset.n)
        counts = members.assign(k=ages).groupby("k")["customer"].nunique()
        length = len(span[span >= cohort])
        active = [int(counts.get(k, 0)) for k in range(length)]
        mine = money[money["cohort"] == cohort]
        spent = mine.assign(k=(mine["p"] - cohort).apply(lambda offset: offset.n))
        sums = spent[spent["k"] >= 0].groupby("k")["signed"].sum()
        revenue = [int(sums.get(k, 0)) for k in range(length)]
        out[cohort.start_time.date().isoformat()] = {
            "size": active[0],
            "active": active,
            "revenue_micros": revenue,
            "revenue": [m / 1_000_000 for m in revenue],
            "revenue_share": [m / revenue[0] if revenue[0] > 0 else None for m in revenue],
        }
    return out
