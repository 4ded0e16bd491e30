"""A real three-node Redis Cluster (three masters, no replicas), started when a test asks.

Debian's ``redis-server`` runs each node in cluster mode on loopback; ``redis-cli --cluster
create`` spreads the 16384 slots over them. The fixture yields the URL of one node: a
cluster client discovers the others from it, as it would in production.
"""

from __future__ import annotations

import dataclasses
import shutil
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from redis import Redis
from redis.asyncio import Redis as AsyncRedis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import RedisError

from retention import runtime
from store.connect import connect

if TYPE_CHECKING:
    from tests.integration.conftest import Stack

NODES = 3
#: Each node also listens on its cluster bus port, port + 10000, which must stay a port.
BUS_OFFSET = 10_000
MAX_PORT = 65_535 - BUS_OFFSET
INSTALL_HINT_CLUSTER = (
    "a Redis Cluster needs Debian's redis-server and redis-cli: "
    "`apt-get install redis-server` (or run `make install` as root)"
)


def cluster_binaries() -> tuple[str, str]:
    """``redis-server`` and ``redis-cli``; the bundled Valkey has no ``--cluster create``."""
    server, cli = shutil.which("redis-server"), shutil.which("redis-cli")
    if server is None or cli is None:
        raise runtime.MissingBinary(INSTALL_HINT_CLUSTER)
    return server, cli


def _bindable(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def cluster_port() -> int:
    """A free loopback port below 55535 whose bus port (port + 10000) is free too."""
    while True:
        port = runtime.free_port()
        if port < MAX_PORT and _bindable(port + BUS_OFFSET):
            # the bus port must not be handed out to another server of this run later
            runtime._handed_out.add(port + BUS_OFFSET)
            return port


def start_node(server: str, port: int, data_dir: Path, log_dir: Path) -> runtime.Process:
    runtime.private_dir(data_dir)
    argv = [
        server,
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--cluster-enabled",
        "yes",
        "--cluster-config-file",
        str((data_dir / "nodes.conf").resolve()),
        "--dir",
        str(data_dir.resolve()),
        "--appendonly",
        "no",
        "--save",
        "",
    ]
    process = runtime.spawn(f"redis-cluster-{port}", argv, log_dir)
    try:
        runtime.wait_for_port(port, 15, process.proc)
    except BaseException:
        process.stop()
        raise
    return process


def create_cluster(cli: str, ports: list[int]) -> None:
    argv = [cli, "--cluster", "create", *(f"127.0.0.1:{p}" for p in ports)]
    argv += ["--cluster-replicas", "0", "--cluster-yes"]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"`{' '.join(argv)}` failed:\n{proc.stdout}{proc.stderr}")


def cluster_ready(port: int) -> bool:
    """The node serves all slots and knows every other node (so discovery finds them)."""
    client = Redis(host="127.0.0.1", port=port, decode_responses=True, socket_timeout=2)
    try:
        info = client.cluster("INFO")
    except RedisError:
        return False
    finally:
        client.close()
    # redis-py parses the reply into a dict; older versions may hand back the raw text
    fields = (
        info
        if isinstance(info, dict)
        else dict(line.split(":", 1) for line in str(info).split() if ":" in line)
    )
    return fields.get("cluster_state") == "ok" and fields.get("cluster_known_nodes") == str(NODES)


def wait_ready(ports: list[int], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(cluster_ready(p) for p in ports):
            return
        time.sleep(0.1)
    raise TimeoutError(f"Redis Cluster on ports {ports} not ok after {timeout} s")


def start_cluster(base_dir: Path) -> tuple[runtime.ProcessGroup, str]:
    """Start the nodes, join them into one cluster, and return them with one node's URL."""
    server, cli = cluster_binaries()
    group = runtime.ProcessGroup()
    try:
        ports = [cluster_port() for _ in range(NODES)]
        for port in ports:
            group.add(start_node(server, port, base_dir / str(port), base_dir / "logs"))
        create_cluster(cli, ports)
        wait_ready(ports)
    except BaseException:
        group.stop()
        raise
    return group, runtime.redis_url(ports[0])


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """URL of one node of a fresh three-node Redis Cluster, shared by the run."""
    base_dir = tmp_path_factory.mktemp("redis-cluster")
    try:
        group, url = start_cluster(base_dir)
    except runtime.MissingBinary as exc:
        pytest.fail(f"cannot start a Redis Cluster: {exc}", pytrace=False)
    yield url
    group.stop()
    for node_dir in base_dir.iterdir():
        if node_dir.name != "logs":
            shutil.rmtree(node_dir, ignore_errors=True)


# A test module that imports these two runs its tests against the cluster: they take the
# place of the session's `stack` and `redis` for that module only.


@pytest.fixture(name="stack")
def stack_on_the_cluster(stack: Stack, redis_cluster: str) -> Stack:
    """The session's broker, with the Redis Cluster in place of the single Redis."""
    return dataclasses.replace(stack, redis_url=redis_cluster)


@pytest.fixture(name="redis")
async def redis_on_the_cluster(stack: Stack) -> AsyncIterator[AsyncRedis]:
    client = connect(stack.redis_url, decode_responses=True)
    assert isinstance(client, RedisCluster)
    yield client
    await client.aclose()
