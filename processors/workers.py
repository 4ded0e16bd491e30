"""Judging a worker from its heartbeat: is it alive but no longer applying anything?

A worker process can stay up (and keep sending heartbeats) while its ingest has stopped.
What gives it away is a partition that has messages waiting while the worker has applied
nothing for a while. A worker with nothing waiting is idle, not stalled, however long ago
it applied its last batch.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def lagging_partitions(info: Mapping[str, Any], lag: Mapping[str, int]) -> list[str]:
    """The partitions (``topic|partition``) assigned to the worker that have lag."""
    return [p for p in info.get("partitions") or () if lag.get(p, 0) > 0]


def is_stalled(
    info: Mapping[str, Any], lag: Mapping[str, int], now: float, after_seconds: float
) -> bool:
    """Whether the worker of heartbeat ``info`` is stalled at unix time ``now``.

    ``lag`` maps ``topic|partition`` to the messages not yet applied. The heartbeat's
    ``last_applied_at`` (unix seconds, null before the first batch) says when the worker
    last applied something; before its first batch its start time counts instead. A
    heartbeat without the field comes from a worker that does not report it: it is never
    called stalled, since nothing can be told.

    Lag is measured after the heartbeat was sent, so a worker idle for long that has just
    received new messages can be called stalled for about one heartbeat interval.
    """
    if "last_applied_at" not in info or not lagging_partitions(info, lag):
        return False
    since = info["last_applied_at"]
    if since is None:
        since = info.get("started_at")
    if not isinstance(since, int | float) or isinstance(since, bool):
        return False
    return now - float(since) >= after_seconds
