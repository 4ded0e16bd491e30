"""Where the services are: from the environment, or from what ``retention up`` recorded."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from urllib.parse import parse_qsl, unquote, unquote_plus, urlsplit, urlunsplit

from retention.config import Settings

SERVICES_FILE = "services.json"


class NoServices(RuntimeError):
    pass


@dataclass(frozen=True)
class Services:
    kafka_bootstrap: str
    redis_url: str
    embedded: bool = False
    pids: dict[str, int] = field(default_factory=dict)
    log_dir: str | None = None
    metrics_url: str | None = None
    prometheus_url: str | None = None
    # the HTTP ingest API (retention ingest)
    ingest_url: str | None = None
    # each worker's own /metrics, by process name (worker-1, ...)
    worker_metrics_urls: dict[str, str] = field(default_factory=dict)
    # how often `up` restarted each process since it started
    restarts: dict[str, int] = field(default_factory=dict)
    # the `up` process that supervises the others; while it runs, the stack is running
    # even when one child is dead for a moment between two restarts
    supervisor_pid: int | None = None

    def write(self, data_dir: Path) -> Path:
        """Atomically, readable by the owner only: the Redis URL may carry a password."""
        data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        path = data_dir / SERVICES_FILE
        tmp = path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(json.dumps(asdict(self), indent=2))
        tmp.chmod(0o600)
        tmp.replace(path)
        return path

    def all_alive(self) -> bool:
        return all(_alive(pid) for pid in self.pids.values())

    def running(self) -> bool:
        """Whether the recorded stack still runs: its supervisor, else all its processes."""
        if self.supervisor_pid is not None:
            return _alive(self.supervisor_pid)
        return self.all_alive()

    @classmethod
    def read(cls, data_dir: Path) -> Services | None:
        path = data_dir / SERVICES_FILE
        if not path.exists():
            return None
        raw = json.loads(path.read_text())
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in raw.items() if k in known})


#: a query parameter whose name holds one of these words carries a secret (redis-py reads
#: ``?password=`` as the password, and other clients take tokens the same way)
_SECRET_WORDS = ("pass", "pwd", "token", "secret", "key", "auth", "credential", "sig")
MASK = "****"


def _secret_name(name: str) -> bool:
    lowered = unquote_plus(name).lower()
    return any(word in lowered for word in _SECRET_WORDS)


def _secrets(url: str) -> list[str]:
    """The secrets of ``url``: its password and the values of its secret-looking query
    parameters, as written and decoded."""
    parts = urlsplit(url)
    found = [] if parts.password is None else [parts.password, unquote(parts.password)]
    for name, value in parse_qsl(parts.query, keep_blank_values=True):
        if value and _secret_name(name):
            found.append(value)
    for pair in parts.query.split("&"):
        name, sep, raw = pair.partition("=")
        if sep and raw and _secret_name(name):
            found.append(raw)
    return [s for s in dict.fromkeys(found) if s]


def mask_url(url: str | None) -> str | None:
    """``url`` with its password, and the value of every query parameter whose name looks
    secret (``password``, ``token``, ``api_key``, ...), replaced by ``****``, for anything
    shown to a person."""
    if not url:
        return url
    parts = urlsplit(url)
    if parts.password is not None:
        user = parts.username or ""
        host = parts.hostname or ""
        if ":" in host:
            host = f"[{host}]"
        netloc = f"{user}:{MASK}@{host}" + (f":{parts.port}" if parts.port is not None else "")
        parts = parts._replace(netloc=netloc)
    if parts.query:
        pairs = []
        for pair in parts.query.split("&"):
            name, sep, value = pair.partition("=")
            pairs.append(f"{name}={MASK}" if sep and value and _secret_name(name) else pair)
        parts = parts._replace(query="&".join(pairs))
    return urlunsplit(parts)


def scrub(text: str, url: str | None) -> str:
    """``text`` without the secrets of ``url`` (see :func:`mask_url`), should an error
    message quote it; longer secrets first, so none is left half shown."""
    if not url:
        return text
    for secret in sorted(_secrets(url), key=len, reverse=True):
        text = text.replace(secret, MASK)
    return text


def remove_record(data_dir: Path) -> None:
    (data_dir / SERVICES_FILE).unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def resolve(settings: Settings) -> Settings:
    """Settings with both service addresses filled, or :class:`NoServices` saying why not."""
    if settings.kafka_bootstrap and settings.redis_url:
        return settings
    recorded = Services.read(settings.data_dir)
    if recorded is not None and recorded.running():
        return settings.with_services(
            settings.kafka_bootstrap or recorded.kafka_bootstrap,
            settings.redis_url or recorded.redis_url,
        )
    raise NoServices(
        f"no running stack recorded in {settings.data_dir}/: start one with `retention up` "
        "(or point KAFKA_BOOTSTRAP and REDIS_URL at your own Kafka and Redis)"
    )
