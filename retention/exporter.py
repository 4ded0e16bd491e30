"""The exporter process and the serving of worker metrics.

Two kinds of numbers, two places:

- :class:`RetentionCollector` runs in ONE exporter process (``retention metrics-server``).
  Each scrape reads Redis once into a snapshot (``retention/snapshot.py``) and turns it
  into metric families (``retention/metric_families.py``, pure). Cluster-wide counts live
  in Redis already, so summing them over workers would count them several times; one
  reader reports them once.
- Each worker measures itself (``streams/worker_metrics.py``); :func:`start_worker_metrics`
  serves that registry on the worker's own port.

Both listen on 127.0.0.1 unless told otherwise and take the same optional scrape
authentication (:mod:`retention.metrics_http`). A scrape of the exporter costs Redis some
work, so its result is reused for ``metrics_cache_seconds``: a storm of scrapes reads Redis
once per interval, not once per request. Labels are closed sets; no label ever holds a
customer id, so the series count does not grow with customers.

A read that fails does not empty ``/metrics``: the exporter keeps serving the numbers of
its last good read, with ``retention_exporter_source_up{source}`` at 0 and the time of
the last good read beside it (:class:`Served`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import threading
import time
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from types import FrameType
from typing import Any, TypeVar
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, make_wsgi_app
from prometheus_client.core import (
    Metric,
)
from redis.asyncio import Redis

from retention.config import Settings
from retention.metric_families import (
    Snapshot,
    Source,
    exporter_families,
    families,
    source_families,
)
from retention.metrics_http import ScrapeAuth, guarded, serve
from retention.snapshot import BrokerOffsets, read_snapshot
from retention.stalls import Progress
from store.connect import connect
from streams.topics import Topics
from streams.worker_metrics import WorkerMetrics

logger = logging.getLogger(__name__)

EXPORTER_PORT = 9465
WORKER_METRICS_PORT = 9464
#: Loopback unless told otherwise: the numbers are the business's, and a scrape costs Redis.
DEFAULT_HOST = "127.0.0.1"


T = TypeVar("T")


# --- pure: snapshot -> metric families -------------------------------------------------

#: Families about the exporter's own reading, rebuilt on every scrape.
EXPORTER_FAMILIES = "retention_exporter_"


class Served:
    """What the exporter answers: the families of the last good read, and per source
    whether the latest read reached it and when one last did.

    A failed read keeps the last good numbers rather than dropping them, and marks them
    stale with ``retention_exporter_source_up`` 0. Failing the scrape, or answering with
    the exporter's own series only, would end every series Prometheus has from it: each
    alert on them would resolve, the critical ones included, while nothing was fixed and
    the tracker could no longer be seen, and the dashboards would go blank. Kept, the
    alerts hold their state, the dashboards show the last numbers known, and
    ``RetentionExporterRedisUnreadable`` says how old they are. ``up`` stays for the
    exporter process itself.
    """

    def __init__(self, sources: tuple[Source, ...]) -> None:
        self.sources = sources
        self._numbers: list[Metric] = []
        self._last_success: dict[Source, float] = {}

    def read(self, snap: Snapshot, at: float) -> list[Metric]:
        """A good read of Redis at unix time ``at``; the broker was reached if the lag is known."""
        reached: dict[Source, bool] = {"redis": True, "kafka": snap.lag is not None}
        up = {source: reached[source] for source in self.sources}
        self._last_success |= {source: at for source, ok in up.items() if ok}
        found = families(snap)
        self._numbers = [m for m in found if not m.name.startswith(EXPORTER_FAMILIES)]
        return [*found, *source_families(up, self._last_success)]

    def failed(self, seconds: float) -> list[Metric]:
        """A read that did not get through, after ``seconds``: the last good numbers, if
        any, with every source marked down (the lag needs Redis as well as the broker)."""
        up = dict.fromkeys(self.sources, False)
        return [
            *self._numbers,
            *exporter_families(False, False, seconds),
            *source_families(up, self._last_success),
        ]


# --- I/O: Redis and Kafka -> snapshot ---------------------------------------------------


class _LoopThread:
    """An event loop of our own: prometheus_client calls ``collect`` from its HTTP
    threads, and the Redis and Kafka clients must stay on one loop between scrapes."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(
            target=self.loop.run_forever, name="retention-exporter-loop", daemon=True
        )
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


