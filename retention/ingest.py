"""``retention ingest``: the HTTP API for apps without a Kafka client.

``POST /v1/events`` takes one event, ``POST /v1/batch`` takes ``{"events": [...]}``. Each
event is judged by the producer API's own validation (:meth:`EventProducer.validate`, with
the live future-timestamp margin), sent to its topic keyed by customer id, and the request
is answered ``202`` only once the broker has acknowledged every accepted event (``acks=all``).
When the broker does not answer within ``ingest_broker_timeout_seconds`` the request gets
``503`` instead: some of its events may have been stored, and resending them is safe because
the worker drops repeats of an event id. The rules themselves are in
:mod:`retention.ingest_rules`; the OpenAPI document ``openapi.json`` beside this module
describes the API and is served at ``/openapi.json``.

Requests and events are counted in this process and added to the Redis hash
``ingest:stats`` (:class:`store.ingest_state.IngestState`) once a second, where the
exporter reads them: ``request|<endpoint>|<status>``, ``accepted|<type>`` and
``rejected|<reason>``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from importlib import resources
from typing import Any

from aiohttp import web

from contract.events import Event, encode_event
from retention.api_keys import KeyCache, KeyStore, Scope
from retention.config import Settings
from retention.ingest_rules import (
    Endpoint,
    RateLimiter,
    RequestError,
    event_items,
    inflate,
    retry_after,
    verdicts,
)
from retention.read_api import ReadApi
from retention.web import WebView
from store.connect import connect
from store.ingest_state import IngestState
from store.store import Store
from streams.producer import EventProducer
from streams.topics import Topics

logger = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8088
STATS_FLUSH_SECONDS = 1.0
CHALLENGE = 'Bearer realm="retention-ingest", Basic realm="retention-ingest", charset="UTF-8"'


class BrokerUnavailable(RuntimeError):
    pass


def openapi_document() -> bytes:
    return resources.files("retention").joinpath("openapi.json").read_bytes()


class Sink:
    """The Kafka side: one producer, started on first use and again after a failed start."""

    def __init__(self, settings: Settings) -> None:
        assert settings.kafka_bootstrap
        self.settings = settings
        self.timeout = settings.ingest_broker_timeout_seconds
        self.producer = self._new()
        self._started = False
        self._lock = asyncio.Lock()

    def _new(self) -> EventProducer:
        return EventProducer(
            self.settings.kafka_bootstrap or "",
            Topics.from_settings(self.settings),
            self.settings.default_currency,
            max_future_seconds=self.settings.max_future_seconds,
            request_timeout_ms=int(self.timeout * 1000),
            security=self.settings.kafka_security(),
        )

    async def ensure_started(self) -> None:
        if self._started:
            return
        async with self._lock:
            if self._started:
                return
            try:
                await asyncio.wait_for(self.producer.start(), self.timeout)
            except BaseException:
                with contextlib.suppress(Exception):
                    await self.producer.stop()
                self.producer = self._new()
                raise
            self._started = True

    async def deliver(self, events: list[Event]) -> None:
        """Return once the broker acknowledged every event; else :class:`BrokerUnavailable`."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout
        try:
            await self.ensure_started()
            futures = []
            for event in events:
                futures.append(
                    await asyncio.wait_for(
                        self.producer.send_raw(
                            self.producer.topics.source(event.type),
                            encode_event(event),
                            event.customer_id.encode(),
                        ),
                        max(0.001, deadline - loop.time()),
                    )
                )
        except Exception as exc:
            raise BrokerUnavailable(repr(exc)) from exc
        # asyncio.wait, not gather: a timeout must not cancel futures the sender resolves
        done, pending = await asyncio.wait(futures, timeout=max(0.001, deadline - loop.time()))
        if pending:
            raise BrokerUnavailable(f"{len(pending)} events not acknowledged in {self.timeout} s")
        failed = [f.exception() for f in done if f.exception() is not None]
        if failed:
            raise BrokerUnavailable(repr(failed[0]))

    async def close(self) -> None:
        # stopped even when it never started: aiokafka warns about any producer left open
        with contextlib.suppress(Exception):
            await self.producer.stop()


