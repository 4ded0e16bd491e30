"""How the tracker's Kafka clients authenticate and encrypt: SASL and TLS.

Every Kafka client the tracker builds (producers, consumers, admin clients and the Faust
app) takes one :class:`KafkaSecurity`, so a broker that requires SASL or TLS is reached
the same way everywhere. The default is plaintext with no authentication: it adds no
client options at all, so a broker without security sees exactly what it saw before.

This module sits on the Kafka edge and reads no settings; ``retention.config`` builds a
``KafkaSecurity`` from the environment.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass, field
from typing import Any, Literal

SecurityProtocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]
SaslMechanism = Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]

SECURITY_PROTOCOLS: tuple[SecurityProtocol, ...] = (
    "PLAINTEXT",
    "SSL",
    "SASL_PLAINTEXT",
    "SASL_SSL",
)
SASL_MECHANISMS: tuple[SaslMechanism, ...] = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")


@dataclass(frozen=True, slots=True)
class KafkaSecurity:
    """SASL credentials and TLS trust for the Kafka clients.

    ``ssl_cafile`` is the CA bundle that signed the broker's certificate (``None``: the
    system's trusted CAs); ``ssl_certfile`` and ``ssl_keyfile`` give a client certificate
    for brokers that demand one. The password is kept out of ``repr``.
    """

    security_protocol: SecurityProtocol = "PLAINTEXT"
    sasl_mechanism: SaslMechanism = "PLAIN"
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    ssl_cafile: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None

    def __post_init__(self) -> None:
        if self.security_protocol not in SECURITY_PROTOCOLS:
            raise ValueError(
                f"Kafka security protocol {self.security_protocol!r} is not one of "
                + ", ".join(SECURITY_PROTOCOLS)
            )
        if self.sasl_mechanism not in SASL_MECHANISMS:
            raise ValueError(
                f"SASL mechanism {self.sasl_mechanism!r} is not one of "
                + ", ".join(SASL_MECHANISMS)
            )
        if self.uses_sasl and not (self.username and self.password):
            # aiokafka would only find out at connect time, with a less helpful message
            raise ValueError(
                f"{self.security_protocol} needs a SASL username and password "
                "(KAFKA_SASL_USERNAME, KAFKA_SASL_PASSWORD)"
            )
        if (self.ssl_certfile is None) != (self.ssl_keyfile is None):
            raise ValueError("a client certificate needs both its certificate and key file")

    @property
    def uses_sasl(self) -> bool:
        return self.security_protocol in ("SASL_PLAINTEXT", "SASL_SSL")

    @property
    def uses_tls(self) -> bool:
        return self.security_protocol in ("SSL", "SASL_SSL")

    def ssl_context(self) -> ssl.SSLContext | None:
        """A client TLS context that verifies the broker's certificate and host name."""
        if not self.uses_tls:
            return None
        # imported here: only TLS users pay for it, and it is a thin wrapper over ssl
        from aiokafka.helpers import create_ssl_context

        context: ssl.SSLContext = create_ssl_context(
            cafile=self.ssl_cafile,
            certfile=self.ssl_certfile,
            keyfile=self.ssl_keyfile,
        )
        return context

    def client_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for AIOKafkaProducer, AIOKafkaConsumer and AIOKafkaAdminClient.

        Empty for plaintext, so that clients keep aiokafka's own defaults.
        """
        if self.security_protocol == "PLAINTEXT":
            return {}
        kwargs: dict[str, Any] = {"security_protocol": self.security_protocol}
        if self.uses_tls:
            kwargs["ssl_context"] = self.ssl_context()
        if self.uses_sasl:
            kwargs["sasl_mechanism"] = self.sasl_mechanism
            kwargs["sasl_plain_username"] = self.username
            kwargs["sasl_plain_password"] = self.password
        return kwargs

    def faust_options(self) -> dict[str, Any]:
        """Options for ``faust.App``: its ``broker_credentials``, or nothing for plaintext.

        Faust's credential objects carry the TLS context themselves: ``SASLCredentials``
        with a context means SASL_SSL, ``SSLCredentials`` means TLS alone.
        """
        if self.security_protocol == "PLAINTEXT":
            return {}
        from faust.auth import SASLCredentials, SSLCredentials

        context = self.ssl_context()
        if not self.uses_sasl:
            assert context is not None
            return {"broker_credentials": SSLCredentials(context)}
        return {
            "broker_credentials": SASLCredentials(
                username=self.username,
                password=self.password,
                ssl_context=context,
                mechanism=self.sasl_mechanism,
            )
        }


#: No authentication, no encryption: what a client gets unless told otherwise.
PLAINTEXT = KafkaSecurity()