class RetentionCollector:
    """Reads Redis once per scrape and yields the business and pipeline gauges.

    A result is reused for ``cache_seconds`` (default: the settings'); concurrent scrapes
    wait for the one read in progress instead of starting their own.
    """

    def __init__(
        self, settings: Settings, timeout: float = 10.0, cache_seconds: float | None = None
    ) -> None:
        assert settings.redis_url, "the exporter needs REDIS_URL (or a running `retention up`)"
        self.settings = settings
        self.timeout = timeout
        self.cache_seconds = (
            settings.metrics_cache_seconds if cache_seconds is None else cache_seconds
        )
        self._progress = Progress()
        self._cache_lock = threading.Lock()
        self._cached: list[Metric] = []
        self._cached_at: float | None = None
        self._loop = _LoopThread()
        self._redis: Redis | None = None
        self._broker = (
            BrokerOffsets(settings.kafka_bootstrap, timeout / 2, settings.kafka_security())
            if settings.kafka_bootstrap
            else None
        )
        sources: tuple[Source, ...] = ("redis", "kafka") if self._broker else ("redis",)
        self._served = Served(sources)

    async def _read(self) -> Snapshot:
        if self._redis is None:
            self._redis = connect(
                self.settings.redis_url or "", decode_responses=True, socket_timeout=self.timeout
            )
        return await read_snapshot(
            self.settings, self._redis, self._broker, datetime.now(UTC), self._progress
        )

    def collect(self) -> Iterator[Metric]:
        with self._cache_lock:
            now = time.monotonic()
            if self._cached_at is None or now - self._cached_at >= self.cache_seconds:
                self._cached = self._scrape()
                self._cached_at = time.monotonic()
            return iter(self._cached)

    def _scrape(self) -> list[Metric]:
        started = time.monotonic()
        try:
            snap = self._loop.run(self._read(), self.timeout)
        except Exception as exc:
            logger.warning("scrape failed: serving the last good read", extra={"error": repr(exc)})
            return self._served.failed(time.monotonic() - started)
        return self._served.read(snap, time.time())

    async def _aclose(self) -> None:
        if self._broker is not None:
            await self._broker.close()
        if self._redis is not None:
            await self._redis.aclose()

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._loop.run(self._aclose(), self.timeout)
        self._loop.stop()


# --- per-worker process metrics ---------------------------------------------------------


def serve_worker_metrics(
    port: int,
    registry: CollectorRegistry,
    host: str = DEFAULT_HOST,
    auth: ScrapeAuth | None = None,
) -> tuple[WSGIServer, threading.Thread]:
    """Serve ``registry`` on ``host:port`` from a daemon thread; port 0 picks a free one.

    ``auth`` is the exporter's (:meth:`ScrapeAuth.from_settings`): one credential for
    every target of the tracker.
    """
    server, thread = serve(guarded(make_wsgi_app(registry), auth), host, port)
    logger.info(
        "worker metrics listening",
        extra={"host": host, "port": server.server_port, "auth": auth is not None},
    )
    return server, thread


def start_worker_metrics(settings: Settings) -> WorkerMetrics | None:
    """A worker's metrics as the settings ask: served on ``worker_metrics_host`` and
    ``worker_metrics_port`` with the scrape auth, or None when no port is set."""
    if settings.worker_metrics_port is None:
        return None
    registry = CollectorRegistry()
    metrics = WorkerMetrics(registry, Topics.from_settings(settings).sources)
    serve_worker_metrics(
        settings.worker_metrics_port,
        registry,
        settings.worker_metrics_host,
        ScrapeAuth.from_settings(settings),
    )
    return metrics


# --- the exporter process -----------------------------------------------------------------


@dataclass
class Exporter:
    server: WSGIServer
    thread: threading.Thread
    collector: RetentionCollector

    @property
    def port(self) -> int:
        return int(self.server.server_port)

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.collector.close()


def start_exporter(
    settings: Settings, host: str = DEFAULT_HOST, port: int = EXPORTER_PORT
) -> Exporter:
    auth = ScrapeAuth.from_settings(settings)  # a bad credential setting fails here, early
    registry = CollectorRegistry()
    collector = RetentionCollector(settings)
    registry.register(collector)
    server, thread = serve(guarded(make_wsgi_app(registry), auth), host, port)
    return Exporter(server, thread, collector)


def run_exporter(settings: Settings, host: str = DEFAULT_HOST, port: int = EXPORTER_PORT) -> int:
    """Serve ``/metrics`` until SIGINT or SIGTERM."""
    stopping = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stopping.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    exporter = start_exporter(settings, host, port)
    logger.info(
        "exporter listening",
        extra={
            "host": host,
            "port": exporter.port,
            "auth": ScrapeAuth.from_settings(settings) is not None,
            "cache_seconds": settings.metrics_cache_seconds,
        },
    )
    try:
        stopping.wait()
    finally:
        exporter.stop()
    return 0
