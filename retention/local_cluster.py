"""A Redis Cluster of three nodes (three masters, no replicas) on this machine's loopback,
for the tests and the benchmarks that run against a real cluster.

Debian's ``redis-server`` runs each node in cluster mode; ``redis-cli --cluster create``
spreads the 16384 slots over them. :func:`start_cluster` returns the URL of one node: a
cluster client discovers the others from it, as it would in production.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path

from retention.runtime import (
    MissingBinary,
    Process,
    ProcessGroup,
    _handed_out,
    free_port,
    private_dir,
    redis_url,
    spawn,
    wait_for_port,
)

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
        raise MissingBinary(INSTALL_HINT_CLUSTER)
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
        port = free_port()
        if port < MAX_PORT and _bindable(port + BUS_OFFSET):
            # the bus port must not be handed out to another server of this run later
            _handed_out.add(port + BUS_OFFSET)
            return port


def start_node(server: str, port: int, data_dir: Path, log_dir: Path) -> Process:
    private_dir(data_dir)
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
    process = spawn(f"redis-cluster-{port}", argv, log_dir)
    try:
        wait_for_port(port, 15, process.proc)
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


def cluster_ready(cli: str, port: int) -> bool:
    """The node serves all slots and knows every other node (so discovery finds them)."""
    argv = [cli, "-h", "127.0.0.1", "-p", str(port), "cluster", "info"]
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=5, check=False)
    except subprocess.TimeoutExpired:
        return False
    fields = dict(line.split(":", 1) for line in proc.stdout.split() if ":" in line)
    return fields.get("cluster_state") == "ok" and fields.get("cluster_known_nodes") == str(NODES)


def wait_ready(cli: str, ports: list[int], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(cluster_ready(cli, p) for p in ports):
            return
        time.sleep(0.1)
    raise TimeoutError(f"Redis Cluster on ports {ports} not ok after {timeout} s")


def start_cluster(base_dir: Path) -> tuple[ProcessGroup, str]:
    """Start the nodes, join them into one cluster, and return them with one node's URL."""
    server, cli = cluster_binaries()
    group = ProcessGroup()
    try:
        ports = [cluster_port() for _ in range(NODES)]
        for port in ports:
            group.add(start_node(server, port, base_dir / str(port), base_dir / "logs"))
        create_cluster(cli, ports)
        wait_ready(cli, ports)
    except BaseException:
        group.stop()
        raise
    return group, redis_url(ports[0])
