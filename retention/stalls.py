"""Stalled workers: alive (heartbeating) and assigned partitions with lag, yet applying nothing.

A worker whose ingest agent died keeps its heartbeat timer, so it looks alive; only its
progress tells. Heartbeats (``P workers``) carry ``last_applied_at``, the unix time of the
worker's last applied batch (null before the first one). Heartbeats of versions that
predate the field still carry the ``applied`` count: for them the reader notes when it saw
that count change, which makes a stall visible ``after`` seconds after the reader first
watched it, instead of never.

Pure: the inputs are the heartbeats, the broker's end offsets and the store's applied
offsets, as the exporter (or ``status``) read them.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

Partition = tuple[str, int]


@dataclass(frozen=True, slots=True)
class Heartbeat:
    worker: str
    partitions: tuple[Partition, ...]
    applied: int | None
    #: unix seconds of the last applied batch; None before the first one or when unknown
    last_applied_at: float | None
    #: whether the heartbeat has the ``last_applied_at`` field at all (newer workers)
    reports_last_applied: bool
    started_at: float | None


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def _partitions(value: Any) -> tuple[Partition, ...]:
    out: list[Partition] = []
    for item in value if isinstance(value, list) else ():
        topic, sep, partition = str(item).rpartition("|")
        if sep and partition.isdigit():
            out.append((topic, int(partition)))
    return tuple(out)


def parse_heartbeat(worker: str, info: Mapping[str, Any]) -> Heartbeat:
    """A heartbeat as stored; fields of the wrong type count as absent."""
    applied = _number(info.get("applied"))
    return Heartbeat(
        worker=worker,
        partitions=_partitions(info.get("partitions")),
        applied=None if applied is None else int(applied),
        last_applied_at=_number(info.get("last_applied_at")),
        reports_last_applied="last_applied_at" in info,
        started_at=_number(info.get("started_at")),
    )


def partitions_lag(
    partitions: Iterable[Partition],
    ends: Mapping[Partition, int],
    applied: Mapping[Partition, int],
) -> int:
    """Messages of these partitions that the store has not applied yet."""
    return sum(max(0, ends.get(tp, 0) - (applied.get(tp, -1) + 1)) for tp in partitions)


class Progress:
    """When each worker last made progress, as far as this reader can tell.

    Kept by a long-lived reader (the exporter's collector) across reads, for heartbeats
    that do not say it themselves.
    """

    def __init__(self) -> None:
        self._seen: dict[str, tuple[int | None, float]] = {}

    def last_progress(self, beat: Heartbeat, now: float) -> float:
        if beat.reports_last_applied:
            if beat.last_applied_at is not None:
                return beat.last_applied_at
            if beat.started_at is not None:  # nothing applied since it started
                return beat.started_at
        return self._observed(beat, now)

    def _observed(self, beat: Heartbeat, now: float) -> float:
        seen = self._seen.get(beat.worker)
        if seen is None or seen[0] != beat.applied:
            self._seen[beat.worker] = (beat.applied, now)
            return now
        return seen[1]

    def keep_only(self, workers: Iterable[str]) -> None:
        """Forget workers that are gone, so the memory follows the live ones."""
        alive = set(workers)
        self._seen = {w: seen for w, seen in self._seen.items() if w in alive}


def stalled_workers(
    beats: Iterable[Heartbeat],
    ends: Mapping[Partition, int],
    applied: Mapping[Partition, int],
    now: float,
    after_seconds: float,
    progress: Progress,
) -> list[str]:
    """Workers without progress for ``after_seconds`` whose partitions have lag, sorted."""
    out = []
    for beat in beats:
        idle = now - progress.last_progress(beat, now)
        if idle >= after_seconds and partitions_lag(beat.partitions, ends, applied) > 0:
            out.append(beat.worker)
    return sorted(out)
