"""Real servers for the whole run: one Tansu broker and one Redis, on free ports.

Tests share them and keep apart by topic prefix and Redis key prefix. A missing binary
fails the run with the way to install it; nothing is skipped.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis as redis_sync
from aiokafka import AIOKafkaConsumer
from redis.asyncio import Redis

from retention import runtime
from retention.config import Settings
from store.store import Store
from streams.producer import EventProducer
from streams.topics import Topics, cluster_id, ensure_topics
from tests.integration.cli_session import running_up  # noqa: F401  (a fixture)
from tests.integration.cluster import redis_cluster  # noqa: F401  (a fixture)
from tests.integration.receivers import inbox, receiver  # noqa: F401  (fixtures)


@dataclass(frozen=True)
class Stack:
    bootstrap: str
    redis_url: str
    log_dir: Path


@pytest.fixture(scope="session")
def embedded_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """The session's broker and Redis, started once."""
    log_dir = tmp_path_factory.mktemp("stack")
    try:
        services = runtime.start_services(log_dir)
    except runtime.MissingBinary as exc:
        pytest.fail(f"cannot start the embedded stack: {exc}", pytrace=False)
    yield Stack(services.kafka_bootstrap, services.redis_url, log_dir)
    services.stop()


@pytest.fixture(scope="session")
def stack(embedded_stack: Stack) -> Stack:
    """What a test talks to: the embedded stack (a cluster module puts its Redis Cluster in
    place of the single Redis, tests/integration/cluster.py)."""
    return embedded_stack


@pytest.fixture(scope="module", autouse=True)
def fresh_redis_per_module(embedded_stack: Stack) -> Iterator[None]:
    """Every module's keys are dropped once it is done. Tests are kept apart by key prefix,
    so nothing carries over; what it saves is the scan of the whole keyspace some commands
    make (a rebuild's wipe, erasing a customer, a segment's walk), which would otherwise
    grow with every module run before."""
    yield
    client = redis_sync.Redis.from_url(embedded_stack.redis_url)
    try:
        client.flushall()
    finally:
        client.close()


@pytest.fixture
def settings(stack: Stack) -> Settings:
    """Settings of one test: its own topics, consumer group and Redis keys."""
    tag = uuid.uuid4().hex[:8]
    return Settings(
        kafka_bootstrap=stack.bootstrap,
        redis_url=stack.redis_url,
        topic_prefix=f"t{tag}-",
        key_prefix=f"t{tag}:",
        partitions=4,
        session_timeout_seconds=2,
        heartbeat_interval_seconds=0.5,
        batch_size=500,
    )


@pytest.fixture
async def redis(stack: Stack) -> AsyncIterator[Redis]:
    client = Redis.from_url(stack.redis_url, decode_responses=True)
    yield client
    await client.aclose()


@pytest.fixture
async def store(settings: Settings, redis: Redis) -> Store:
    assert settings.kafka_bootstrap
    scope = await cluster_id(settings.kafka_bootstrap)
    return Store(redis, settings.key_prefix, settings.activity_kinds, offsets_scope=scope)


@pytest.fixture
async def producer(settings: Settings) -> AsyncIterator[EventProducer]:
    assert settings.kafka_bootstrap
    topics = Topics.from_settings(settings)
    await ensure_topics(settings.kafka_bootstrap, topics, settings.partitions)
    async with EventProducer(settings.kafka_bootstrap, topics) as p:
        yield p


def settings_env(settings: Settings) -> dict[str, str]:
    return runtime.settings_env(settings)


@dataclass
class Workers:
    """Worker processes of one test, started as users start them: `retention worker`."""

    settings: Settings
    log_dir: Path
    processes: list[runtime.Process] = field(default_factory=list)

    @property
    def procs(self) -> list[subprocess.Popen[bytes]]:
        return [process.proc for process in self.processes]

    def start(self) -> subprocess.Popen[bytes]:
        env = runtime.settings_env(self.settings, RETENTION_DATA_DIR=str(self.log_dir))
        name = f"worker-{len(self.processes) + 1}"
        self.processes.append(runtime.start_worker(env, self.log_dir, name))
        return self.processes[-1].proc

    def kill(self, proc: subprocess.Popen[bytes]) -> None:
        proc.send_signal(signal.SIGKILL)
        proc.wait()

    def logs(self) -> str:
        return "\n".join(
            f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}"
            for p in sorted(self.log_dir.glob("worker-*.log"))
        )

    def stop_all(self) -> None:
        runtime.stop_all(self.processes, timeout=15)


@pytest.fixture
def workers(settings: Settings, tmp_path: Path) -> Iterator[Workers]:
    pool = Workers(settings, tmp_path)
    yield pool
    pool.stop_all()


async def wait_until(
    check: Callable[[], Awaitable[bool]],
    timeout: float,
    what: str,
    logs: Callable[[], str] = str,
    every: float = 0.2,
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await check():
            return
        await asyncio.sleep(every)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}\n{logs()}")


async def read_topic(
    bootstrap: str, topic: str, done: Callable[[list[Any]], bool], timeout: float = 15
) -> list[Any]:
    """Messages of ``topic`` from the start, until ``done`` holds for them or time runs out."""
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", enable_auto_commit=False
    )
    await consumer.start()
    try:
        messages: list[Any] = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not done(messages):
            batch = await consumer.getmany(timeout_ms=500)
            messages.extend(m for part in batch.values() for m in part)
        return messages
    finally:
        await consumer.stop()


def pytest_configure(config: pytest.Config) -> None:
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
