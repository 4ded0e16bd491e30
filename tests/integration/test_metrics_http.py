"""The /metrics endpoints over real HTTP and a real Redis: bind address, auth, caching."""

from __future__ import annotations

import base64
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from redis.asyncio import Redis

from retention import runtime
from retention.config import Settings
from retention.exporter import Exporter, serve_worker_metrics, start_exporter
from retention.metrics_http import AuthConfigError, ScrapeAuth, guarded, serve
from streams.worker_metrics import WorkerMetrics
from tests.integration.conftest import settings_env

TOKEN = "s3cret-token"


def get(url: str, authorization: str | None = None) -> tuple[int, dict[str, list[str]], str]:
    request = urllib.request.Request(url)
    if authorization is not None:
        request.add_header("Authorization", authorization)
    try:
        with urllib.request.urlopen(request, timeout=20) as response:
            return response.status, {}, response.read().decode()
    except urllib.error.HTTPError as exc:
        headers: dict[str, list[str]] = {}
        for name, value in exc.headers.items():
            headers.setdefault(name.lower(), []).append(value)
        return exc.code, headers, exc.read().decode()


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


@contextmanager
def exporter_process(settings: Settings, tmp_path: Path, name: str) -> Iterator[str]:
    """The exporter process, as `retention metrics-server` runs it."""
    port = runtime.free_port()
    argv = runtime.retention_argv("metrics-server", "--port", str(port))
    process = runtime.start_listening(name, argv, tmp_path, settings_env(settings), port, 15)
    try:
        yield f"http://127.0.0.1:{port}/metrics"
    finally:
        process.stop()


@contextmanager
def in_process(settings: Settings) -> Iterator[Exporter]:
    exporter = start_exporter(settings, port=0)
    try:
        yield exporter
    finally:
        exporter.stop()


def with_changes(settings: Settings, **changes: object) -> Settings:
    """The test's settings (its Redis key prefix, the session's servers) and ``changes``."""
    return Settings(**{**settings.model_dump(), **changes})


async def redis_calls(redis: Redis) -> int:
    """Commands Redis has run so far, INFO itself left out."""
    stats = await redis.info("commandstats")
    return sum(int(v["calls"]) for k, v in stats.items() if k != "cmdstat_info")


async def test_the_exporter_asks_for_a_bearer_token(settings: Settings, tmp_path: Path) -> None:
    secured = with_changes(settings, metrics_bearer_token=TOKEN)
    with exporter_process(secured, tmp_path, "exporter") as url:
        status, headers, _ = get(url)
        assert status == 401
        assert headers["www-authenticate"] == ['Bearer realm="retention"']
        for wrong in (f"Bearer {TOKEN}x", f"Bearer {TOKEN[:-1]}", basic("u", TOKEN), "Bearer"):
            assert get(url, wrong)[0] == 401, wrong
        status, _, body = get(url, f"Bearer {TOKEN}")
        assert status == 200
        assert "retention_exporter_redis_up 1.0" in body


async def test_basic_auth_from_a_file_and_either_credential(
    settings: Settings, tmp_path: Path
) -> None:
    path = tmp_path / "metrics_auth"
    path.write_text("prometheus:pa:ss word\n")  # the password may hold a colon and a space
    secured = with_changes(settings, metrics_basic_auth_file=path, metrics_bearer_token=TOKEN)
    with in_process(secured) as exporter:
        url = f"http://127.0.0.1:{exporter.port}/metrics"
        status, headers, _ = get(url)
        assert status == 401
        assert sorted(headers["www-authenticate"]) == [
            'Basic realm="retention", charset="UTF-8"',
            'Bearer realm="retention"',
        ]
        assert get(url, basic("prometheus", "pa:ss word"))[0] == 200
        assert get(url, f"Bearer {TOKEN}")[0] == 200
        for wrong in (
            basic("prometheus", "pa:ss wor"),
            basic("Prometheus", "pa:ss word"),
            "Basic not-base64!",
        ):
            assert get(url, wrong)[0] == 401, wrong


