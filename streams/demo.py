"""Demo traffic sent: the planned past first, then a live trickle at a steady rate.

Planning is pure and lives in ``streams/demo_plan.py``; only :func:`run_demo` talks to
Kafka, and :func:`drive_demo` to any sink with the producer API's shape (tests pass one).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import random
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from streams.demo_plan import (
    PlannedEvent,
    customers_by_profile,
    live_stream,
    malformed_order,
    plan_history,
    track_open_tickets,
)
from streams.kafka_security import PLAINTEXT, KafkaSecurity
from streams.producer import EventProducer
from streams.topics import Topics

logger = logging.getLogger(__name__)


#: Every this many live events, one duplicate and one malformed message follow.
EXTRAS_EVERY = 200
#: History goes out in chunks, each flushed and confirmed before the next.
HISTORY_CHUNK = 500
#: After a stall, live pacing catches up for at most this long instead of bursting.
MAX_CATCH_UP_SECONDS = 1.0


# --- population ---------------------------------------------------------------------------


# --- small building blocks ----------------------------------------------------------------


# --- event shapes (ts stays a datetime until the plan is finished) ------------------------


# --- profiles -----------------------------------------------------------------------------


# --- live traffic -------------------------------------------------------------------------


# --- sending ------------------------------------------------------------------------------


class DemoSink(Protocol):
    """The part of :class:`streams.producer.EventProducer` the demo uses."""

    async def send(self, event: Mapping[str, Any]) -> asyncio.Future[Any]: ...

    async def send_raw(
        self, topic: str, value: bytes, key: bytes | None = None
    ) -> asyncio.Future[Any]: ...

    async def flush(self) -> None: ...


@dataclass(slots=True)
class DemoStats:
    """What a demo run sent, for its final log line and for callers that want to check."""

    history: int = 0
    live: int = 0
    duplicates: int = 0
    malformed: int = 0
    failed: int = 0


def _utcnow() -> datetime:
    return datetime.now(UTC)


def _chunks(events: Sequence[PlannedEvent], size: int) -> Iterator[Sequence[PlannedEvent]]:
    for begin in range(0, len(events), size):
        yield events[begin : begin + size]


async def _pause(stop: asyncio.Event, seconds: float) -> bool:
    """Sleep, but wake at once when asked to stop; True when stopping."""
    if seconds > 0:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), seconds)
    else:
        await asyncio.sleep(0)
    return stop.is_set()


def _watch(future: asyncio.Future[Any], stats: DemoStats) -> None:
    """Count and log a live send the broker refused, without stalling the pacing."""

    def done(finished: asyncio.Future[Any]) -> None:
        if finished.cancelled() or finished.exception() is None:
            return
        stats.failed += 1
        logger.warning("demo event not stored", extra={"error": repr(finished.exception())})

    future.add_done_callback(done)


async def _send_history(sink: DemoSink, events: Sequence[PlannedEvent], stop: asyncio.Event) -> int:
    """Send the backfill as fast as the producer takes it; each chunk is confirmed, so a
    broker error stops the demo instead of leaving a silently partial past."""
    sent = 0
    for chunk in _chunks(events, HISTORY_CHUNK):
        if stop.is_set():
            break
        futures = [await sink.send(event) for event in chunk]
        await sink.flush()
        await asyncio.gather(*futures)
        sent += len(chunk)
    logger.info("demo history sent", extra={"events": sent})
    return sent


async def _send_extras(
    sink: DemoSink,
    topics: Topics,
    rng: random.Random,
    recent: Sequence[PlannedEvent],
    stats: DemoStats,
) -> None:
    """A recent event again (dedupe must drop it) and a broken order (it must reach the DLQ).

    The duplicate comes from recent live events so that it lies within the dedupe horizon.
    """
    duplicate = rng.choice(recent)
    _watch(await sink.send(duplicate), stats)
    stats.duplicates += 1
    cid: str = duplicate["customer_id"]
    stats.malformed += 1
    raw = malformed_order(rng, cid, stats.malformed)
    _watch(await sink.send_raw(topics.source("order"), raw, key=cid.encode()), stats)
    logger.info(
        "demo sent a duplicate and a malformed message",
        extra={"duplicate_of": duplicate["event_id"], "live": stats.live},
    )


async def _send_live(
    sink: DemoSink,
    topics: Topics,
    events: Iterable[PlannedEvent],
    rng: random.Random,
    stats: DemoStats,
    stop: asyncio.Event,
    interval: float,
) -> None:
    """Pace live events on a fixed schedule, so slow sends do not lower the average rate."""
    loop = asyncio.get_running_loop()
    recent: deque[PlannedEvent] = deque(maxlen=EXTRAS_EVERY)
    due = loop.time()
    for event in events:
        _watch(await sink.send(event), stats)
        recent.append(event)
        stats.live += 1
        if stats.live % EXTRAS_EVERY == 0:
            await _send_extras(sink, topics, rng, recent, stats)
        due = max(due + interval, loop.time() - MAX_CATCH_UP_SECONDS)
        if await _pause(stop, due - loop.time()):
            break


async def drive_demo(
    sink: DemoSink,
    topics: Topics,
    *,
    customers: int = 60,
    seed: int = 7,
    rate_per_second: float = 5.0,
    history_days: int = 180,
    stop: asyncio.Event | None = None,
    max_live_events: int | None = None,
    clock: Callable[[], datetime] = _utcnow,
) -> DemoStats:
    """:func:`run_demo` over any sink, so the sending logic can be exercised without Kafka.

    Live event ids carry the start time (``demo-20250101T120000-<n>``): a restarted demo
    must not have its new live events dropped as duplicates of the previous run's.
    """
    if rate_per_second <= 0:
        raise ValueError("rate_per_second must be positive")
    stop = asyncio.Event() if stop is None else stop
    rng = random.Random(seed)
    started = clock()
    history = plan_history(rng, customers, started, history_days)
    logger.info(
        "demo starting",
        extra={"customers": customers, "seed": seed, "history_events": len(history)},
    )
    stats = DemoStats(history=await _send_history(sink, history, stop))
    if stop.is_set():
        return stats
    live: Iterable[PlannedEvent] = live_stream(
        rng,
        customers_by_profile(customers),
        clock,
        id_prefix=f"demo-{started.astimezone(UTC):%Y%m%dT%H%M%S}",
        open_tickets=track_open_tickets({}, history),
    )
    if max_live_events is not None:
        live = itertools.islice(live, max_live_events)
    await _send_live(sink, topics, live, rng, stats, stop, 1.0 / rate_per_second)
    await sink.flush()
    logger.info(
        "demo finished",
        extra={
            "history_events": stats.history,
            "live_events": stats.live,
            "duplicates": stats.duplicates,
            "malformed": stats.malformed,
            "failed": stats.failed,
        },
    )
    return stats


async def run_demo(
    bootstrap: str,
    topics: Topics,
    *,
    customers: int = 60,
    seed: int = 7,
    rate_per_second: float = 5.0,
    history_days: int = 180,
    stop: asyncio.Event | None = None,
    max_live_events: int | None = None,
    security: KafkaSecurity = PLAINTEXT,
) -> DemoStats:
    """Send the demo history to Kafka, then live events at about ``rate_per_second`` until
    ``stop`` is set or ``max_live_events`` live events went out.

    Every :data:`EXTRAS_EVERY` live events one duplicate and one malformed message follow
    (not counted as live events), so the dedupe and dead-letter paths have something to show.
    """
    async with EventProducer(bootstrap, topics, security=security) as producer:
        return await drive_demo(
            producer,
            topics,
            customers=customers,
            seed=seed,
            rate_per_second=rate_per_second,
            history_days=history_days,
            stop=stop,
            max_live_events=max_live_events,
        )
