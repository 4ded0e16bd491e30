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

What one process gives a client is bounded (docs/security.md): the time its headers and
its body may take, the connections open at once (:class:`ConnectionGate`), its Redis
connections (``ingest_redis_max_connections``), and each key's requests, events and bytes a second.
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
from typing import Any, cast

from aiohttp import web

from contract.events import Event, encode_event
from retention.api_keys import KeyCache, KeyStore, KeysUnavailable, Scope
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
from store.connect import connect_bounded
from store.ingest_state import IngestState
from store.store import Store
from streams.producer import EventProducer
from streams.topics import Topics

logger = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8088
STATS_FLUSH_SECONDS = 1.0
CHALLENGE = 'Bearer realm="retention-ingest", Basic realm="retention-ingest", charset="UTF-8"'
#: How long a request waits for a free Redis connection before its Redis call fails
REDIS_WAIT_SECONDS = 5.0
#: How long a refused connection is kept for its client to read the 503
REFUSED_LINGER_SECONDS = 1.0


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


async def _read_body(request: web.Request, limit: int, timeout: float) -> bytes:
    """At most ``limit`` bytes as sent (a gzip body is bounded again once inflated), all
    within ``timeout`` seconds: a client that sends its body slowly gets a 408."""
    if request.content_length is not None and request.content_length > limit:
        raise RequestError(
            413, "too_large", f"body of {request.content_length} bytes, over {limit}"
        )
    chunks: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(timeout):
            async for chunk in request.content.iter_chunked(64 * 1024):
                size += len(chunk)
                if size > limit:
                    raise RequestError(413, "too_large", f"body of more than {limit} bytes")
                chunks.append(chunk)
    except TimeoutError:
        raise RequestError(
            408, "timeout", f"the body did not arrive within {timeout:g} s"
        ) from None
    return b"".join(chunks)


def _busy_response() -> bytes:
    body = json.dumps({"error": "unavailable", "detail": "too many connections; retry"})
    return (
        "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
        f"Retry-After: 1\r\nConnection: close\r\nContent-Length: {len(body)}\r\n\r\n{body}"
    ).encode()


BUSY = _busy_response()


class _Refused(asyncio.Protocol):
    """A connection past the cap: answered 503 at once, whatever it asks. What the client
    sends is dropped, and the socket is closed once the client has closed its side or after
    :data:`REFUSED_LINGER_SECONDS`, so that it reads the 503 rather than a reset."""

    def __init__(self) -> None:
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # a cast, not an isinstance check: uvloop's transports are not asyncio's classes
        writer = cast(asyncio.Transport, transport)
        writer.write(BUSY)
        if writer.can_write_eof():
            writer.write_eof()
        self._timer = asyncio.get_running_loop().call_later(REFUSED_LINGER_SECONDS, writer.close)

    def eof_received(self) -> bool:
        return False  # the transport closes itself

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()


class _Counted(asyncio.Protocol):
    """aiohttp's protocol for one connection, counted by its gate while it is open."""

    def __init__(self, inner: asyncio.Protocol, gate: ConnectionGate) -> None:
        self.inner, self.gate = inner, gate

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.inner.connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.gate.open -= 1
        self.inner.connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self.inner.eof_received()

    def pause_writing(self) -> None:
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.inner.resume_writing()


class ConnectionGate:
    """The listening socket's protocol factory: connections go to ``factory`` (aiohttp's)
    while fewer than ``limit`` are open, and get a 503 past it. Each open connection costs
    a file descriptor and buffers, whatever it sends; the cap keeps a flood of them from
    taking the descriptors the producer and Redis need."""

    def __init__(self, factory: Callable[[], asyncio.Protocol], limit: int) -> None:
        self.factory, self.limit = factory, limit
        self.open = 0

    def __call__(self) -> asyncio.Protocol:
        if self.open >= self.limit:
            return _Refused()
        self.open += 1
        return _Counted(self.factory(), self)


