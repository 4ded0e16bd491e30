"""The project's batch reference agrees with an independent pandas computation."""

from __future__ import annotations

import random
from datetime import timedelta

import pytest

from contract.events import build_event
from processors import metrics
from processors.windows import Period
from tests import oracle
from tests.eventgen import random_events


@pytest.mark.parametrize(
    ("period", "churn_days", "kinds"),
    [
        ("day", 3, frozenset({"order"})),
        ("week", 14, frozenset({"order", "login"})),
        ("month", 90, frozenset({"order", "login", "support"})),
    ],
)
def test_reference_equals_pandas(
    rng: random.Random, period: Period, churn_days: int, kinds: frozenset[str]
) -> None:
    events = [build_event(e) for e in random_events(rng, customers=40, count=1500)]
    mine = metrics.period_rows(
        events, period=period, churn_after=timedelta(days=churn_days), activity_kinds=kinds
    )
    assert [r.as_dict() for r in mine] == oracle.period_rows(events, period, churn_days, kinds)
    matrix = metrics.cohorts(events, period=period, activity_kinds=kinds)
    assert {k: c.as_dict() for k, c in matrix.items()} == oracle.cohorts(events, period, kinds)
