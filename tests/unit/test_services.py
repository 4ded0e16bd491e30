"""What services.json holds and how a Redis URL is shown to people."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from retention.services import Services, mask_url, scrub


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://:s3cret@127.0.0.1:6379/0", "redis://:****@127.0.0.1:6379/0"),
        (
            "rediss://tracker:s3cret@redis.example:6380/2",
            "rediss://tracker:****@redis.example:6380/2",
        ),
        ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
        ("redis://tracker@host/0", "redis://tracker@host/0"),
        ("redis://:pw@[::1]:6379/0", "redis://:****@[::1]:6379/0"),
        (None, None),
        # a password given as a query parameter, which redis-py also reads
        ("redis://127.0.0.1:6379/0?password=s3cret", "redis://127.0.0.1:6379/0?password=****"),
        (
            "rediss://u:pw@h:6380/0?ssl_cert_reqs=required&Password=x&db=2",
            "rediss://u:****@h:6380/0?ssl_cert_reqs=required&Password=****&db=2",
        ),
        # any parameter whose name says it holds a secret
        (
            "redis://h/0?access_token=t&client_secret=s&api_key=k&auth=a&passwd=p&timeout=5",
            "redis://h/0?access_token=****&client_secret=****&api_key=****&auth=****"
            "&passwd=****&timeout=5",
        ),
        ("redis://h/0?password", "redis://h/0?password"),  # no value: nothing to hide
        ("redis://h/0?socket_timeout=5", "redis://h/0?socket_timeout=5"),
    ],
)
def test_mask_url(url: str | None, shown: str | None) -> None:
    assert mask_url(url) == shown


def test_scrub_removes_the_password_from_any_text() -> None:
    url = "redis://:s3cret@127.0.0.1:6379/0"
    assert scrub(f"AuthError({url!r}) s3cret", url) == (
        "AuthError('redis://:****@127.0.0.1:6379/0') ****"
    )
    assert scrub("nothing to hide", "redis://127.0.0.1:6379/0") == "nothing to hide"
    query = "redis://127.0.0.1:6379/0?password=s%3Dcret&db=0"
    assert scrub(f"AuthError({query!r}): s=cret", query) == (
        "AuthError('redis://127.0.0.1:6379/0?password=****&db=0'): ****"
    )


def test_record_is_private_and_read_back(tmp_path: Path) -> None:
    services = Services(
        "127.0.0.1:9092",
        "redis://:pw@127.0.0.1:6379/0",
        embedded=True,
        pids={"redis": 1},
        worker_metrics_urls={"worker-1": "http://127.0.0.1:1/metrics"},
        restarts={"redis": 2},
        supervisor_pid=os.getpid(),
    )
    path = services.write(tmp_path)
    assert path.stat().st_mode & 0o777 == 0o600
    assert Services.read(tmp_path) == services
    assert services.running()  # this process supervises, whatever pid 1 is doing


def test_record_of_another_version_still_reads(tmp_path: Path) -> None:
    (tmp_path / "services.json").write_text(
        json.dumps({"kafka_bootstrap": "k:1", "redis_url": "redis://r:2/0", "future_key": 1})
    )
    recorded = Services.read(tmp_path)
    assert recorded is not None
    assert (recorded.kafka_bootstrap, recorded.worker_metrics_urls, recorded.restarts) == (
        "k:1",
        {},
        {},
    )
