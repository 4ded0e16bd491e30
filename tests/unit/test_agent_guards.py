"""The agent's guards, without servers: a message that breaks record building goes to the
dead-letter topic as internal_error, and an agent that dies ends the process."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import pytest

from retention.config import Settings
from store.store import Store
from streams.agents import AGENT_DIED_EXIT, exit_if_fails
from streams.ingest_batch import Ingest, WorkerCounters
from streams.timers import surviving
from streams.topics import Topics


@dataclass
class Message:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: Any
    timestamp: Any = 1_700_000_000_000  # Kafka's, in ms


@dataclass
class DeadLetters:
    """Records what would be sent to the dead-letter topic."""

    sent: list[dict[str, Any]] = field(default_factory=list)

    async def send(self, **kwargs: Any) -> asyncio.Future[None]:
        self.sent.append(kwargs)
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done


def ingest(dlq: DeadLetters) -> Ingest:
    store = Store.__new__(Store)  # decode() never touches Redis
    return Ingest(Settings(), Topics(), store, dlq)


async def test_a_message_that_breaks_record_building_is_dead_lettered() -> None:
    dlq = DeadLetters()
    good = b'{"event_id":"e","customer_id":"c","ts":1700000000,"type":"login"}'
    # a timestamp that cannot be converted fails past validation, while building the record
    events = [
        Message("logins", 0, 0, b"c", good),
        Message("logins", 0, 1, b"c", good, timestamp=float("nan")),
    ]
    batch = await ingest(dlq).decode(events)
    assert [r[0] for r in batch.records] == ["l", "x"]
    assert batch.records[1][10] == "internal_error"
    assert len(dlq.sent) == 1
    headers = dict(dlq.sent[0]["headers"])
    assert headers["x-reason"] == b"internal_error"
    assert headers["x-source-offset"] == b"1"


async def test_a_rejected_message_is_not_dead_lettered_again_when_redelivered() -> None:
    dlq = DeadLetters()
    handler = ingest(dlq)
    handler.applied_upto[("logins", 0)] = 5
    events = [
        Message("logins", 0, 4, b"c", b"{not json"),
        Message("logins", 0, 6, b"c", b"{"),
    ]
    await handler.decode(events)
    assert [dict(s["headers"])["x-source-offset"] for s in dlq.sent] == [b"6"]


async def test_an_offset_twice_in_one_batch_is_taken_and_dead_lettered_once() -> None:
    """Around a seek back a batch can hold a message twice: buffered, then read again."""
    dlq = DeadLetters()
    good = b'{"event_id":"e","customer_id":"c","ts":1700000000,"type":"login"}'
    events = [
        Message("logins", 0, 7, b"c", good),
        Message("logins", 0, 8, b"c", b"{not json"),
        Message("logins", 0, 7, b"c", good),
        Message("logins", 0, 8, b"c", b"{not json"),
    ]
    batch = await ingest(dlq).decode(events)
    assert [(r[0], r[3]) for r in batch.records] == [("l", "7"), ("x", "8")]
    assert [dict(s["headers"])["x-source-offset"] for s in dlq.sent] == [b"8"]


async def test_an_agent_that_dies_ends_the_process() -> None:
    codes: list[int] = []

    async def dies() -> None:
        raise RuntimeError("boom")

    await exit_if_fails(dies(), exit=codes.append)
    assert codes == [AGENT_DIED_EXIT]


async def test_an_agent_that_ends_normally_leaves_the_process_alone() -> None:
    codes: list[int] = []

    async def ends() -> None:
        return None

    await exit_if_fails(ends(), exit=codes.append)
    assert codes == []


async def test_cancelling_the_agent_is_not_a_death() -> None:
    codes: list[int] = []

    async def cancelled() -> None:
        raise asyncio.CancelledError

    with pytest.raises(asyncio.CancelledError):
        await exit_if_fails(cancelled(), exit=codes.append)
    assert codes == []


@pytest.mark.parametrize("error", [RuntimeError("kafka timeout"), ValueError("bad risk file")])
async def test_a_timer_survives_any_exception_and_counts_it(error: Exception) -> None:
    counters = WorkerCounters()
    calls = 0

    @surviving("a timer", counters)
    async def tick() -> None:
        nonlocal calls
        calls += 1
        raise error

    await tick()
    await tick()
    assert (calls, counters.timer_errors) == (2, 2)


async def test_a_full_batch_tells_a_backlog_and_a_short_one_caught_up() -> None:
    """The worker's evaluation takes nearly all of its tick only while no backlog waits."""
    handler = Ingest(Settings(batch_size=2), Topics(), Store.__new__(Store), DeadLetters())
    good = b'{"event_id":"e","customer_id":"c","ts":1700000000,"type":"login"}'
    assert handler.caught_up()
    await handler.decode([Message("logins", 0, 0, b"c", good), Message("logins", 0, 1, b"c", good)])
    assert not handler.caught_up()
    await handler.decode([Message("logins", 0, 2, b"c", good)])
    assert handler.caught_up()
