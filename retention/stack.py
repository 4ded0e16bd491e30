"""``retention up``: start (or join) the services, run the workers, print a live summary.

Every process it starts is supervised: a worker, the exporter, the notifier, the demo,
Prometheus or the embedded Redis that dies is started again (see
:mod:`retention.supervise`). The embedded broker is the exception: it keeps its topics in
memory, so when it dies ``up`` stops everything and exits non-zero.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import signal
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import FrameType

from retention import runtime, status
from retention.config import Settings
from retention.services import Services, mask_url, remove_record
from retention.supervise import ChildLost, Notice, Supervisor

logger = logging.getLogger(__name__)


class AlreadyRunning(RuntimeError):
    pass


BROKER_LOST = (
    "the embedded broker stopped (exit code {code}). It keeps the topics in memory, so a "
    "restart would lose every message not yet applied and reset all offsets: stopping "
    "everything. The state in Redis is kept; start again with `retention up`. For a broker "
    "that survives restarts, use the compose file (see docs/operations.md)."
)


class Stack:
    def __init__(self, settings: Settings, log_dir: Path) -> None:
        self.settings = settings
        self.log_dir = log_dir
        self.supervisor = Supervisor()
        self.embedded = not (settings.kafka_bootstrap and settings.redis_url)
        self.started = time.monotonic()
        self.worker_metrics_urls: dict[str, str] = {}
        self.ingest_url: str | None = None
        #: where the demo's subscribers' messages land (``up --demo`` without a file)
        self.demo_inbox: Path | None = None
        #: evaluator processes started beside the workers (RETENTION_EVALUATION=separate)
        self.evaluators = 0

    def check_not_running(self) -> None:
        previous = Services.read(self.settings.data_dir)
        if self.embedded and previous and previous.embedded and previous.running():
            raise AlreadyRunning(
                f"a stack already runs from {self.settings.data_dir}/ "
                f"(pid {previous.supervisor_pid or '?'}); stop it first"
            )

    def start_services(self, broker_port: int | None, redis_port: int | None) -> Settings:
        runtime.private_dir(self.settings.data_dir)
        runtime.private_dir(self.log_dir)
        if not self.embedded:
            return self.settings
        urls: dict[str, str] = {}

        def broker() -> runtime.Process:
            process, urls["kafka"] = runtime.start_broker(self.log_dir, broker_port)
            return process

        # the broker keeps topics in memory: a new one would be a new, empty cluster
        self.supervisor.start("broker", broker, restartable=False)
        redis_dir = self.settings.data_dir / "redis"
        password = runtime.redis_password(self.settings.data_dir)
        port = redis_port or runtime.free_port()

        def redis() -> runtime.Process:
            # same port, password and AOF directory on every restart: clients reconnect to
            # the same URL and find the state where it was
            process, urls["redis"] = runtime.start_redis(
                redis_dir, self.log_dir, port, durable=True, password=password
            )
            return process

        self.supervisor.start("redis", redis)
        return self.settings.with_services(urls["kafka"], urls["redis"])

    def _spawner(
        self, name: str, argv: list[str], env: dict[str, str], port: int | None = None
    ) -> Callable[[], runtime.Process]:
        def start() -> runtime.Process:
            if port is None:
                return runtime.spawn(name, argv, self.log_dir, env)
            return runtime.start_listening(name, argv, self.log_dir, env, port)

        return start

    def start_children(
        self,
        settings: Settings,
        workers: int,
        demo: bool,
        notifications: Path | None = None,
        evaluators: int = 0,
    ) -> dict[str, str]:
        assert settings.kafka_bootstrap and settings.redis_url
        # with evaluators, the workers leave evaluation to them (RETENTION_EVALUATION)
        evaluation = "separate" if evaluators > 0 else settings.evaluation
        child_env = runtime.settings_env(
            settings,
            embedded=self.embedded,
            RETENTION_DATA_DIR=str(settings.data_dir.resolve()),
            RETENTION_EVALUATION=evaluation,
        )
        for n in range(workers):
            name = f"worker-{n + 1}"
            # each worker serves its own /metrics on loopback; the port stays the same
            # across restarts so that the recorded URL and Prometheus's target stay valid
            port = runtime.free_port()
            worker_env = {
                **child_env,
                "RETENTION_WORKER_METRICS_HOST": "127.0.0.1",
                "RETENTION_WORKER_METRICS_PORT": str(port),
            }
            start = functools.partial(runtime.start_worker, worker_env, self.log_dir, name)
            self.supervisor.start(name, start)
            self.worker_metrics_urls[name] = f"http://127.0.0.1:{port}/metrics"
        for n in range(evaluators):
            # each takes its share of the shards (--index of --of); leases keep any overlap safe
            name = f"evaluator-{n + 1}"
            argv = runtime.retention_argv("evaluator", "--index", str(n), "--of", str(evaluators))
            self.supervisor.start(name, self._spawner(name, argv, child_env))
        self.evaluators = evaluators
        if demo:
            argv = runtime.retention_argv("demo")
            self.supervisor.start("demo", self._spawner("demo", argv, child_env))
        if demo and notifications is None:
            notifications = self.start_demo_inbox(settings, child_env)
        if notifications is not None:
            argv = runtime.retention_argv("notify", "--config", str(notifications.resolve()))
            self.supervisor.start("notifier", self._spawner("notifier", argv, child_env))
        return child_env

    def start_demo_inbox(self, settings: Settings, env: dict[str, str]) -> Path:
        """A local receiver for the demo's subscribers (``retention/demo_inbox.py``), and
        the notifications file that points them at it."""
        from retention.demo_inbox import notifications_file

        folder = (settings.data_dir / "demo-inbox").resolve()
        http_port, smtp_port = runtime.free_port(), runtime.free_port()
        digest_at = datetime.now(UTC) + timedelta(seconds=settings.demo_digest_after_seconds)
        path = notifications_file(folder, http_port, smtp_port, digest_at)
        argv = runtime.retention_argv(
            "demo-inbox",
            "--folder",
            str(folder),
            "--http-port",
            str(http_port),
            "--smtp-port",
            str(smtp_port),
        )
        self.supervisor.start("demo-inbox", self._spawner("demo-inbox", argv, env, http_port))
        self.demo_inbox = folder
        return path

    def worker_targets(self) -> list[str]:
        return [url.split("/")[2] for url in self.worker_metrics_urls.values()]

    def start_metrics(
        self, child_env: dict[str, str], port: int | None, with_prometheus: bool
    ) -> tuple[str, str | None]:
        """The exporter, and optionally a local Prometheus with the project's rules."""
        port = port or runtime.free_port()
        argv = runtime.retention_argv("metrics-server", "--host", "127.0.0.1", "--port", str(port))
        self.supervisor.start("exporter", self._spawner("exporter", argv, child_env, port))
        metrics_url = f"http://127.0.0.1:{port}/metrics"
        if not with_prometheus:
            return metrics_url, None
        prometheus_port = runtime.free_port()
        urls: dict[str, str] = {}

        def prometheus() -> runtime.Process:
            process, urls["prometheus"] = runtime.start_prometheus(
                self.settings.data_dir / "prometheus",
                self.log_dir,
                [f"127.0.0.1:{port}"],
                prometheus_port,
                worker_targets=self.worker_targets(),
            )
            return process

        self.supervisor.start("prometheus", prometheus)
        return metrics_url, urls["prometheus"]

    def start_ingest(self, child_env: dict[str, str], port: int | None) -> str:
        """The HTTP ingest API on loopback; the same port across restarts."""
        port = port or runtime.free_port()
        argv = runtime.retention_argv("ingest", "--host", "127.0.0.1", "--port", str(port))
        self.supervisor.start("ingest", self._spawner("ingest", argv, child_env, port))
        self.ingest_url = f"http://127.0.0.1:{port}"
        return self.ingest_url

    def record(
        self, settings: Settings, metrics_url: str | None, prometheus_url: str | None
    ) -> Path:
        assert settings.kafka_bootstrap and settings.redis_url
        services = Services(
            settings.kafka_bootstrap,
            settings.redis_url,
            self.embedded,
            self.supervisor.pids(),
            str(self.log_dir),
            metrics_url,
            prometheus_url,
            worker_metrics_urls=dict(self.worker_metrics_urls),
            restarts=self.supervisor.restarts(),
            supervisor_pid=os.getpid(),
            ingest_url=self.ingest_url,
        )
        return services.write(settings.data_dir)

    def supervise(self) -> list[Notice]:
        """Restart what died; each notice is also appended to ``up.log`` in the log dir."""
        notices = self.supervisor.check()
        if notices:
            stamp = time.strftime("%Y-%m-%dT%H:%M:%S")
            with (self.log_dir / "up.log").open("a") as log:
                log.writelines(f"{stamp} {notice}\n" for notice in notices)
        return notices

    def stop(self) -> None:
        self.supervisor.stop()
        remove_record(self.settings.data_dir)


