"""What the ingest agent, the partition positioning and the timers of one worker share."""

from __future__ import annotations

from dataclasses import dataclass

from redis.asyncio import Redis

from store.periods import Periods
from store.store import Store
from streams.ingest_batch import Ingest
from streams.topics import Topics
from streams.worker_settings import WorkerSettings


@dataclass(frozen=True)
class WorkerParts:
    """What the agent and the timers of one worker share."""

    settings: WorkerSettings
    topics: Topics
    redis: Redis
    store: Store
    periods: Periods
    ingest: Ingest
    cluster_id: str
    worker_id: str
