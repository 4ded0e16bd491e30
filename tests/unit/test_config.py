"""Settings come from the environment, with the two service variables unprefixed."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from retention.config import Settings
from streams.topics import Topics


def test_service_variables_and_prefixed_options(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAFKA_BOOTSTRAP", "kafka:9092")
    monkeypatch.setenv("REDIS_URL", "redis://redis:6379/0")
    monkeypatch.setenv("RETENTION_ACTIVITY_KINDS", "order, login,support")
    monkeypatch.setenv("RETENTION_TOPIC_PREFIX", "shop-")
    monkeypatch.setenv("RETENTION_DATA_DIR", "/var/lib/retention")
    settings = Settings()
    assert settings.kafka_bootstrap == "kafka:9092"
    assert settings.redis_url == "redis://redis:6379/0"
    assert settings.activity_kinds == ("order", "login", "support")
    assert settings.data_dir == Path("/var/lib/retention")
    assert Topics.from_settings(settings).sources == ("shop-orders", "shop-logins", "shop-support")
    assert Topics.from_settings(settings).dlq == "shop-events-dlq"


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("RETENTION_ACTIVITY_KINDS", "order,purchase"),
        ("RETENTION_DEFAULT_CURRENCY", "euro"),
        ("RETENTION_PARTITIONS", "0"),
        ("RETENTION_DEDUPE_HORIZON_SECONDS", "5"),
    ],
)
def test_bad_values_are_refused(monkeypatch: pytest.MonkeyPatch, variable: str, value: str) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ValidationError):
        Settings()


def test_settings_are_frozen(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KAFKA_BOOTSTRAP", raising=False)
    settings = Settings()
    with pytest.raises(ValidationError):
        settings.partitions = 8  # type: ignore[misc]
    moved = settings.with_services("h:1", "redis://h:2/0")
    assert (moved.kafka_bootstrap, settings.kafka_bootstrap) == ("h:1", None)


def test_topic_names_map_back_to_event_types() -> None:
    topics = Topics("p-")
    assert [topics.event_type_of(t) for t in topics.sources] == ["order", "login", "support"]
    assert topics.event_type_of("p-events-dlq") is None


def test_env_round_trips(monkeypatch: pytest.MonkeyPatch) -> None:
    """A child process started with settings.env() reads back the same settings."""
    original = Settings(
        kafka_bootstrap="k:1",
        redis_url="redis://r:2/0",
        activity_kinds=("order", "support"),
        partitions=8,
        risk_file=Path("/etc/retention/risk.yml"),
        clock="watermark",
    )
    for key, value in original.env().items():
        monkeypatch.setenv(key, value)
    assert Settings() == original


def test_the_redis_url_can_come_from_a_file(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A password in a file shows in no command line and no environment listing."""
    path = tmp_path / "redis_url"
    path.write_text("redis://tracker:s3cret@redis:6379/0\n")
    monkeypatch.delenv("REDIS_URL", raising=False)
    monkeypatch.setenv("REDIS_URL_FILE", str(path))
    settings = Settings()
    assert settings.redis_url == "redis://tracker:s3cret@redis:6379/0"
    # a child process started with settings.env() reads the same settings
    for key, value in settings.env().items():
        monkeypatch.setenv(key, value)
    assert Settings() == settings
    monkeypatch.setenv("REDIS_URL", "redis://other:6379/0")  # the variable wins
    assert Settings().redis_url == "redis://other:6379/0"
    monkeypatch.delenv("REDIS_URL")
    monkeypatch.setenv("REDIS_URL_FILE", str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="REDIS_URL_FILE cannot be read"):
        Settings()