def test_unusable_credentials_stop_the_start(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.write_text("\n")
    for bad in (
        Settings(metrics_basic_auth="no-colon"),
        Settings(metrics_bearer_token_file=empty),
        Settings(metrics_bearer_token="a", metrics_bearer_token_file=empty),
        Settings(metrics_basic_auth_file=tmp_path / "missing"),
    ):
        with pytest.raises(AuthConfigError):
            ScrapeAuth.from_settings(bad)


def test_metrics_server_refuses_to_start_with_an_unreadable_credential(
    settings: Settings, tmp_path: Path
) -> None:
    chosen = with_changes(settings, metrics_bearer_token_file=tmp_path / "missing")
    proc = subprocess.run(
        [sys.executable, "-m", "retention.cli", "metrics-server", "--port", "0"],
        capture_output=True,
        text=True,
        timeout=60,
        env=settings_env(chosen),
    )
    assert proc.returncode == 2
    assert "RETENTION_METRICS_BEARER_TOKEN_FILE: cannot read" in proc.stderr
    assert "Traceback" not in proc.stderr


async def test_the_exporter_listens_on_loopback_unless_told(settings: Settings) -> None:
    with in_process(with_changes(settings)) as exporter:
        assert exporter.server.server_address[0] == "127.0.0.1"
        assert get(f"http://127.0.0.1:{exporter.port}/metrics")[0] == 200


async def test_a_scrape_storm_reads_redis_once_per_interval(
    settings: Settings, redis: Redis, tmp_path: Path
) -> None:
    """20 scrapes at once: without the cache each reads Redis, with it one read serves all."""
    storm = 20

    async def commands_for(cache_seconds: float) -> int:
        chosen = with_changes(settings, metrics_cache_seconds=cache_seconds)
        with exporter_process(chosen, tmp_path, f"exporter-{cache_seconds}") as url:
            assert get(url)[0] == 200  # the first read, whatever the cache
            before = await redis_calls(redis)
            with ThreadPoolExecutor(storm) as pool:
                statuses = list(pool.map(lambda _: get(url)[0], range(storm)))
            after = await redis_calls(redis)
        assert statuses == [200] * storm
        return after - before

    uncached = await commands_for(0)
    cached = await commands_for(60)
    print(f"Redis commands for {storm} concurrent scrapes: {uncached} uncached, {cached} cached")
    assert uncached >= storm * 10  # each scrape reads a few dozen keys
    assert cached == 0


def test_worker_metrics_take_a_host_and_the_same_auth(tmp_path: Path) -> None:
    auth = ScrapeAuth.from_settings(Settings(metrics_basic_auth="prom:pw"))
    registry = CollectorRegistry()
    metrics = WorkerMetrics(registry, ["orders"])
    metrics.observe_batch(0.01, 10)
    server, _ = serve_worker_metrics(0, registry, auth=auth)
    try:
        assert server.server_address[0] == "127.0.0.1"
        url = f"http://127.0.0.1:{server.server_port}/metrics"
        status, headers, _ = get(url)
        assert status == 401 and headers["www-authenticate"]
        status, _, body = get(url, basic("prom", "pw"))
        assert status == 200
        assert (
            'retention_worker_events_rejected_total{reason="invalid_json",topic="orders"} 0.0'
            in body
        )
        assert "retention_batch_size_messages_count 1.0" in body
    finally:
        server.shutdown()
        server.server_close()


def hello(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"hello\n"]


@contextmanager
def raw_server(**limits: float) -> Iterator[int]:
    """``serve`` of a tiny app behind a bearer token, with ``limits``; yields its port."""
    app = guarded(hello, ScrapeAuth(bearer_token=TOKEN.encode()))
    server, _ = serve(app, "127.0.0.1", 0, **limits)  # type: ignore[arg-type]
    try:
        yield int(server.server_port)
    finally:
        server.shutdown()
        server.server_close()


def connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=5)


def closed_after(sock: socket.socket, within: float) -> float | None:
    """Seconds until the server closes ``sock`` (whatever it sent first), or None."""
    start = time.monotonic()
    sock.settimeout(0.05)
    while time.monotonic() - start < within:
        try:
            if sock.recv(4096) == b"":
                return time.monotonic() - start
        except TimeoutError:
            continue
        except ConnectionResetError:
            return time.monotonic() - start
    return None


def answer(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes."""
    sock.settimeout(5)
    chunks = []
    while chunk := sock.recv(4096):
        chunks.append(chunk)
    return b"".join(chunks)


def test_a_client_that_sends_half_a_request_is_cut_off() -> None:
    with raw_server(timeout=0.3) as port, connect(port) as slow, connect(port) as dripping:
        slow.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
        # a byte every 0.1 s does not stretch the deadline: it is for the whole head
        dripping.sendall(b"G")
        start = time.monotonic()
        for byte in b"ET /metrics HTTP/1.1\r\nHost: x\r\nX-Slow: yes":
            try:
                dripping.sendall(bytes([byte]))
            except OSError:
                break
            if closed_after(dripping, 0.1) is not None:
                break
        dripped = time.monotonic() - start
        cut = closed_after(slow, 2)
        assert cut is not None and cut < 1.0, cut
        assert dripped < 1.0, dripped


def test_connections_past_the_cap_get_a_quick_503() -> None:
    with raw_server(timeout=5, max_connections=2, queue_wait=0.2) as port:
        holders = [connect(port) for _ in range(2)]
        for sock in holders:
            sock.sendall(b"GET /metrics HTTP/1.1\r\n")  # and nothing more
        start = time.monotonic()
        with connect(port) as third:
            reply = answer(third)
        assert reply.startswith(b"HTTP/1.0 503 "), reply
        assert b"Retry-After: 1" in reply
        assert time.monotonic() - start < 2
        for sock in holders:
            sock.close()
        # a freed slot serves the next scrape
        status, _, body = get(f"http://127.0.0.1:{port}/metrics", f"Bearer {TOKEN}")
        assert (status, body) == (200, "hello\n")


def test_no_credential_gets_401_before_any_body_is_read() -> None:
    with raw_server(timeout=5) as port:
        with connect(port) as sock:
            start = time.monotonic()
            # a huge body announced and not sent: the server must not wait for it
            sock.sendall(b"POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000000\r\n\r\n")
            reply = answer(sock)
            assert reply.startswith(b"HTTP/1.0 401 "), reply
            assert b'WWW-Authenticate: Bearer realm="retention"' in reply
            assert time.monotonic() - start < 1
        assert get(f"http://127.0.0.1:{port}/metrics", f"Bearer {TOKEN}")[0] == 200
