"""Kafka over TLS and with SASL: the tracker's clients reach a secured broker, and a
client without the right security is refused instead of running silently.

TLS: Tansu 0.6.0 cannot serve TLS itself (its ``--cert`` and ``--key`` options are
mutually exclusive, and it needs both), so the broker here sits behind a TLS terminator,
as brokers often do behind a load balancer: clients speak TLS to the terminator, which
advertises itself and relays plain Kafka to Tansu. The TLS that clients see is real.

SASL: Tansu with ``--authentication`` requires SCRAM; with its in-memory storage no user
can be created once authentication is on, so only refusals can be shown against it.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import ssl
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from aiokafka.errors import KafkaConnectionError, KafkaError
from redis.asyncio import Redis

from retention import runtime
from retention.config import Settings
from store.store import Store
from streams.kafka_security import PLAINTEXT, KafkaSecurity
from streams.producer import EventProducer
from streams.topics import Topics, cluster_id, ensure_topics
from tests.integration.conftest import Workers, wait_until

#: how long a refused client may take to give up; aiokafka fails fast on a closed socket
REFUSAL_SECONDS = 20


def self_signed(directory: Path, name: str) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and its key, made with the openssl command."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.fail("openssl is needed to make a test certificate: apt-get install openssl")
    cert, key = directory / f"{name}.pem", directory / f"{name}.key"
    argv = [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"]
    argv += ["-keyout", str(key), "-out", str(cert), "-subj", "/CN=127.0.0.1"]
    argv += ["-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"]
    subprocess.run(
        argv,
        check=True,
        capture_output=True,
    )
    return cert, key


class TlsTerminator:
    """Accepts TLS on one port and relays the plain bytes to the broker's port."""

    def __init__(self, target_port: int, cert: Path, key: Path) -> None:
        self.target_port = target_port
        self.context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.context.load_cert_chain(cert, key)
        self.server: asyncio.Server | None = None
        self.relays: set[asyncio.Task[None]] = set()

    async def start(self, port: int) -> None:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", port, ssl=self.context)

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
        for task in list(self.relays):
            task.cancel()
        await asyncio.gather(*self.relays, return_exceptions=True)

    async def _serve(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        try:
            broker_r, broker_w = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            client_w.close()
            return
        for reader, writer in ((client_r, broker_w), (broker_r, client_w)):
            task = asyncio.create_task(self._pipe(reader, writer))
            self.relays.add(task)
            task.add_done_callback(self.relays.discard)

    @staticmethod
    async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except (OSError, ssl.SSLError):
            pass
        finally:
            with contextlib.suppress(Exception):
                writer.close()


@dataclass(frozen=True)
class TlsBroker:
    bootstrap: str
    cafile: Path


@pytest.fixture
async def tls_broker(tmp_path: Path) -> AsyncIterator[TlsBroker]:
    cert, key = self_signed(tmp_path, "broker")
    tls_port = runtime.free_port()
    broker, plain = runtime.start_broker(tmp_path / "broker", advertised=f"127.0.0.1:{tls_port}")
    terminator = TlsTerminator(int(plain.rsplit(":", 1)[1]), cert, key)
    try:
        await terminator.start(tls_port)
        yield TlsBroker(f"127.0.0.1:{tls_port}", cert)
    finally:
        await terminator.stop()
        broker.stop()


@pytest.fixture
def sasl_broker(tmp_path: Path) -> Iterator[str]:
    broker, bootstrap = runtime.start_broker(tmp_path / "sasl", authentication=True)
    yield bootstrap
    broker.stop()


def secured(settings: Settings, broker: TlsBroker) -> Settings:
    """The test's settings, pointed at the TLS broker the way an operator would set them."""
    return Settings(
        **{
            **settings.model_dump(),
            "kafka_bootstrap": broker.bootstrap,
            "kafka_security_protocol": "SSL",
            "kafka_ssl_cafile": broker.cafile,
        }
    )


async def test_worker_applies_events_sent_over_tls(
    settings: Settings, redis: Redis, tls_broker: TlsBroker, tmp_path: Path
) -> None:
    tls = secured(settings, tls_broker)
    security = tls.kafka_security()
    assert security.security_protocol == "SSL"
    assert tls.kafka_bootstrap
    topics = Topics.from_settings(tls)
    await ensure_topics(tls.kafka_bootstrap, topics, tls.partitions, security)
    now = time.time()
    async with EventProducer(tls.kafka_bootstrap, topics, security=security) as producer:
        for n, (customer, amount) in enumerate([("ann", 10.0), ("ann", 5.5), ("bo", 7.25)]):
            await producer.send_and_wait(
                {
                    "event_id": f"o-{n}",
                    "customer_id": customer,
                    "ts": now - 60 + n,
                    "type": "order",
                    "amount": amount,
                }
            )

    # a real worker process, configured only through the environment
    workers = Workers(tls, tmp_path)
    try:
        workers.start()
        store = Store(
            redis,
            tls.key_prefix,
            tls.activity_kinds,
            offsets_scope=await cluster_id(tls.kafka_bootstrap, security),
        )

        async def both_applied() -> bool:
            ann, bo = await store.read_customer("ann"), await store.read_customer("bo")
            return ann is not None and ann.orders == 2 and bo is not None and bo.orders == 1

        await wait_until(both_applied, 60, "the worker to apply the TLS events", workers.logs)
        ann = await store.read_customer("ann")
        assert ann is not None and ann.placed_micros == 15_500_000
        assert workers.procs[0].poll() is None, workers.logs()
    finally:
        workers.stop_all()


async def test_clients_without_the_right_tls_are_refused(
    tls_broker: TlsBroker, tmp_path: Path
) -> None:
    # plain Kafka against the TLS port: the handshake never happens
    plain = EventProducer(tls_broker.bootstrap, security=PLAINTEXT, request_timeout_ms=5000)
    with pytest.raises(KafkaConnectionError):
        await asyncio.wait_for(plain.start(), REFUSAL_SECONDS)
    await plain.stop()

    # TLS, but trusting another CA: the broker's certificate does not verify
    other_ca, _ = self_signed(tmp_path, "other")
    untrusting = KafkaSecurity("SSL", ssl_cafile=str(other_ca))
    wrong_ca = EventProducer(tls_broker.bootstrap, security=untrusting, request_timeout_ms=5000)
    with pytest.raises(KafkaConnectionError):
        await asyncio.wait_for(wrong_ca.start(), REFUSAL_SECONDS)
    await wrong_ca.stop()


async def test_a_worker_without_tls_settings_exits(
    settings: Settings, tls_broker: TlsBroker, tmp_path: Path
) -> None:
    """Pointed at a TLS broker without TLS settings, the worker stops with an error."""
    plain = Settings(**{**settings.model_dump(), "kafka_bootstrap": tls_broker.bootstrap})
    workers = Workers(plain, tmp_path)
    try:
        proc = workers.start()

        async def exited() -> bool:
            return proc.poll() is not None

        await wait_until(exited, REFUSAL_SECONDS * 3, "the worker to give up", workers.logs)
    finally:
        workers.stop_all()
    assert proc.returncode != 0, workers.logs()
    assert "KafkaConnectionError" in workers.logs()


@pytest.mark.parametrize(
    "security",
    [
        # no SASL at all: the broker answers only the handshake
        PLAINTEXT,
        # SASL with a user the broker does not know
        KafkaSecurity("SASL_PLAINTEXT", "SCRAM-SHA-512", username="nobody", password="guess"),
        KafkaSecurity("SASL_PLAINTEXT", "SCRAM-SHA-256", username="nobody", password="guess"),
    ],
    ids=["no-sasl", "unknown-user-sha512", "unknown-user-sha256"],
)
async def test_a_sasl_broker_refuses_clients_it_cannot_authenticate(
    sasl_broker: str, security: KafkaSecurity
) -> None:
    producer = EventProducer(sasl_broker, security=security, request_timeout_ms=5000)
    # aiokafka 0.14 misreads SCRAM's error answer ("e=unknown-user") and raises KeyError;
    # either way the client stops at start instead of running unauthenticated
    with pytest.raises((KafkaError, KeyError)):
        await asyncio.wait_for(producer.start(), REFUSAL_SECONDS)
    await producer.stop()
