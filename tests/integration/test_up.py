"""``retention up`` as a small shop runs it: supervised, private, on loopback only.

Every test starts the real command in its own data directory and kills its processes
with SIGKILL, as a crash or the OOM killer would.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis
from redis.exceptions import AuthenticationError

from contract.events import MICROS
from retention.runtime import REDIS_PASSWORD_FILE
from retention.services import Services
from store.store import Store
from tests.integration.test_cli import read_until, retention

CUSTOMERS = 10


class Up:
    """One running ``retention up`` and everything it printed so far."""

    def __init__(self, data_dir: Path, *args: str) -> None:
        env = {k: v for k, v in os.environ.items() if k not in ("KAFKA_BOOTSTRAP", "REDIS_URL")}
        self.data_dir = data_dir
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "retention.cli", "up", "--data-dir", str(data_dir), *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
        )
        self.output: list[str] = []

    def until(self, marker: str, timeout: float) -> list[str]:
        lines = read_until(self.proc, marker, timeout)
        self.output += lines
        return lines

    def recorded(self) -> Services:
        services = Services.read(self.data_dir)
        assert services is not None, "\n".join(self.output)
        return services

    def kill_all(self) -> None:
        recorded = Services.read(self.data_dir)
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        for pid in recorded.pids.values() if recorded else ():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        assert self.proc.stdout is not None
        self.proc.stdout.close()


@pytest.fixture
def ups() -> Iterator[list[Up]]:
    started: list[Up] = []
    yield started
    for up in started:
        up.kill_all()


def orders(batch: str) -> list[dict[str, Any]]:
    """Five orders per customer, amounts in whole units so that sums are easy to check."""
    return [
        {
            "event_id": f"{batch}-{c}-{n}",
            "customer_id": f"C{c}",
            "ts": f"2024-05-{n + 1:02d}T09:00:00Z",
            "type": "order",
            "amount": n + 1,
        }
        for c in range(CUSTOMERS)
        for n in range(5)
    ]


def produce(data_dir: Path, tmp_path: Path, events: list[dict[str, Any]]) -> None:
    path = tmp_path / f"events-{time.monotonic_ns()}.jsonl"
    path.write_text("".join(json.dumps(e) + "\n" for e in events))
    produced = retention(data_dir, "produce", str(path))
    assert produced.returncode == 0, produced.stderr
    assert f"sent {len(events)} events" in produced.stdout


async def customer_orders(redis_url: str) -> dict[str, tuple[int, float]]:
    """Each customer's (orders, revenue), read straight from the stack's Redis."""
    redis = Redis.from_url(redis_url, decode_responses=True)
    try:
        states = await Store(redis, "rt:").read_customers([f"C{c}" for c in range(CUSTOMERS)])
        return {s.customer_id: (s.orders, s.revenue_micros / MICROS) for s in states}
    finally:
        await redis.aclose()


async def wait_for_orders(
    redis_url: str, per_customer: int, timeout: float, up: Up
) -> dict[str, tuple[int, float]]:
    deadline = time.monotonic() + timeout
    seen: dict[str, tuple[int, float]] = {}
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError, ConnectionError):
            seen = await customer_orders(redis_url)
            if len(seen) == CUSTOMERS and all(n >= per_customer for n, _ in seen.values()):
                return seen
        time.sleep(0.3)
    logs = "\n".join(
        f"--- {p.name}\n{p.read_text(errors='replace')[-2000:]}"
        for p in sorted((up.data_dir / "logs").glob("*.log"))
    )
    raise AssertionError(f"{per_customer} orders each not reached: {seen}\n{logs}")


def wait_for(check: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def fetch(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as response:
        text: str = response.read().decode()
        return text


def batches_observed(url: str) -> float:
    for line in fetch(url).splitlines():
        if line.startswith("retention_batch_duration_seconds_count"):
            return float(line.split()[-1])
    raise AssertionError(f"no retention_batch_duration_seconds at {url}")


def listening(pid: int) -> set[tuple[str, int]]:
    """(address, port) of every TCP socket that process ``pid`` listens on."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            target = os.readlink(fd)
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    found = set()
    for table, family in (("tcp", socket.AF_INET), ("tcp6", socket.AF_INET6)):
        for row in Path(f"/proc/net/{table}").read_text().splitlines()[1:]:
            fields = row.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if state != "0A" or inode not in inodes:  # 0A: LISTEN
                continue
            hex_addr, hex_port = local.split(":")
            raw = bytes.fromhex(hex_addr)
            # the kernel prints each 32-bit word in host (little-endian) order
            raw = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
            found.add((socket.inet_ntop(family, raw), int(hex_port, 16)))
    return found


