"""Kafka SASL/TLS options: what each client gets, and how settings build them."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest
from faust.auth import SASLCredentials, SSLCredentials
from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth
from pydantic import SecretStr, ValidationError

from retention.config import Settings
from streams.kafka_security import PLAINTEXT, KafkaSecurity

SASL = {"username": "tracker", "password": "s3cret"}


def test_plaintext_adds_nothing_to_any_client() -> None:
    # existing deployments must see exactly the clients they had
    assert PLAINTEXT.client_kwargs() == {}
    assert PLAINTEXT.faust_options() == {}
    assert PLAINTEXT.ssl_context() is None


@pytest.mark.parametrize(
    ("protocol", "mechanism", "expected_keys"),
    [
        # TLS alone: a context, no SASL fields
        ("SSL", "PLAIN", {"security_protocol", "ssl_context"}),
        # SASL without TLS: credentials, no context
        (
            "SASL_PLAINTEXT",
            "SCRAM-SHA-256",
            {"security_protocol", "sasl_mechanism", "sasl_plain_username", "sasl_plain_password"},
        ),
        # both
        (
            "SASL_SSL",
            "SCRAM-SHA-512",
            {
                "security_protocol",
                "ssl_context",
                "sasl_mechanism",
                "sasl_plain_username",
                "sasl_plain_password",
            },
        ),
    ],
)
def test_client_kwargs_per_protocol(protocol: str, mechanism: str, expected_keys: set[str]) -> None:
    security = KafkaSecurity(protocol, mechanism, **SASL)  # type: ignore[arg-type]
    kwargs = security.client_kwargs()
    assert set(kwargs) == expected_keys
    assert kwargs["security_protocol"] == protocol
    if "sasl_mechanism" in kwargs:
        assert kwargs["sasl_mechanism"] == mechanism
        assert (kwargs["sasl_plain_username"], kwargs["sasl_plain_password"]) == (
            "tracker",
            "s3cret",
        )
    if "ssl_context" in kwargs:
        context = kwargs["ssl_context"]
        assert isinstance(context, ssl.SSLContext)
        assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname


@pytest.mark.parametrize(
    ("protocol", "mechanism"),
    [("SSL", "PLAIN"), ("SASL_PLAINTEXT", "PLAIN"), ("SASL_SSL", "SCRAM-SHA-256")],
)
def test_faust_credentials_reach_aiokafka_as_the_plain_clients_get_them(
    protocol: str, mechanism: str
) -> None:
    """Faust turns broker_credentials into aiokafka options; they must match ours."""
    security = KafkaSecurity(protocol, mechanism, **SASL)  # type: ignore[arg-type]
    credentials = security.faust_options()["broker_credentials"]
    assert isinstance(credentials, SSLCredentials if protocol == "SSL" else SASLCredentials)
    via_faust = credentials_to_aiokafka_auth(credentials)
    direct = security.client_kwargs()
    assert via_faust["security_protocol"] == direct["security_protocol"] == protocol
    for key in ("sasl_mechanism", "sasl_plain_username", "sasl_plain_password"):
        assert via_faust.get(key) == direct.get(key)
    assert (via_faust.get("ssl_context") is None) == (protocol == "SASL_PLAINTEXT")


@pytest.mark.parametrize(
    "kwargs",
    [
        {"security_protocol": "SASL_SSL"},  # no credentials
        {"security_protocol": "SASL_PLAINTEXT", "username": "u"},  # no password
        {"security_protocol": "TLS"},  # not a Kafka protocol name
        {"security_protocol": "SASL_SSL", "sasl_mechanism": "GSSAPI", **SASL},  # unsupported
        {"security_protocol": "SSL", "ssl_certfile": "c.pem"},  # certificate without key
    ],
)
def test_incomplete_or_unknown_options_are_refused(kwargs: dict[str, str]) -> None:
    with pytest.raises(ValueError):
        KafkaSecurity(**kwargs)  # type: ignore[arg-type]


def test_password_stays_out_of_repr() -> None:
    security = KafkaSecurity("SASL_PLAINTEXT", username="tracker", password="s3cret")
    assert "s3cret" not in repr(security)


def test_settings_read_the_kafka_variables(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    password_file = tmp_path / "kafka_password"
    password_file.write_text("from-a-file\n")
    monkeypatch.setenv("KAFKA_SECURITY_PROTOCOL", "SASL_PLAINTEXT")
    monkeypatch.setenv("KAFKA_SASL_MECHANISM", "SCRAM-SHA-512")
    monkeypatch.setenv("KAFKA_SASL_USERNAME", "tracker")
    monkeypatch.setenv("KAFKA_SASL_PASSWORD_FILE", str(password_file))
    security = Settings().kafka_security()
    assert security == KafkaSecurity(
        "SASL_PLAINTEXT", "SCRAM-SHA-512", username="tracker", password="from-a-file"
    )
    # a password given directly wins over the file
    monkeypatch.setenv("KAFKA_SASL_PASSWORD", "direct")
    assert Settings().kafka_security().password == "direct"


def test_settings_default_to_plaintext(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("SECURITY_PROTOCOL", "SASL_USERNAME", "SASL_PASSWORD", "SASL_PASSWORD_FILE"):
        monkeypatch.delenv(f"KAFKA_{name}", raising=False)
    assert Settings().kafka_security() == PLAINTEXT


def test_settings_refuse_an_unknown_protocol(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAFKA_SECURITY_PROTOCOL", "SASL")
    with pytest.raises(ValidationError):
        Settings()


def test_a_missing_password_file_is_a_clear_error(tmp_path: Path) -> None:
    settings = Settings(
        kafka_security_protocol="SASL_SSL",
        kafka_sasl_username="tracker",
        kafka_sasl_password_file=tmp_path / "absent",
    )
    with pytest.raises(ValueError, match="KAFKA_SASL_PASSWORD_FILE"):
        settings.kafka_security()


def test_child_processes_get_the_kafka_security_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    original = Settings(
        kafka_bootstrap="k:1",
        kafka_security_protocol="SASL_SSL",
        kafka_sasl_mechanism="SCRAM-SHA-256",
        kafka_sasl_username="tracker",
        kafka_sasl_password=SecretStr("s3cret"),
        kafka_ssl_cafile=Path("/etc/kafka/ca.pem"),
    )
    env = original.env()
    assert env["KAFKA_SECURITY_PROTOCOL"] == "SASL_SSL"
    assert env["KAFKA_SASL_PASSWORD"] == "s3cret"
    assert env["KAFKA_SSL_CAFILE"] == "/etc/kafka/ca.pem"
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert Settings().kafka_security() == original.kafka_security()
