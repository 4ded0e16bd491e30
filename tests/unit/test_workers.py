"""When a worker counts as stalled: lag on its partitions and nothing applied for a while."""

from __future__ import annotations

from typing import Any

import pytest

from processors.workers import is_stalled, lagging_partitions

NOW = 1_000_000.0
LAG = {"orders|0": 5, "orders|1": 0, "logins|0": 0}


@pytest.mark.parametrize(
    ("info", "stalled"),
    [
        # applied 61 s ago, orders|0 has lag: stalled
        ({"partitions": ["orders|0"], "last_applied_at": NOW - 61}, True),
        # applied 59 s ago: not yet; 60 s: the threshold counts
        ({"partitions": ["orders|0"], "last_applied_at": NOW - 59}, False),
        ({"partitions": ["orders|0"], "last_applied_at": NOW - 60}, True),
        # idle for an hour but nothing waiting on its partitions: idle, not stalled
        ({"partitions": ["orders|1", "logins|0"], "last_applied_at": NOW - 3600}, False),
        # no partitions assigned
        ({"partitions": [], "last_applied_at": NOW - 3600}, False),
        # a partition the lag does not know counts as without lag
        ({"partitions": ["support|3"], "last_applied_at": NOW - 3600}, False),
        # never applied anything: the start time counts instead
        ({"partitions": ["orders|0"], "last_applied_at": None, "started_at": NOW - 120}, True),
        ({"partitions": ["orders|0"], "last_applied_at": None, "started_at": NOW - 10}, False),
        # never applied and no start time: nothing can be told
        ({"partitions": ["orders|0"], "last_applied_at": None}, False),
        # a heartbeat without the field (a worker that does not report it): never stalled
        ({"partitions": ["orders|0"], "applied": 0, "started_at": NOW - 3600}, False),
        # junk in the field is not a time
        ({"partitions": ["orders|0"], "last_applied_at": "yesterday"}, False),
        ({"partitions": ["orders|0"], "last_applied_at": True}, False),
        # no partitions key at all
        ({"last_applied_at": NOW - 3600}, False),
    ],
)
def test_is_stalled(info: dict[str, Any], stalled: bool) -> None:
    assert is_stalled(info, LAG, NOW, after_seconds=60) is stalled


def test_threshold_is_a_parameter() -> None:
    info = {"partitions": ["orders|0"], "last_applied_at": NOW - 20}
    assert is_stalled(info, LAG, NOW, after_seconds=10)
    assert not is_stalled(info, LAG, NOW, after_seconds=30)


def test_lagging_partitions() -> None:
    info = {"partitions": ["orders|0", "orders|1", "logins|0"]}
    assert lagging_partitions(info, LAG) == ["orders|0"]