async def test_up_restarts_a_killed_worker_and_redis_and_counts_on(
    ups: list[Up], tmp_path: Path
) -> None:
    data_dir = tmp_path / "data"
    up = Up(data_dir)
    ups.append(up)
    up.until("ready in", timeout=40)
    before = up.recorded()
    worker_url = before.worker_metrics_urls["worker-1"]

    produce(data_dir, tmp_path, orders("a"))
    first = await wait_for_orders(before.redis_url, 5, 60, up)
    assert first == {f"C{c}": (5, 15.0) for c in range(CUSTOMERS)}
    assert batches_observed(worker_url) >= 1

    time.sleep(1.5)  # Redis writes its AOF to the file every second
    os.kill(before.pids["worker-1"], signal.SIGKILL)
    os.kill(before.pids["redis"], signal.SIGKILL)
    up.until("worker-1 restarted", timeout=30)

    def restarted() -> Services | None:
        now = Services.read(data_dir)
        ok = now is not None and now.restarts == {"worker-1": 1, "redis": 1}
        return now if ok else None

    after = wait_for(restarted, 30, "both restarts recorded")
    assert after.pids["redis"] != before.pids["redis"]
    assert after.pids["worker-1"] != before.pids["worker-1"]
    # same URLs: the same port, password and data directory
    assert (after.redis_url, after.worker_metrics_urls) == (
        before.redis_url,
        before.worker_metrics_urls,
    )
    assert await customer_orders(after.redis_url) == first, "Redis lost state on restart"

    produce(data_dir, tmp_path, orders("b"))
    final = await wait_for_orders(after.redis_url, 10, 90, up)
    assert final == {f"C{c}": (10, 30.0) for c in range(CUSTOMERS)}
    # the restarted worker serves its metrics again, at the recorded URL
    assert wait_for(lambda: batches_observed(worker_url) >= 1, 20, "batches of the new worker")

    summary = up.until("restarts", timeout=10)[-1]
    assert "redis:1" in summary and "worker-1:1" in summary, summary
    # a point-in-time read: on a loaded machine a heartbeat can be late for a moment
    status = wait_for(
        lambda: (r := retention(data_dir, "status", "--json")).returncode == 0 and r,
        30,
        "status ok after the restarts",
    )
    report = json.loads(status.stdout)
    assert report["restarts"] == {"worker-1": 1, "redis": 1}
    assert report["worker_metrics_urls"] == {"worker-1": worker_url}
    assert report["stalled"] == []
    log = (data_dir / "logs" / "up.log").read_text()
    assert "redis died: exit code -9" in log and "worker-1 restarted" in log, log


