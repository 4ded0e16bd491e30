"""``retention up``: start (or join) the services, run the worker, print a live summary."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
import time
from pathlib import Path
from types import FrameType

from retention import runtime, status
from retention.config import Settings
from retention.services import Services, remove_record

logger = logging.getLogger(__name__)

#: Group timeouts for the embedded broker. Tansu makes a joining member wait half the
#: session timeout, so the defaults meant for production Kafka would delay readiness.
EMBEDDED_TIMEOUTS = {
    "RETENTION_SESSION_TIMEOUT_SECONDS": "2",
    "RETENTION_HEARTBEAT_INTERVAL_SECONDS": "0.5",
}


class AlreadyRunning(RuntimeError):
    pass


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "retention.cli", *args]


class Stack:
    def __init__(self, settings: Settings, log_dir: Path) -> None:
        self.settings = settings
        self.log_dir = log_dir
        self.group = runtime.ProcessGroup()
        self.embedded = not (settings.kafka_bootstrap and settings.redis_url)
        self.started = time.monotonic()

    def start_services(self, broker_port: int | None, redis_port: int | None) -> Settings:
        if not self.embedded:
            return self.settings
        previous = Services.read(self.settings.data_dir)
        if previous and previous.embedded and previous.all_alive():
            raise AlreadyRunning(f"a stack already runs from {self.settings.data_dir}/")
        broker, bootstrap = runtime.start_broker(self.log_dir, broker_port)
        self.group.add(broker)
        redis, redis_url = runtime.start_redis(
            self.settings.data_dir / "redis", self.log_dir, redis_port, durable=True
        )
        self.group.add(redis)
        return self.settings.with_services(bootstrap, redis_url)

    def start_children(
        self, settings: Settings, workers: int, demo: bool, notifications: Path | None = None
    ) -> dict[str, str]:
        assert settings.kafka_bootstrap and settings.redis_url
        env = {
            "KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
            "REDIS_URL": settings.redis_url,
            "RETENTION_DATA_DIR": str(settings.data_dir.resolve()),
        }
        if self.embedded:
            env.update(EMBEDDED_TIMEOUTS)
        child_env = runtime.child_env(**env)
        for n in range(workers):
            self.group.add(
                runtime.spawn(f"worker-{n + 1}", _cli("worker"), self.log_dir, child_env)
            )
        if demo:
            self.group.add(runtime.spawn("demo", _cli("demo"), self.log_dir, child_env))
        if notifications is not None:
            argv = _cli("notify", "--config", str(notifications.resolve()))
            self.group.add(runtime.spawn("notifier", argv, self.log_dir, child_env))
        return child_env

    def start_metrics(
        self, child_env: dict[str, str], port: int | None, with_prometheus: bool
    ) -> tuple[str, str | None]:
        """The exporter, and optionally a local Prometheus with the project's rules."""
        port = port or runtime.free_port()
        argv = _cli("metrics-server", "--host", "127.0.0.1", "--port", str(port))
        self.group.add(runtime.spawn("exporter", argv, self.log_dir, child_env))
        runtime.wait_for_port(port, 30, self.group.processes[-1].proc)
        metrics_url = f"http://127.0.0.1:{port}/metrics"
        if not with_prometheus:
            return metrics_url, None
        process, prometheus_url = runtime.start_prometheus(
            self.settings.data_dir / "prometheus", self.log_dir, [f"127.0.0.1:{port}"]
        )
        self.group.add(process)
        return metrics_url, prometheus_url

    def record(
        self, settings: Settings, metrics_url: str | None, prometheus_url: str | None
    ) -> Path:
        assert settings.kafka_bootstrap and settings.redis_url
        pids = {p.name: p.pid for p in self.group.processes}
        services = Services(
            settings.kafka_bootstrap,
            settings.redis_url,
            self.embedded,
            pids,
            str(self.log_dir),
            metrics_url,
            prometheus_url,
        )
        return services.write(settings.data_dir)

    def dead_children(self) -> list[str]:
        return [p.name for p in self.group.processes if p.proc.poll() is not None]

    def stop(self) -> None:
        self.group.stop()
        remove_record(self.settings.data_dir)


def summary_line(st: status.Status, elapsed: float) -> str:
    seen = sum(st.seen.values())
    rejected = sum(st.rejected.values())
    lag = "?" if st.lag is None else str(sum(st.lag.values()))
    return (
        f"[{elapsed:6.1f}s] workers {len(st.workers)}  customers {st.customers or 0}  "
        f"messages {seen}  rejected {rejected}  lag {lag}"
    )


def _ready(st: status.Status) -> bool:
    return st.ok and any(w.get("partitions") for w in st.workers.values())


def run_up(
    settings: Settings,
    *,
    demo: bool = False,
    workers: int = 1,
    broker_port: int | None = None,
    redis_port: int | None = None,
    interval: float = 2.0,
    notifications: Path | None = None,
    metrics_port: int | None = None,
    with_prometheus: bool = False,
) -> int:
    """Run until Ctrl-C (or SIGTERM); everything started here is stopped on the way out."""
    write = print
    log_dir = settings.data_dir / "logs"
    stack = Stack(settings, log_dir)
    stopping = False

    def on_signal(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    # Both set explicitly: a shell that starts `up` in the background ignores SIGINT for it.
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        live = stack.start_services(broker_port, redis_port)
        env = stack.start_children(live, workers, demo, notifications)
        metrics_url, prometheus_url = stack.start_metrics(env, metrics_port, with_prometheus)
        where = stack.record(live, metrics_url, prometheus_url)
        write(f"kafka    {live.kafka_bootstrap}" + ("  (embedded Tansu)" if stack.embedded else ""))
        write(f"redis    {live.redis_url}" + ("  (embedded, AOF)" if stack.embedded else ""))
        write(f"metrics  {metrics_url}")
        if prometheus_url:
            write(f"prometheus {prometheus_url}  (the project's rules loaded)")
        write(f"logs     {log_dir}/")
        write(f"recorded {where}  (other shells find the services there)")
        write("try      retention status | retention customer ID --json | Ctrl-C to stop")
        ready = False
        while not stopping:
            st = asyncio.run(status.gather(live, timeout=interval * 2))
            elapsed = time.monotonic() - stack.started
            if not ready and _ready(st):
                ready = True
                write(f"ready in {elapsed:.1f} s")
            write(summary_line(st, elapsed), flush=True)
            dead = stack.dead_children()
            if dead:
                write(f"stopped unexpectedly: {', '.join(dead)} (see {log_dir}/)")
                return 1
            deadline = time.monotonic() + interval
            while not stopping and time.monotonic() < deadline:
                time.sleep(0.1)
    except KeyboardInterrupt:
        pass
    finally:
        write("stopping ...", flush=True)
        stack.stop()
    return 0
