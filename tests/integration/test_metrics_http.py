"""The /metrics endpoints over real HTTP and a real Redis: bind address, auth, caching."""

from __future__ import annotations

import base64
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry
from redis.asyncio import Redis

from retention import runtime
from retention.config import Settings
from retention.exporter import Exporter, serve_worker_metrics, start_exporter
from retention.metrics_http import AuthConfigError, ScrapeAuth
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