async def test_embedded_stack_is_private_and_keeps_its_password(
    ups: list[Up], tmp_path: Path
) -> None:
    data_dir = tmp_path / "data"
    up = Up(data_dir, "--workers", "2")
    ups.append(up)
    up.until("ready in", timeout=40)
    recorded = up.recorded()
    password_file = data_dir / REDIS_PASSWORD_FILE
    password = password_file.read_text().strip()
    assert len(password) >= 32
    assert recorded.redis_url.startswith(f"redis://:{password}@127.0.0.1:")

    modes = {
        p.relative_to(tmp_path).as_posix(): p.stat().st_mode & 0o777
        for p in (data_dir, data_dir / "logs", data_dir / "redis")
    }
    assert modes == {"data": 0o700, "data/logs": 0o700, "data/redis": 0o700}
    assert password_file.stat().st_mode & 0o777 == 0o600
    assert (data_dir / "services.json").stat().st_mode & 0o777 == 0o600

    # without the password, or with a wrong one, Redis refuses
    port = int(recorded.redis_url.rsplit(":", 1)[1].split("/")[0])
    for url in (f"redis://127.0.0.1:{port}/0", f"redis://:wrong@127.0.0.1:{port}/0"):
        stranger = Redis.from_url(url)
        try:
            with pytest.raises(AuthenticationError):
                await stranger.get("rt:stats")
        finally:
            await stranger.aclose()
    # the redis-server command line, which `ps` shows everyone, does not carry it either
    cmdline = Path(f"/proc/{recorded.pids['redis']}/cmdline").read_bytes().decode()
    assert password not in cmdline
    owner = Redis.from_url(recorded.redis_url, decode_responses=True)
    try:
        config = await owner.config_get("protected-mode") | await owner.config_get("bind")
    finally:
        await owner.aclose()
    assert config == {"protected-mode": "yes", "bind": "127.0.0.1"}

    # each worker has its own metrics URL, and every process started listens on loopback
    assert sorted(recorded.worker_metrics_urls) == ["worker-1", "worker-2"]
    for url in recorded.worker_metrics_urls.values():
        assert "retention_batch_duration_seconds" in fetch(url)
    for name, pid in recorded.pids.items():
        sockets = listening(pid)
        if name.startswith("worker-"):
            # a worker's /metrics socket takes its bind address from the worker's own
            # settings; `up` only chooses the port
            continue
        assert sockets and {addr for addr, _ in sockets} == {"127.0.0.1"}, (name, sockets)

    shown = "\n".join(
        [
            *up.output,
            retention(data_dir, "status").stdout,
            retention(data_dir, "status", "--json").stdout,
        ]
    )
    assert password not in shown
    assert "redis://:****@127.0.0.1:" in shown

    produce(data_dir, tmp_path, orders("a")[:5])  # the five orders of C0
    deadline = time.monotonic() + 60
    while (await customer_orders(recorded.redis_url)).get("C0") != (5, 15.0):
        assert time.monotonic() < deadline, "C0's orders not applied"
        time.sleep(0.3)

    # a second `up` on the same directory while the first runs is refused, untouched
    second = retention(data_dir, "up", timeout=30)
    assert second.returncode == 1 and "already runs" in second.stderr
    assert Services.read(data_dir) == recorded

    up.proc.send_signal(signal.SIGINT)
    assert up.proc.wait(40) == 0
    again = Up(data_dir)
    ups.append(again)
    again.until("ready in", timeout=40)
    assert password_file.read_text().strip() == password
    assert again.recorded().redis_url.startswith(f"redis://:{password}@127.0.0.1:")
    # the AOF brought the state back, behind the same password
    assert (await customer_orders(again.recorded().redis_url))["C0"] == (5, 15.0)


def test_a_dead_broker_stops_the_stack_with_a_clear_message(ups: list[Up], tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    up = Up(data_dir, "--with-prometheus")
    ups.append(up)
    up.until("ready in", timeout=40)
    recorded = up.recorded()
    assert recorded.prometheus_url is not None

    def scraped() -> bool:
        url = f"{recorded.prometheus_url}/api/v1/targets"
        targets = json.loads(fetch(url))["data"]["activeTargets"]
        healthy = {(t["labels"]["job"], t["scrapeUrl"]) for t in targets if t["health"] == "up"}
        return {
            ("retention-exporter", recorded.metrics_url),
            ("retention-worker", recorded.worker_metrics_urls["worker-1"]),
        } <= healthy

    wait_for(scraped, 30, "prometheus scraping the exporter and the worker")

    os.kill(recorded.pids["broker"], signal.SIGKILL)
    assert up.proc.wait(40) == 1
    assert up.proc.stdout is not None
    rest = up.proc.stdout.read()
    assert "embedded broker stopped" in rest and "in memory" in rest, rest
    assert Services.read(data_dir) is None
    assert [name for name, pid in recorded.pids.items() if alive(pid)] == []


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
