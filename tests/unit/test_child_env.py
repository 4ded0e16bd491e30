"""The environment a child process gets from settings (no processes started)."""

from __future__ import annotations

import os
import sys

import pytest

from retention import runtime
from retention.config import Settings

SETTINGS = Settings(
    kafka_bootstrap="127.0.0.1:9092",
    redis_url="redis://127.0.0.1:6379/0",
    key_prefix="shop:",
    topic_prefix="shop-",
    activity_kinds=("order", "support"),
    session_timeout_seconds=30,
)


def test_a_child_reads_the_same_settings_back(monkeypatch: pytest.MonkeyPatch) -> None:
    env = runtime.settings_env(SETTINGS)
    for name in [n for n in os.environ if n.startswith(("RETENTION_", "KAFKA_", "REDIS_"))]:
        monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert Settings() == SETTINGS


@pytest.mark.parametrize(
    ("embedded", "overrides", "session_timeout", "key_prefix"),
    [
        (False, {}, "30.0", "shop:"),  # the settings' own values
        (True, {}, "2", "shop:"),  # the embedded broker's short group timeouts win
        (True, {"RETENTION_SESSION_TIMEOUT_SECONDS": "5"}, "5", "shop:"),  # overrides win last
        (False, {"RETENTION_KEY_PREFIX": "other:"}, "30.0", "other:"),
    ],
)
def test_later_layers_win(
    embedded: bool, overrides: dict[str, str], session_timeout: str, key_prefix: str
) -> None:
    env = runtime.settings_env(SETTINGS, embedded=embedded, **overrides)
    assert env["RETENTION_SESSION_TIMEOUT_SECONDS"] == session_timeout
    assert env["RETENTION_KEY_PREFIX"] == key_prefix
    assert env["KAFKA_BOOTSTRAP"] == "127.0.0.1:9092"
    assert env.get("PATH") == os.environ.get("PATH")  # the parent's environment underneath


def test_the_worker_command_runs_under_this_interpreter() -> None:
    argv = runtime.retention_argv("worker")
    assert argv[1:] == ["-m", "retention.cli", "worker"]
    assert os.path.samefile(argv[0], sys.executable)