def summary_line(
    st: status.StackStatus, elapsed: float, restarts: dict[str, int] | None = None
) -> str:
    seen = sum(st.seen.values())
    rejected = sum(st.rejected.values())
    lag = "?" if st.lag is None else str(sum(st.lag.values()))
    line = (
        f"[{elapsed:6.1f}s] workers {len(st.workers)}  customers {st.customers or 0}  "
        f"messages {seen}  rejected {rejected}  lag {lag}"
    )
    if st.stalled:
        line += f"  STALLED {','.join(sorted(st.stalled))}"
    if restarts:
        line += "  restarts " + ",".join(f"{n}:{k}" for n, k in sorted(restarts.items()))
    return line


def _ready(st: status.StackStatus) -> bool:
    return st.ok and any(w.get("partitions") for w in st.workers.values())


def run_up(
    settings: Settings,
    *,
    demo: bool = False,
    workers: int = 1,
    evaluators: int | None = None,
    broker_port: int | None = None,
    redis_port: int | None = None,
    interval: float = 2.0,
    notifications: Path | None = None,
    metrics_port: int | None = None,
    with_prometheus: bool = False,
    ingest_port: int | None = None,
) -> int:
    """Run until Ctrl-C (or SIGTERM); everything started here is stopped on the way out.

    ``evaluators``: how many ``retention evaluator`` processes run beside the workers
    (None: one with ``RETENTION_EVALUATION=separate``, else none)."""
    write = print
    log_dir = settings.data_dir / "logs"
    stack = Stack(settings, log_dir)
    stopping = False
    code = 0

    def on_signal(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    try:
        stack.check_not_running()
    except AlreadyRunning as exc:
        print(f"retention: {exc}", file=sys.stderr)
        return 1
    # Both set explicitly: a shell that starts `up` in the background ignores SIGINT for it.
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        live = stack.start_services(broker_port, redis_port)
        if evaluators is None:
            evaluators = 1 if settings.evaluation == "separate" else 0
        env = stack.start_children(live, workers, demo, notifications, evaluators)
        metrics_url, prometheus_url = stack.start_metrics(env, metrics_port, with_prometheus)
        ingest_url = stack.start_ingest(env, ingest_port)
        where = stack.record(live, metrics_url, prometheus_url)
        _banner(write, stack, live, metrics_url, prometheus_url, ingest_url, where)
        ready = False
        while not stopping:
            if _supervise(stack, write, log_dir):
                stack.record(live, metrics_url, prometheus_url)
            st = asyncio.run(status.gather(live, timeout=interval * 2))
            elapsed = time.monotonic() - stack.started
            if not ready and _ready(st):
                ready = True
                write(f"ready in {elapsed:.1f} s")
            write(summary_line(st, elapsed, stack.supervisor.restarts()), flush=True)
            deadline = time.monotonic() + interval
            while not stopping and time.monotonic() < deadline:
                if _supervise(stack, write, log_dir):
                    stack.record(live, metrics_url, prometheus_url)
                time.sleep(0.1)
    except ChildLost as lost:
        write(BROKER_LOST.format(code=lost.code) if lost.name == "broker" else str(lost))
        code = 1
    except KeyboardInterrupt:
        pass
    finally:
        write("stopping ...", flush=True)
        stack.stop()
    return code


def _banner(
    write: Callable[..., None],
    stack: Stack,
    live: Settings,
    metrics_url: str,
    prometheus_url: str | None,
    ingest_url: str,
    where: Path,
) -> None:
    """Where everything ``up`` started listens, and what to try."""
    write(f"kafka    {live.kafka_bootstrap}" + ("  (embedded Tansu)" if stack.embedded else ""))
    redis_note = "  (embedded, AOF, password in the data directory)" if stack.embedded else ""
    write(f"redis    {mask_url(live.redis_url)}{redis_note}")
    write(f"metrics  {metrics_url}")
    for name, url in stack.worker_metrics_urls.items():
        write(f"         {url}  ({name})")
    if prometheus_url:
        write(f"prometheus {prometheus_url}  (the project's rules loaded)")
    write(f"ingest   {ingest_url}  (HTTP API; keys: retention keys create NAME)")
    write(f"web      {ingest_url}/  (pages; a read key: retention keys create NAME --scope read)")
    if stack.evaluators:
        write(f"evaluate {stack.evaluators} evaluator process(es); the workers only ingest")
    write(f"logs     {stack.log_dir}/")
    if stack.demo_inbox is not None:
        write(
            f"alerts   {stack.demo_inbox}/  (what the demo's webhook, Slack and email "
            "subscribers receive, one file each; retention alerts --outcomes)"
        )
    write(f"recorded {where}  (other shells find the services there)")
    write("try      retention status | retention customer ID --json | Ctrl-C to stop")


def _supervise(stack: Stack, write: Callable[..., None], log_dir: Path) -> bool:
    """One round of supervision; whether any process was restarted."""
    notices = stack.supervise()
    for notice in notices:
        write(f"{notice}  (see {log_dir}/)", flush=True)
    return any(n.kind == "restarted" for n in notices)
