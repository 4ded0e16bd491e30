"""Where the services are: from the environment, or from what ``retention up`` recorded."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

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

    def write(self, data_dir: Path) -> Path:
        data_dir.mkdir(parents=True, exist_ok=True)
        path = data_dir / SERVICES_FILE
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=2))
        tmp.replace(path)
        return path

    def all_alive(self) -> bool:
        return all(_alive(pid) for pid in self.pids.values())

    @classmethod
    def read(cls, data_dir: Path) -> Services | None:
        path = data_dir / SERVICES_FILE
        if not path.exists():
            return None
        raw = json.loads(path.read_text())
        return cls(**raw)


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
    if recorded is not None and recorded.all_alive():
        return settings.with_services(
            settings.kafka_bootstrap or recorded.kafka_bootstrap,
            settings.redis_url or recorded.redis_url,
        )
    raise NoServices(
        f"no running stack recorded in {settings.data_dir}/: start one with `retention up` "
        "(or point KAFKA_BOOTSTRAP and REDIS_URL at your own Kafka and Redis)"
    )