class IngestStats:
    """Counters of this process, added to Redis in one pipeline per flush."""

    def __init__(self, state: IngestState) -> None:
        self.state = state
        self.pending: Counter[str] = Counter()

    def request(self, endpoint: Endpoint, status: int) -> None:
        self.pending[f"request|{endpoint}|{status}"] += 1

    def events(self, accepted: list[Event], rejected_reasons: list[str]) -> None:
        for event in accepted:
            self.pending[f"accepted|{event.type}"] += 1
        for reason in rejected_reasons:
            self.pending[f"rejected|{reason}"] += 1

    async def flush(self) -> None:
        batch, self.pending = self.pending, Counter()
        if not batch:
            return
        try:
            await self.state.add_counts(batch)
        except Exception as exc:
            self.pending.update(batch)  # counted next time instead of lost
            logger.warning("ingest stats not written", extra={"error": repr(exc)})


def _json(status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response(body, status=status, headers=headers)


async def _read_body(request: web.Request, limit: int) -> bytes:
    """At most ``limit`` bytes as sent (a gzip body is bounded again once inflated)."""
    if request.content_length is not None and request.content_length > limit:
        raise RequestError(
            413, "too_large", f"body of {request.content_length} bytes, over {limit}"
        )
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.content.iter_chunked(64 * 1024):
        size += len(chunk)
        if size > limit:
            raise RequestError(413, "too_large", f"body of more than {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


class Ingest:
    """The request handlers and what they share."""

    def __init__(self, settings: Settings, state: IngestState, sink: Sink) -> None:
        self.settings = settings
        self.sink = sink
        self.keys = KeyCache(KeyStore(state), settings.ingest_key_cache_seconds)
        self.limiter = RateLimiter(settings.ingest_rate_per_second, settings.ingest_burst)
        self.stats = IngestStats(state)

    def handler(self, endpoint: Endpoint) -> Callable[[web.Request], Awaitable[web.Response]]:
        async def handle(request: web.Request) -> web.Response:
            try:
                response = await self._handle(request, endpoint)
            except RequestError as exc:
                headers = {"WWW-Authenticate": CHALLENGE} if exc.status == 401 else None
                response = _json(exc.status, exc.body(), headers)
            except Exception:
                logger.exception("ingest request failed", extra={"endpoint": endpoint})
                response = _json(500, {"error": "internal_error", "detail": "see the server log"})
            self.stats.request(endpoint, response.status)
            return response

        return handle

    async def authorize(self, request: web.Request, scope: Scope) -> str:
        """The name of the request's key, which must carry ``scope`` (or ``admin``): 401
        without a valid key, 403 with a key that may not do this."""
        try:
            caller = await self.keys.authenticate(request.headers.get("Authorization"))
        except Exception as exc:
            logger.warning("key lookup failed", extra={"error": repr(exc)})
            raise RequestError(503, "unavailable", "keys cannot be checked now") from exc
        if caller is None:
            raise RequestError(401, "unauthorized", "a valid API key is required")
        if not caller.may(scope):
            raise RequestError(403, "forbidden", f"this key has no {scope} scope")
        return caller.name

    async def _handle(self, request: web.Request, endpoint: Endpoint) -> web.Response:
        name = await self.authorize(request, "ingest")
        wait = self.limiter.wait(name, time.monotonic())
        if wait > 0:
            return _json(
                429,
                {
                    "error": "rate_limited",
                    "detail": f"over {self.settings.ingest_rate_per_second}/s",
                },
                {"Retry-After": retry_after(wait)},
            )
        limit = self.settings.ingest_max_body_bytes
        raw = await _read_body(request, limit)
        payload = inflate(raw, request.headers.get("Content-Encoding"), limit)
        items = event_items(payload, endpoint, self.settings.ingest_max_batch_events)
        judged = verdicts(items, self.sink.producer.validate, len(payload))
        accepted = judged.accepted
        if accepted:
            try:
                await self.sink.deliver(accepted)
            except BrokerUnavailable as exc:
                logger.warning("broker unavailable", extra={"error": str(exc)[:300]})
                return _json(
                    503,
                    {"error": "broker_unavailable", "detail": "no event was acknowledged; resend"},
                    {"Retry-After": "1"},
                )
        self.stats.events(accepted, [r.reason for r in judged.rejections])
        return _json(judged.status(), judged.body())

    async def openapi(self, request: web.Request) -> web.Response:
        return web.Response(body=openapi_document(), content_type="application/json")

    async def flush_forever(self) -> None:
        while True:
            await asyncio.sleep(STATS_FLUSH_SECONDS)
            await self.stats.flush()


def build_app(
    ingest: Ingest, reads: ReadApi | None = None, pages: WebView | None = None
) -> web.Application:
    # the body is read by the handlers with their own bound (client_max_size is not used)
    app = web.Application(client_max_size=ingest.settings.ingest_max_body_bytes + 1)
    app.router.add_post("/v1/events", ingest.handler("events"))
    app.router.add_post("/v1/batch", ingest.handler("batch"))
    app.router.add_get("/openapi.json", ingest.openapi)
    if reads is not None:
        reads.routes(app)
    if pages is not None:
        pages.routes(app)
    return app


class IngestServer:
    """The app on ``host:port`` (port 0: a free one), with its producer and stats flusher."""

    def __init__(self, settings: Settings, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT):
        assert settings.redis_url and settings.kafka_bootstrap
        self.settings = settings
        self.host, self.port = host, port
        self.redis = connect(settings.redis_url, decode_responses=True, socket_timeout=5)
        self.sink = Sink(settings)
        self.ingest = Ingest(settings, IngestState(self.redis, settings.key_prefix), self.sink)
        store = Store(self.redis, settings.key_prefix, settings.activity_kinds)
        reads = ReadApi(settings, store, self.ingest.authorize)
        pages = WebView(settings, store, self.ingest.authorize)
        app = build_app(self.ingest, reads, pages)
        # gzip is inflated by the handlers, within the body limit, not by aiohttp
        self.runner = web.AppRunner(app, auto_decompress=False, access_log=None)
        self._flusher: asyncio.Task[None] | None = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    async def start(self) -> None:
        await self.runner.setup()
        site = web.TCPSite(self.runner, self.host, self.port)
        await site.start()
        self.port = int(self.runner.addresses[0][1])  # the bound one, when 0 asked for any
        self._flusher = asyncio.create_task(self.ingest.flush_forever())
        with contextlib.suppress(Exception):
            # started now so that the first request does not wait for it; a broker that
            # is down now is tried again on each request
            await self.sink.ensure_started()

    async def stop(self) -> None:
        if self._flusher is not None:
            self._flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._flusher
        await self.runner.cleanup()
        await self.ingest.stats.flush()
        await self.sink.close()
        await self.redis.aclose()


async def serve(settings: Settings, host: str, port: int, stop: asyncio.Event) -> None:
    server = IngestServer(settings, host, port)
    await server.start()
    logger.info("ingest listening", extra={"url": server.url})
    try:
        await stop.wait()
    finally:
        await server.stop()


def run_ingest(settings: Settings, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT) -> int:
    """Serve until SIGINT or SIGTERM."""

    async def go() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await serve(settings, host, port, stop)

    if settings.event_loop == "uvloop":
        import uvloop

        uvloop.run(go())
    else:
        asyncio.run(go())
    return 0


def loads_document() -> dict[str, Any]:
    """The OpenAPI document as a mapping (tests and tools)."""
    result: dict[str, Any] = json.loads(openapi_document())
    return result