class Ingest:
    """The request handlers and what they share."""

    def __init__(self, settings: Settings, state: IngestState, sink: Sink) -> None:
        self.settings = settings
        self.sink = sink
        self.keys = KeyCache(
            KeyStore(state),
            settings.ingest_key_cache_seconds,
            stale_for=settings.ingest_key_stale_seconds,
            retry_max=settings.ingest_key_retry_max_seconds,
        )
        self.limiter = RateLimiter(
            settings.ingest_rate_per_second,
            settings.ingest_burst,
            settings.ingest_events_per_second,
            settings.ingest_events_burst,
            settings.ingest_bytes_per_second,
            settings.ingest_bytes_burst,
        )
        self.stats = IngestStats(state)

    def handler(self, endpoint: Endpoint) -> Callable[[web.Request], Awaitable[web.Response]]:
        async def handle(request: web.Request) -> web.Response:
            try:
                response = await self._handle(request, endpoint)
            except RequestError as exc:
                headers = dict(exc.headers)
                if exc.status == 401:
                    headers["WWW-Authenticate"] = CHALLENGE
                response = _json(exc.status, exc.body(), headers)
                if exc.status == 408:
                    response.force_close()  # the rest of a late body is not waited for
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
        except KeysUnavailable as exc:  # logged by the cache, once per failed read
            raise RequestError(
                503,
                "unavailable",
                "keys cannot be checked now",
                {"Retry-After": retry_after(exc.retry_in)},
            ) from exc
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
            return self._rate_limited(wait, self.settings.ingest_rate_per_second, "requests")
        limit = self.settings.ingest_max_body_bytes
        raw = await _read_body(request, limit, self.settings.ingest_body_timeout_seconds)
        payload = inflate(raw, request.headers.get("Content-Encoding"), limit)
        items = event_items(payload, endpoint, self.settings.ingest_max_batch_events)
        wait, volume = self.limiter.wait_volume(name, time.monotonic(), len(items), len(payload))
        if volume is not None:
            rate = (
                self.settings.ingest_events_per_second
                if volume == "events"
                else self.settings.ingest_bytes_per_second
            )
            return self._rate_limited(wait, rate, volume)
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

    @staticmethod
    def _rate_limited(wait: float, rate: float, what: str) -> web.Response:
        return _json(
            429,
            {"error": "rate_limited", "detail": f"over {rate:g} {what}/s"},
            {"Retry-After": retry_after(wait)},
        )

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
        # a call that finds every connection busy waits for one (on one Redis; see
        # connect_bounded)
        self.redis = connect_bounded(
            settings.redis_url,
            settings.ingest_redis_max_connections,
            REDIS_WAIT_SECONDS,
            decode_responses=True,
            socket_timeout=5,
        )
        self.sink = Sink(settings)
        self.ingest = Ingest(settings, IngestState(self.redis, settings.key_prefix), self.sink)
        store = Store(self.redis, settings.key_prefix, settings.activity_kinds)
        reads = ReadApi(settings, store, self.ingest.authorize)
        pages = WebView(settings, store, self.ingest.authorize)
        app = build_app(self.ingest, reads, pages)
        # gzip is inflated by the handlers, within the body limit, not by aiohttp. aiohttp
        # closes a connection whose keep-alive time runs out while it has no whole request
        # yet, from the connection's start and after each answer: with the header timeout
        # as that time, half a header (or none) holds a connection no longer than it.
        self.runner = web.AppRunner(
            app,
            auto_decompress=False,
            access_log=None,
            keepalive_timeout=settings.ingest_header_timeout_seconds,
        )
        self._listener: asyncio.Server | None = None
        self._flusher: asyncio.Task[None] | None = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    async def start(self) -> None:
        await self.runner.setup()
        assert self.runner.server is not None
        gate = ConnectionGate(self.runner.server, self.settings.ingest_max_connections)
        self._listener = await asyncio.get_running_loop().create_server(
            gate, self.host, self.port, backlog=128
        )
        # the bound port, when 0 asked for any
        self.port = int(self._listener.sockets[0].getsockname()[1])
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
        if self._listener is not None:
            self._listener.close()
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
