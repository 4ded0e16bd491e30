"""What the producer API and ``retention produce`` refuse, before anything is sent."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from contract.events import InvalidEvent, build_event
from retention.publish_file import DLQ_MAX_BYTES, publish_file
from streams.producer import EventProducer
from streams.topics import Topics


def login(ts: object) -> dict[str, object]:
    return {"event_id": "e", "customer_id": "c", "type": "login", "ts": ts}


@pytest.fixture
async def unstarted() -> AsyncIterator[Callable[..., EventProducer]]:
    """Producers that never connect: validation needs no broker."""
    made: list[EventProducer] = []

    def make(**kwargs: Any) -> EventProducer:
        made.append(EventProducer("localhost:1", **kwargs))
        return made[-1]

    yield make
    for producer in made:
        await producer.stop()


async def test_the_producer_refuses_events_beyond_its_margin(
    unstarted: Callable[..., EventProducer],
) -> None:
    now = time.time()  # read here: the suite may collect this module long before it runs
    producer = unstarted(max_future_seconds=3600)
    assert producer.validate(login(now + 3000)).type == "login"
    with pytest.raises(InvalidEvent) as info:
        producer.validate(login(now + 4000))
    assert info.value.rejection.reason == "future_timestamp"
    # an event built earlier, without a margin, is checked too
    with pytest.raises(InvalidEvent):
        producer.validate(build_event(login(now + 4000)))
    replay = unstarted(max_future_seconds=None)
    assert replay.validate(login(now + 10 * 365 * 86400)).type == "login"
    default = unstarted()
    assert default.validate(login(now + 23 * 3600)).type == "login"
    with pytest.raises(InvalidEvent):
        default.validate(login(now + 25 * 3600))


class Recorder:
    """The two calls ``publish_file`` makes on a producer, recorded instead of sent."""

    def __init__(self, real: EventProducer) -> None:
        self.real = real
        self.topics = self.real.topics
        self.sent: list[Any] = []
        self.dead: list[tuple[bytes, dict[str, bytes]]] = []

    def latest_ms(self) -> int | None:
        return self.real.latest_ms()

    async def send(self, event: Any) -> asyncio.Future[None]:
        self.sent.append(self.real.validate(event))
        return self._done()

    async def send_raw(
        self, topic: str, value: bytes, key: bytes | None, headers: list[tuple[str, bytes]]
    ) -> asyncio.Future[None]:
        assert topic == self.topics.dlq
        self.dead.append((value, dict(headers)))
        return self._done()

    @staticmethod
    def _done() -> asyncio.Future[None]:
        future = asyncio.get_running_loop().create_future()
        future.set_result(None)
        return future


async def test_produce_sends_every_hostile_line_to_the_dead_letters(
    tmp_path: Path, unstarted: Callable[..., EventProducer]
) -> None:
    now = time.time()
    good = json.dumps(login(now)).encode()
    lines = [
        good,
        json.dumps(login("9999-12-31T23:30:00-01:00")).encode(),
        json.dumps(login("0001-01-01T00:00:00+01:00")).encode(),
        json.dumps(login(now + 2 * 86400)).encode(),
        json.dumps({**login(now), "type": "order", "amount": 1e308}).encode(),
        b'{"event_id": "e\xff"}',
        b'{"event_id":"e","customer_id":"c\\u0000","type":"login","ts":1}',
        b'{"pad": "' + b"x" * (3 * DLQ_MAX_BYTES) + b'"}',
    ]
    path = tmp_path / "events.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    recorder = Recorder(unstarted(topics=Topics(prefix="x-")))
    result = await publish_file(path, recorder)  # type: ignore[arg-type]
    assert result.sent == 1 and len(recorder.sent) == 1
    assert [r.reason for _, r in result.bad] == [
        "invalid_timestamp",
        "invalid_timestamp",
        "future_timestamp",
        "invalid_field",
        "invalid_json",
        "invalid_field",
        "too_large",
    ]
    assert [h[b"x-reason".decode()] for _, h in recorder.dead] == [
        r.reason.encode() for _, r in result.bad
    ]
    assert [v for v, _ in recorder.dead[:-1]] == lines[1:-1]
    huge, headers = recorder.dead[-1]
    assert huge == lines[-1][:DLQ_MAX_BYTES]
    assert headers["x-truncated-from"] == str(len(lines[-1])).encode()
