"""The producer API for apps: validate, key by customer, route to the right topic.

A bad event raises :class:`contract.events.InvalidEvent` in the app that builds it, so it
never reaches the worker.

    async with EventProducer("localhost:9092") as producer:
        await producer.send({"event_id": "o-1", "customer_id": "c-7", "ts": time.time(),
                             "type": "order", "amount": 19.9})

:class:`SyncEventProducer` offers the same for code without an event loop.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from types import TracebackType
from typing import Any

from aiokafka import AIOKafkaProducer

from contract.events import (
    DEFAULT_MAX_FUTURE_SECONDS,
    EVENT_CLASSES,
    Event,
    OrderEvent,
    build_event,
    check_event,
    encode_event,
)
from streams.kafka_security import PLAINTEXT, KafkaSecurity
from streams.topics import Topics


class EventProducer:
    """Sends events that the worker will accept.

    ``max_future_seconds`` is how far ahead of this machine's clock an event may be dated,
    as the worker checks it (``None``: no limit, for replaying a data set of any date).
    ``request_timeout_ms`` bounds how long a send waits for the broker before it fails
    (aiokafka's default; a server that must answer quickly passes less).
    """

    def __init__(
        self,
        bootstrap: str,
        topics: Topics | None = None,
        default_currency: str | None = None,
        linger_ms: int = 5,
        max_future_seconds: float | None = DEFAULT_MAX_FUTURE_SECONDS,
        request_timeout_ms: int = 40_000,
        security: KafkaSecurity = PLAINTEXT,
    ) -> None:
        self.topics = topics or Topics()
        self.default_currency = default_currency
        self.max_future_seconds = max_future_seconds
        self._producer = AIOKafkaProducer(
            bootstrap_servers=bootstrap,
            acks="all",
            linger_ms=linger_ms,
            request_timeout_ms=request_timeout_ms,
            **security.client_kwargs(),
        )

    async def start(self) -> None:
        await self._producer.start()

    async def stop(self) -> None:
        await self._producer.stop()

    async def __aenter__(self) -> EventProducer:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    def latest_ms(self) -> int | None:
        """The latest event time (epoch ms) accepted now, or ``None`` for no limit."""
        if self.max_future_seconds is None:
            return None
        return int((time.time() + self.max_future_seconds) * 1000)

    def validate(self, event: Event | Mapping[str, Any]) -> Event:
        """Check an event against the contract; fill the configured default currency."""
        if isinstance(event, EVENT_CLASSES):
            event = check_event(event, latest_ms=self.latest_ms())
        else:
            event = build_event(dict(event), latest_ms=self.latest_ms())
        if isinstance(event, OrderEvent) and event.currency is None and self.default_currency:
            event = event.model_copy(update={"currency": self.default_currency})
        return event

    async def send(self, event: Event | Mapping[str, Any]) -> asyncio.Future[Any]:
        """Queue an event; returns a future that resolves when the broker stored it."""
        checked = self.validate(event)
        future: asyncio.Future[Any] = await self._producer.send(
            self.topics.source(checked.type),
            value=encode_event(checked),
            key=checked.customer_id.encode(),
        )
        return future

    async def send_and_wait(self, event: Event | Mapping[str, Any]) -> None:
        await (await self.send(event))

    async def send_raw(
        self,
        topic: str,
        value: bytes,
        key: bytes | None = None,
        headers: list[tuple[str, bytes]] | None = None,
    ) -> asyncio.Future[Any]:
        """Send bytes as they are (dead letters, tests of the worker's validation)."""
        future: asyncio.Future[Any] = await self._producer.send(
            topic, value=value, key=key, headers=headers
        )
        return future

    async def flush(self) -> None:
        await self._producer.flush()


class SyncEventProducer:
    """Blocking flavour for scripts and threads without asyncio; one instance per thread."""

    def __init__(self, bootstrap: str, topics: Topics | None = None, **kwargs: Any) -> None:
        self._loop = asyncio.new_event_loop()

        async def started() -> EventProducer:
            # built inside the loop: the Kafka client binds to the loop it is created in
            producer = EventProducer(bootstrap, topics, **kwargs)
            await producer.start()
            return producer

        self._async = self._loop.run_until_complete(started())

    def send(self, event: Event | Mapping[str, Any], wait: bool = True) -> None:
        future = self._loop.run_until_complete(self._async.send(event))
        if wait:
            self._loop.run_until_complete(future)

    def flush(self) -> None:
        self._loop.run_until_complete(self._async.flush())

    def close(self) -> None:
        self._loop.run_until_complete(self._async.stop())
        self._loop.close()

    def __enter__(self) -> SyncEventProducer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
