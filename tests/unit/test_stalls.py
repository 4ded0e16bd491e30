"""Stalled workers from heartbeats, end offsets and applied offsets (no I/O)."""

from __future__ import annotations

from typing import Any

import pytest

from retention.stalls import (
    Heartbeat,
    Progress,
    parse_heartbeat,
    partitions_lag,
    stalled_workers,
)

NOW = 1_700_000_000.0
AFTER = 60.0
ENDS = {("orders", 0): 100, ("orders", 1): 50, ("logins", 0): 10}
#: orders/0 is behind by 10 messages; orders/1 and logins/0 are caught up
APPLIED = {("orders", 0): 89, ("orders", 1): 49, ("logins", 0): 9}


def beat(**info: Any) -> Heartbeat:
    return parse_heartbeat("w1", {"started_at": NOW - 3600, **info})


@pytest.mark.parametrize(
    ("info", "stalled"),
    [
        # applied 2 minutes ago, its partition has lag: stalled
        ({"partitions": ["orders|0"], "last_applied_at": NOW - 120}, True),
        # applied 10 s ago: busy, not stalled
        ({"partitions": ["orders|0"], "last_applied_at": NOW - 10}, False),
        # idle for long, but nothing waits on its partitions
        ({"partitions": ["orders|1", "logins|0"], "last_applied_at": NOW - 900}, False),
        # no partitions: nothing to do
        ({"partitions": [], "last_applied_at": NOW - 900}, False),
        # never applied anything since it started an hour ago, with lag
        ({"partitions": ["orders|0"], "last_applied_at": None}, True),
        # never applied, started 5 s ago
        (
            {"partitions": ["orders|0"], "last_applied_at": None, "started_at": NOW - 5},
            False,
        ),
        # garbage in the fields counts as absent, never raises
        ({"partitions": "orders|0", "last_applied_at": "soon"}, False),
    ],
)
def test_stalled_from_heartbeats_with_last_applied_at(info: dict[str, Any], stalled: bool) -> None:
    got = stalled_workers([beat(**info)], ENDS, APPLIED, NOW, AFTER, Progress())
    assert got == (["w1"] if stalled else [])


def test_without_the_field_progress_is_what_the_reader_saw_change() -> None:
    """Heartbeats of older workers: the applied count, watched across reads."""
    progress = Progress()
    old = {"partitions": ["orders|0"], "applied": 500}
    # first sight: not stalled, whatever came before
    assert stalled_workers([beat(**old)], ENDS, APPLIED, NOW, AFTER, progress) == []
    # the count moved 50 s later: progress
    moved = {**old, "applied": 520}
    assert stalled_workers([beat(**moved)], ENDS, APPLIED, NOW + 50, AFTER, progress) == []
    # then unchanged for 59 s, then for 60 s
    assert stalled_workers([beat(**moved)], ENDS, APPLIED, NOW + 109, AFTER, progress) == []
    assert stalled_workers([beat(**moved)], ENDS, APPLIED, NOW + 110, AFTER, progress) == ["w1"]


def test_progress_forgets_workers_that_are_gone() -> None:
    progress = Progress()
    old = beat(partitions=["orders|0"], applied=1)
    progress.last_progress(old, NOW)
    progress.keep_only([])
    # seen anew: the clock starts again rather than calling it stalled at once
    assert stalled_workers([old], ENDS, APPLIED, NOW + 600, AFTER, progress) == []


@pytest.mark.parametrize(
    ("partitions", "lag"),
    [
        ([("orders", 0)], 10),
        ([("orders", 0), ("orders", 1)], 10),
        # a partition the store never applied: everything up to the end is lag
        ([("support", 0)], 0),
        ([("logins", 0)], 0),
    ],
)
def test_partitions_lag(partitions: list[tuple[str, int]], lag: int) -> None:
    assert partitions_lag(partitions, ENDS, APPLIED) == lag


def test_a_partition_nothing_was_applied_on() -> None:
    assert partitions_lag([("orders", 0)], {("orders", 0): 7}, {}) == 7


def test_parse_heartbeat_tells_a_null_field_from_a_missing_one() -> None:
    with_null = parse_heartbeat("w", {"last_applied_at": None, "partitions": ["a|b|3"]})
    assert with_null.reports_last_applied and with_null.last_applied_at is None
    # a topic name may itself hold a "|"; the partition is after the last one
    assert with_null.partitions == (("a|b", 3),)
    missing = parse_heartbeat("w", {"applied": 3})
    assert not missing.reports_last_applied and missing.applied == 3
