"""Delivery to real local receivers: an aiohttp server (webhooks, Slack), an SMTP server
(aiosmtpd), Redis for the notifier's state, and Tansu for the service loop."""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
import subprocess
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiosmtpd.controller import Controller
from redis.asyncio import Redis

from processors.alerts import Alert
from processors.notify_config import NotifyConfig, NotifyConfigError, parse_config
from processors.webhook_signature import InvalidSignature, sign, verify_request
from retention.config import Settings
from retention.delivery import Notifier
from retention.dispatch import (
    COMMIT_INTERVAL_SECONDS,
    alerts_topic,
    ensure_alerts_topic,
    notifier_group,
    publish_alerts,
    run_notifier,
)
from store.deliveries import Deliveries
from tests.integration.conftest import wait_until
from tests.integration.receivers import SECRET, Inbox, Receiver, free_port

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
#: the local receivers speak plain HTTP on loopback, which a subscriber must allow by name
LOCAL = {"allow_http": True}


def make_alert(
    customer: str = "c-1", kind: str = "at_risk", at: datetime = T0, occasion: str = "o1"
) -> Alert:
    return Alert(
        kind=kind,  # type: ignore[arg-type]
        customer_id=customer,
        at=at,
        occasion=occasion,
        reasons=("silent_for_45_days", "csat_low"),
        risk_score=0.73,
        high_value=True,
        details={"orders": 7},
    )


def config(*subscribers: dict[str, Any], **options: Any) -> NotifyConfig:
    """Tiny delays: the retries are real, only quick."""
    retry = {"attempts": 3, "base_delay": 0.01, "max_delay": 0.05, "timeout": 5}
    return parse_config({"subscribers": list(subscribers), "retry": retry, **options}, {})


def webhook(receiver: Receiver, name: str, **extra: Any) -> dict[str, Any]:
    url = receiver.url("hook", name)
    return {"name": name, "type": "webhook", "url": url, "secret": SECRET, **LOCAL, **extra}


def mailbox(inbox: Inbox, name: str = "managers") -> dict[str, Any]:
    return {
        "name": name,
        "type": "email",
        "smtp_host": inbox.host,
        "smtp_port": inbox.port,
        "from": "retention@shop.example",
        "to": ["am@shop.example", "lead@shop.example"],
    }


async def test_signed_webhook_is_delivered_once_and_verifiable(
    receiver: Receiver, redis: Redis, settings: Settings
) -> None:
    cfg = config(webhook(receiver, "crm", headers={"X-Tenant": "shop-1"}))
    alert = make_alert()
    async with Notifier(cfg, Deliveries(redis, settings.key_prefix)) as notifier:
        assert await notifier.deliver(alert) == {"crm": "delivered"}
        # the same alert again, as after a redelivery: not sent twice
        assert await notifier.deliver(alert) == {"crm": "duplicate"}
    [req] = receiver.requests
    assert req.signature_ok
    assert req.headers["X-Retention-Signature"].startswith("v2=")
    assert req.headers["Idempotency-Key"] == alert.key == "at_risk:c-1:o1"
    assert req.headers["Content-Type"] == "application/json"
    assert req.headers["X-Tenant"] == "shop-1"
    assert abs(int(req.headers["X-Retention-Timestamp"]) - datetime.now(UTC).timestamp()) < 60
    assert req.json() == {**alert.as_dict(), "subscriber": "crm"}
    stats = await Deliveries(redis, settings.key_prefix).stats()
    assert stats == {"sent|webhook": 1, "duplicate|webhook": 1}


async def test_a_tampered_body_would_not_verify(
    receiver: Receiver, redis: Redis, settings: Settings
) -> None:
    """The receiver's check is real: a different secret fails it, and 401 is permanent."""
    cfg = config({**webhook(receiver, "crm"), "secret": "not-the-secret"})
    async with Notifier(cfg, Deliveries(redis, settings.key_prefix)) as notifier:
        assert await notifier.deliver(make_alert()) == {"crm": "failed"}
    [req] = receiver.requests
    assert req.signature_ok is False
    [dead] = await Deliveries(redis, settings.key_prefix).dead_letters()
    assert dead["error"].startswith("HTTP 401")


async def test_retries_after_500_then_success(
    receiver: Receiver, redis: Redis, settings: Settings
) -> None:
    receiver.fail["flaky"] = [500, 503]
    cfg = config(webhook(receiver, "flaky"))
    alert = make_alert()
    async with Notifier(cfg, Deliveries(redis, settings.key_prefix)) as notifier:
        assert await notifier.deliver(alert) == {"flaky": "delivered"}
    assert len(receiver.requests) == 3
    assert {r.headers["Idempotency-Key"] for r in receiver.requests} == {alert.key}
    assert all(r.signature_ok for r in receiver.requests)
    assert await Deliveries(redis, settings.key_prefix).stats() == {"sent|webhook": 1}
    assert await Deliveries(redis, settings.key_prefix).dead_letters() == []


async def test_retries_run_out_into_the_dead_letters(
    receiver: Receiver, redis: Redis, settings: Settings
) -> None:
    closed = f"http://127.0.0.1:{free_port()}/nobody-listens"
    receiver.fail["down"] = [503] * 10
    cfg = config(
        webhook(receiver, "down"),
        {"name": "gone", "type": "slack", "url": closed, **LOCAL},
    )
    alert = make_alert()
    async with Notifier(cfg, Deliveries(redis, settings.key_prefix)) as notifier:
        assert await notifier.deliver(alert) == {"down": "failed", "gone": "failed"}
    assert len(receiver.to("down")) == 3
    dead = {d["subscriber"]: d for d in await Deliveries(redis, settings.key_prefix).dead_letters()}
    assert dead["down"]["attempts"] == 3 and dead["down"]["error"].startswith("HTTP 503")
    assert dead["gone"]["attempts"] == 3 and "Connect" in dead["gone"]["error"]
    assert dead["down"]["alert"] == alert.as_dict()
    stats = await Deliveries(redis, settings.key_prefix).stats()
    assert stats == {"failed|webhook": 1, "failed|slack": 1}


async def test_permanent_400_is_dead_lettered_and_the_others_still_get_the_alert(
    receiver: Receiver, inbox: Inbox, redis: Redis, settings: Settings
) -> None:
    receiver.fail["strict"] = [400] * 10
    cfg = config(
        webhook(receiver, "strict"),
        webhook(receiver, "crm"),
        {"name": "team", "type": "slack", "url": receiver.url("slack", "team"), **LOCAL},
        mailbox(inbox),
    )
    alert = make_alert("c-9")
    async with Notifier(cfg, Deliveries(redis, settings.key_prefix)) as notifier:
        outcomes = await notifier.deliver(alert)
    assert outcomes == {
        "strict": "failed",
        "crm": "delivered",
        "team": "delivered",
        "managers": "delivered",
    }
    assert len(receiver.to("strict")) == 1  # no retry of a 400
    [dead] = await Deliveries(redis, settings.key_prefix).dead_letters()
    assert dead["subscriber"] == "strict"
    assert dead["alert"] == alert.as_dict()
    assert dead["error"] == "HTTP 400: planned failure"
    assert dead["attempts"] == 1
    assert datetime.fromisoformat(dead["at"]) > datetime.now(UTC) - timedelta(minutes=1)
    assert len(receiver.to("crm")) == 1 and len(inbox.received) == 1
    slack = receiver.to("team")[0].json()
    assert "c-9" in slack["text"] and "At risk" in slack["text"]
    assert "risk 73%" in slack["text"] and "high value" in slack["text"]
    assert "`silent_for_45_days`; `csat_low`" in slack["text"]
    assert slack["blocks"][0]["type"] == "header"
    stats = await Deliveries(redis, settings.key_prefix).stats()
    assert stats == {"failed|webhook": 1, "sent|webhook": 1, "sent|slack": 1, "sent|email": 1}


async def test_cooldown_suppresses_the_same_kind_for_the_same_customer(
    receiver: Receiver, redis: Redis, settings: Settings
) -> None:
    cfg = config(webhook(receiver, "crm"), cooldown="24h", cooldowns={"milestone": 0})
    async with Notifier(cfg, Deliveries(redis, settings.key_prefix)) as notifier:

        async def outcome(alert: Alert) -> str:
            return (await notifier.deliver(alert))["crm"]

        assert await outcome(make_alert("c-1", occasion="a")) == "delivered"
        # same customer, same kind, a new occasion one hour later
        assert await outcome(make_alert("c-1", at=T0 + timedelta(hours=1))) == "cooled_down"
        # another kind, another customer: not affected
        assert await outcome(make_alert("c-1", kind="churned")) == "delivered"
        assert await outcome(make_alert("c-2", occasion="b")) == "delivered"
        # after the cool-down the same kind goes out again
        assert await outcome(make_alert("c-1", at=T0 + timedelta(hours=25))) == "delivered"
        # kinds without a cool-down
        assert await outcome(make_alert("c-1", kind="milestone", occasion="10")) == "delivered"
        assert await outcome(make_alert("c-1", kind="milestone", occasion="20")) == "delivered"
    assert len(receiver.requests) == 6
    stats = await Deliveries(redis, settings.key_prefix).stats()
    assert stats == {"sent|webhook": 6, "suppressed|webhook": 1}


async def test_kind_filter_skips_subscribers_that_did_not_ask(
    receiver: Receiver, redis: Redis, settings: Settings
) -> None:
    cfg = config(webhook(receiver, "all"), webhook(receiver, "risk", kinds=["churned"]))
    async with Notifier(cfg, Deliveries(redis, settings.key_prefix)) as notifier:
        assert await notifier.deliver(make_alert()) == {"all": "delivered", "risk": "filtered"}
    assert [r.path for r in receiver.requests] == ["/hook/all"]


async def test_email_carries_customer_and_reasons(
    inbox: Inbox, redis: Redis, settings: Settings
) -> None:
    cfg = config(mailbox(inbox))
    alert = make_alert("cust-777")
    async with Notifier(cfg, Deliveries(redis, settings.key_prefix)) as notifier:
        assert await notifier.deliver(alert) == {"managers": "delivered"}
    [(sender, recipients, msg)] = inbox.received
    assert sender == "retention@shop.example"
    assert recipients == ["am@shop.example", "lead@shop.example"]
    assert "cust-777" in msg["Subject"] and "At risk" in msg["Subject"]
    body = msg.get_content()
    assert "cust-777" in body
    assert "silent_for_45_days" in body and "csat_low" in body
    assert "Risk score:      73%" in body
    assert msg["Idempotency-Key"] == alert.key
    assert await Deliveries(redis, settings.key_prefix).stats() == {"sent|email": 1}


async def test_smtp_server_down_is_retried_then_dead_lettered(
    redis: Redis, settings: Settings
) -> None:
    down = Inbox(port=free_port())  # nothing listens there
    cfg = config(mailbox(down))
    async with Notifier(cfg, Deliveries(redis, settings.key_prefix)) as notifier:
        assert await notifier.deliver(make_alert()) == {"managers": "failed"}
    [dead] = await Deliveries(redis, settings.key_prefix).dead_letters()
    assert dead["attempts"] == 3 and "ConnectionRefused" in dead["error"]
    assert await Deliveries(redis, settings.key_prefix).stats() == {"failed|email": 1}


async def _run_until(
    settings: Settings, path: Path, done: Callable[[], Awaitable[bool]], what: str
) -> None:
    """Run the service loop until ``done``, then stop it as a shutdown would."""
    stop = asyncio.Event()
    task = asyncio.create_task(run_notifier(settings, path, stop))
    try:
        await wait_until(done, 60, what)
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)


async def test_no_duplicate_delivery_across_a_notifier_restart(
    receiver: Receiver, redis: Redis, settings: Settings, tmp_path: Path
) -> None:
    assert settings.kafka_bootstrap
    path = tmp_path / "notifications.yml"
    path.write_text(
        yaml.safe_dump(
            {
                "cooldown": 0,
                "retry": {"attempts": 3, "base_delay": 0.01},
                "subscribers": [webhook(receiver, "crm")],
            }
        )
    )
    topic = alerts_topic(settings)
    first = [make_alert(f"c-{i}", occasion="first") for i in range(5)]
    second = [make_alert(f"c-{i}", occasion="second") for i in range(3)]
    prefix = settings.key_prefix

    async def stats() -> dict[str, int]:
        return await Deliveries(redis, prefix).stats()

    async def first_done() -> bool:
        return (await stats()).get("sent|webhook", 0) == 5

    await ensure_alerts_topic(settings.kafka_bootstrap, topic, settings.partitions)
    await publish_alerts(settings.kafka_bootstrap, topic, first)
    await _run_until(settings, path, first_done, "the first five alerts")

    # the same alerts again (a worker restarted), a bad message, and three new alerts
    await publish_alerts(settings.kafka_bootstrap, topic, first)
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap)
    await producer.start()
    try:
        await producer.send_and_wait(topic, b"{not json", key=b"c-0")
    finally:
        await producer.stop()
    await publish_alerts(settings.kafka_bootstrap, topic, second)

    async def second_done() -> bool:
        s = await stats()
        return s.get("sent|webhook", 0) >= 8 and s.get("duplicate|webhook", 0) >= 5 and "bad" in s

    await _run_until(settings, path, second_done, "the second run")
    keys = Counter(r.headers["Idempotency-Key"] for r in receiver.requests)
    assert keys == Counter({a.key: 1 for a in first + second})
    assert all(r.signature_ok for r in receiver.requests)
    # committed offsets: the first run's messages were not read again, so exactly the five
    # republished alerts count as duplicates, and the bad message once
    final = await stats()
    assert final == {"sent|webhook": 8, "duplicate|webhook": 5, "bad": 1}


async def test_a_dead_endpoint_gets_one_attempt_per_alert_after_repeated_failures(
    receiver: Receiver, redis: Redis, settings: Settings
) -> None:
    receiver.fail["down"] = [503] * 100
    cfg = config(webhook(receiver, "down"), webhook(receiver, "crm"))
    cfg = cfg.model_copy(update={"retry": cfg.retry.model_copy(update={"breaker_after": 2})})
    async with Notifier(cfg, Deliveries(redis, settings.key_prefix)) as notifier:
        for n in range(4):
            outcome = await notifier.deliver(make_alert(customer=f"c-{n}"))
            assert outcome == {"down": "failed", "crm": "delivered"}
        # two alerts with full retries (3 attempts each), then the breaker is open
        assert len(receiver.to("down")) == 3 + 3 + 1 + 1
        receiver.fail["down"] = []
        assert await notifier.deliver(make_alert(customer="c-9")) == {
            "down": "delivered",
            "crm": "delivered",
        }
    assert len(await Deliveries(redis, settings.key_prefix).dead_letters()) == 4  # none lost


# --- signatures, injection, dead-letter bound ---------------------------------------------


async def test_a_captured_request_replayed_later_or_altered_fails_verification(
    receiver: Receiver, redis: Redis, settings: Settings
) -> None:
    cfg = config(webhook(receiver, "crm"))
    async with Notifier(cfg, Deliveries(redis, settings.key_prefix)) as notifier:
        assert await notifier.deliver(make_alert()) == {"crm": "delivered"}
    [req] = receiver.requests
    assert req.signature_ok  # fresh: the receiver accepted it
    sent_at = int(req.headers["X-Retention-Timestamp"])
    key = req.headers["Idempotency-Key"]
    assert req.headers["X-Retention-Signature"] == sign(SECRET, sent_at, req.body, key)
    # the same bytes and headers, sent again ten minutes later
    with pytest.raises(InvalidSignature, match="beyond 300 s"):
        verify_request(SECRET, req.headers, req.body, now=sent_at + 600)
    # a new timestamp put on the captured request
    with pytest.raises(InvalidSignature, match="does not match"):
        verify_request(
            SECRET,
            {**req.headers, "X-Retention-Timestamp": str(sent_at + 600)},
            req.body,
            now=sent_at + 600,
        )
    # the same request under another key, to pass a receiver's duplicate check
    with pytest.raises(InvalidSignature, match="does not match"):
        verify_request(
            SECRET, {**req.headers, "Idempotency-Key": key + "-2"}, req.body, now=sent_at
        )
    # the body altered
    altered = req.body.replace(b'"at_risk"', b'"churned"')
    assert altered != req.body
    with pytest.raises(InvalidSignature, match="does not match"):
        verify_request(SECRET, req.headers, altered, now=sent_at)
    verify_request(SECRET, req.headers, req.body, now=sent_at + 1)


async def test_a_subscriber_set_to_v1_gets_the_older_signature(
    receiver: Receiver, redis: Redis, settings: Settings
) -> None:
    cfg = config(webhook(receiver, "old", signature="v1"))
    async with Notifier(cfg, Deliveries(redis, settings.key_prefix)) as notifier:
        # the test receiver takes v2 only, as receivers should once updated
        assert await notifier.deliver(make_alert()) == {"old": "failed"}
    [req] = receiver.requests
    assert req.headers["X-Retention-Signature"].startswith("v1=")
    sent_at = int(req.headers["X-Retention-Timestamp"])
    verify_request(SECRET, req.headers, req.body, now=sent_at, accept_v1=True)


async def test_ids_that_look_like_markup_or_headers_stay_text_on_every_channel(
    receiver: Receiver, inbox: Inbox, redis: Redis, settings: Settings
) -> None:
    cfg = config(
        webhook(receiver, "crm"),
        {"name": "team", "type": "slack", "url": receiver.url("slack", "team"), **LOCAL},
        mailbox(inbox),
    )
    mention, injected = "<!channel>", "c-1\r\nBcc: x@y.example"
    alerts = [make_alert(mention), make_alert(injected)]
    async with Notifier(cfg, Deliveries(redis, settings.key_prefix)) as notifier:
        for a in alerts:
            assert await notifier.deliver(a) == {
                "crm": "delivered",
                "team": "delivered",
                "managers": "delivered",
            }
        # none of it counts against the subscribers' breakers
        assert notifier._failures == {}
    assert await Deliveries(redis, settings.key_prefix).dead_letters() == []

    # Slack: escaped wherever mrkdwn is parsed, so neither a mention nor a link; the header
    # is plain_text, which Slack shows as it is
    slack = receiver.to("team")[0].json()
    assert "&lt;!channel&gt;" in slack["text"]
    header, *rest = slack["blocks"]
    assert header["text"] == {"type": "plain_text", "text": "At risk: customer <!channel>"}
    assert "<!channel>" not in json.dumps([slack["text"], rest])

    # webhook: the body carries the id as it is; the header is one encoded line
    hooks = {r.json()["customer_id"]: r for r in receiver.to("crm")}
    assert set(hooks) == {mention, injected}
    assert hooks[injected].json()["key"] == f"at_risk:{injected}:o1"
    assert hooks[injected].headers["Idempotency-Key"] == "at_risk:c-1%0D%0ABcc:%20x@y.example:o1"
    assert all(r.signature_ok for r in receiver.to("crm"))

    # email: both sent, to the configured recipients only, with no extra header
    assert len(inbox.received) == 2
    for sender, recipients, msg in inbox.received:
        assert sender == "retention@shop.example"
        assert recipients == ["am@shop.example", "lead@shop.example"]
        assert msg["Bcc"] is None
    _, _, msg = inbox.received[1]
    assert msg["Subject"] == "[retention] At risk: customer c-1\\r\\nBcc: x@y.example [high value]"
    head = inbox.raw[1].split(b"\r\n\r\n", 1)[0]
    assert not any(line.startswith(b"Bcc") for line in head.split(b"\r\n"))
    assert "Customer:        c-1\\r\\nBcc: x@y.example" in msg.get_content()


async def test_the_dead_letter_list_keeps_the_newest_entries_up_to_its_limit(
    receiver: Receiver, redis: Redis, settings: Settings
) -> None:
    receiver.fail["strict"] = [400] * 10
    cfg = config(webhook(receiver, "strict"), dead_letter_limit=3)
    async with Notifier(cfg, Deliveries(redis, settings.key_prefix)) as notifier:
        for n in range(5):
            assert await notifier.deliver(make_alert(f"c-{n}")) == {"strict": "failed"}
    dead = await Deliveries(redis, settings.key_prefix).dead_letters()
    assert [d["alert"]["customer_id"] for d in dead] == ["c-2", "c-3", "c-4"]
    assert {d["reason"] for d in dead} == {"delivery_failed"}
    stats = await Deliveries(redis, settings.key_prefix).stats()
    # every failure counted, and what the trim dropped as well
    assert stats == {"failed|webhook": 5, "dead_trimmed": 2}


# --- SMTP over TLS ------------------------------------------------------------------------


@dataclass(frozen=True)
class Tls:
    cert: Path
    key: Path

    def server_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(self.cert, self.key)
        return ctx


@pytest.fixture(scope="session")
def tls(tmp_path_factory: pytest.TempPathFactory) -> Tls:
    """A self-signed certificate for 127.0.0.1, made by the openssl command."""
    where = tmp_path_factory.mktemp("tls")
    cert, key = where / "cert.pem", where / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            str(key),
            "-out",
            str(cert),
            "-days",
            "2",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
        ],
        check=True,
        capture_output=True,
    )
    return Tls(cert, key)


@contextmanager
def smtp_server(box: Inbox, **kwargs: Any) -> Iterator[Inbox]:
    box.port = free_port()
    controller = Controller(
        box, hostname=box.host, port=box.port, authenticator=box.authenticate, **kwargs
    )
    controller.start()
    try:
        yield box
    finally:
        controller.stop()


def login_mailbox(box: Inbox, **extra: Any) -> dict[str, Any]:
    return {**mailbox(box), "username": "retention", "password_env": "SMTP_PW", **extra}


def mail_config(*subscribers: dict[str, Any]) -> NotifyConfig:
    retry = {"attempts": 2, "base_delay": 0.01, "timeout": 5}
    return parse_config({"subscribers": list(subscribers), "retry": retry}, {"SMTP_PW": "pw-123"})


async def test_starttls_login_sends_the_password_only_over_tls(
    tls: Tls, redis: Redis, settings: Settings
) -> None:
    with smtp_server(Inbox(), tls_context=tls.server_context(), require_starttls=True) as box:
        cfg = mail_config(login_mailbox(box, tls="starttls", ca_file=str(tls.cert)))
        async with Notifier(cfg, Deliveries(redis, settings.key_prefix)) as notifier:
            assert await notifier.deliver(make_alert()) == {"managers": "delivered"}
    assert box.logins == [("retention", "pw-123", True)]
    assert len(box.received) == 1


async def test_implicit_tls_on_its_own_port(tls: Tls, redis: Redis, settings: Settings) -> None:
    # the whole session is TLS; aiosmtpd's own check only knows STARTTLS, hence the flag
    with smtp_server(Inbox(), ssl_context=tls.server_context(), auth_require_tls=False) as box:
        cfg = mail_config(login_mailbox(box, tls="implicit", ca_file=str(tls.cert)))
        async with Notifier(cfg, Deliveries(redis, settings.key_prefix)) as notifier:
            assert await notifier.deliver(make_alert()) == {"managers": "delivered"}
    assert box.logins == [("retention", "pw-123", True)]
    assert len(box.received) == 1


async def test_an_untrusted_certificate_fails_without_sending_the_password(
    tls: Tls, redis: Redis, settings: Settings
) -> None:
    with smtp_server(Inbox(), tls_context=tls.server_context()) as box:
        cfg = mail_config(login_mailbox(box, tls="starttls"))  # system CAs only
        async with Notifier(cfg, Deliveries(redis, settings.key_prefix)) as notifier:
            assert await notifier.deliver(make_alert()) == {"managers": "failed"}
    assert box.logins == [] and box.received == []
    [dead] = await Deliveries(redis, settings.key_prefix).dead_letters()
    assert "certificate" in dead["error"] and dead["attempts"] == 1  # not worth retrying


async def test_a_server_without_starttls_never_sees_the_password(
    redis: Redis, settings: Settings
) -> None:
    with smtp_server(Inbox(), auth_require_tls=False) as box:
        cfg = mail_config(login_mailbox(box, tls="starttls"))
        async with Notifier(cfg, Deliveries(redis, settings.key_prefix)) as notifier:
            assert await notifier.deliver(make_alert()) == {"managers": "failed"}
    assert box.logins == [] and box.received == []
    [dead] = await Deliveries(redis, settings.key_prefix).dead_letters()
    assert "STARTTLS" in dead["error"]


async def test_clear_text_login_only_when_allowed_by_name(redis: Redis, settings: Settings) -> None:
    with smtp_server(Inbox(), auth_require_tls=False) as box:
        with pytest.raises(NotifyConfigError, match="clear text"):
            mail_config(login_mailbox(box))
        cfg = mail_config(login_mailbox(box, allow_insecure_login=True))
        async with Notifier(cfg, Deliveries(redis, settings.key_prefix)) as notifier:
            assert await notifier.deliver(make_alert()) == {"managers": "delivered"}
        # a config built in code, past validation, is refused at send time
        [allowed] = cfg.subscribers
        unsafe = cfg.model_copy(
            update={"subscribers": (allowed.model_copy(update={"allow_insecure_login": False}),)}
        )
        async with Notifier(unsafe, Deliveries(redis, settings.key_prefix + "x:")) as notifier:
            assert await notifier.deliver(make_alert()) == {"managers": "failed"}
    assert box.logins == [("retention", "pw-123", False)]
    assert len(box.received) == 1


# --- the service loop under faults --------------------------------------------------------


@asynccontextmanager
async def running(settings: Settings, path: Path) -> AsyncIterator[asyncio.Task[None]]:
    """The service loop, as ``retention notify`` runs it, stopped as a shutdown would."""
    stop = asyncio.Event()
    task = asyncio.create_task(run_notifier(settings, path, stop))
    try:
        yield task
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)


def write_config(tmp_path: Path, *subscribers: dict[str, Any], **options: Any) -> Path:
    path = tmp_path / "notifications.yml"
    data = {"cooldown": 0, "retry": {"attempts": 3, "base_delay": 0.01}, **options}
    path.write_text(yaml.safe_dump({**data, "subscribers": list(subscribers)}))
    return path


@pytest.fixture
async def black_hole() -> AsyncIterator[tuple[str, list[asyncio.StreamWriter]]]:
    """An endpoint that accepts the connection, reads the request and never answers."""
    connections: list[asyncio.StreamWriter] = []

    async def swallow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(writer)
        with contextlib.suppress(ConnectionError):
            await reader.read()  # until the client gives up and closes
        writer.close()

    server = await asyncio.start_server(swallow, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    yield f"http://127.0.0.1:{port}/hook", connections
    server.close()
    for writer in connections:
        writer.close()
    await server.wait_closed()


async def test_a_black_holed_webhook_slows_only_itself(
    receiver: Receiver,
    black_hole: tuple[str, list[asyncio.StreamWriter]],
    redis: Redis,
    settings: Settings,
    tmp_path: Path,
) -> None:
    assert settings.kafka_bootstrap
    url, connections = black_hole
    void = {"name": "void", "type": "webhook", "url": url, "secret": SECRET, **LOCAL}
    path = write_config(
        tmp_path,
        void,
        webhook(receiver, "crm"),
        retry={"attempts": 3, "base_delay": 0.1, "timeout": 2},
    )
    n = 40
    alerts = [make_alert(f"c-{i}") for i in range(n)]
    topic = alerts_topic(settings)
    await ensure_alerts_topic(settings.kafka_bootstrap, topic, settings.partitions)
    async with running(settings, path):
        started = time.monotonic()
        await publish_alerts(settings.kafka_bootstrap, topic, alerts)

        async def healthy_has_all() -> bool:
            return len(receiver.to("crm")) >= n

        await wait_until(healthy_has_all, 30, f"{n} alerts at the healthy webhook")
        elapsed = time.monotonic() - started
    # alone, the black hole would take n alerts x 3 attempts x 2 s; it held up only itself
    assert elapsed < 15, f"the healthy webhook took {elapsed:.1f} s for {n} alerts"
    assert Counter(r.headers["Idempotency-Key"] for r in receiver.to("crm")) == Counter(
        {a.key: 1 for a in alerts}
    )
    assert 1 <= len(connections) <= 6, "the black hole got at most two alerts' attempts"


async def _send_raw(
    bootstrap: str, topic: str, values: list[bytes | None], key: bytes
) -> list[int]:
    """Messages straight onto the topic, no alert API in the way; their offsets."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    try:
        return [(await producer.send_and_wait(topic, value, key=key)).offset for value in values]
    finally:
        await producer.stop()


async def test_undecodable_alerts_are_dead_lettered_and_committed(
    receiver: Receiver, redis: Redis, settings: Settings, tmp_path: Path
) -> None:
    assert settings.kafka_bootstrap
    path = write_config(tmp_path, webhook(receiver, "crm"))
    topic = alerts_topic(settings)
    await ensure_alerts_topic(settings.kafka_bootstrap, topic, settings.partitions)
    first, last = make_alert("c-1", occasion="before"), make_alert("c-1", occasion="after")
    bad: list[bytes | None] = [
        b"{not json",
        b"\xff\xfe\x00",
        None,  # a tombstone
        # valid JSON and ISO 8601, but past year 9999 in UTC: OverflowError in decoding
        first.encode().replace(b"2026-03-01T12:00:00Z", b"9999-12-31T23:30:00-01:00"),
        b"[" * 50_000 + b"]" * 50_000,  # deeper than the JSON parser goes
        first.encode().replace(b'"risk_score": 0.73', b'"risk_score": "high"'),
    ]
    # all on the customer's partition, between two good alerts
    offsets = await _send_raw(
        settings.kafka_bootstrap, topic, [first.encode(), *bad, last.encode()], key=b"c-1"
    )
    async with running(settings, path):

        async def both_delivered() -> bool:
            return len(receiver.to("crm")) == 2

        await wait_until(both_delivered, 30, "the alert after the bad ones")
        await asyncio.sleep(3 * COMMIT_INTERVAL_SECONDS)
    assert [r.json()["occasion"] for r in receiver.requests] == ["before", "after"]
    dead = await Deliveries(redis, settings.key_prefix).dead_letters()
    assert [d["offset"] for d in dead] == offsets[1:-1]
    assert {d["reason"] for d in dead} == {"undecodable"}
    assert dead[0]["value"] == "{not json" and "JSONDecodeError" in dead[0]["error"]
    assert dead[1]["value_base64"] == "//4A"
    assert "OverflowError" in dead[3]["error"] and "RecursionError" in dead[4]["error"]
    assert "risk_score" in dead[5]["error"]
    assert (await Deliveries(redis, settings.key_prefix).stats())["bad"] == len(bad)
    # the partition's committed position is past the last alert: nothing blocks it
    [partition] = {d["partition"] for d in dead}
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap, group_id=notifier_group(settings)
    )
    await consumer.start()
    try:
        committed = await consumer.committed(TopicPartition(topic, partition))
    finally:
        await consumer.stop()
    assert committed == offsets[-1] + 1


async def test_an_error_for_one_subscriber_is_dead_lettered_and_its_lane_goes_on(
    receiver: Receiver, redis: Redis, settings: Settings, tmp_path: Path
) -> None:
    assert settings.kafka_bootstrap
    prefix = settings.key_prefix
    # a key of the wrong type: every Redis call on it fails for subscriber "a"
    await redis.set(Deliveries(redis, prefix).delivered_key("a"), "not a sorted set")
    path = write_config(tmp_path, webhook(receiver, "a"), webhook(receiver, "b"))
    topic = alerts_topic(settings)
    await ensure_alerts_topic(settings.kafka_bootstrap, topic, settings.partitions)
    broken = [make_alert(f"c-{i}", occasion="broken") for i in range(3)]
    fixed = [make_alert(f"c-{i}", occasion="fixed") for i in range(2)]
    async with running(settings, path) as task:
        await publish_alerts(settings.kafka_bootstrap, topic, broken)

        async def b_has(count: int) -> Callable[[], Awaitable[bool]]:
            async def check() -> bool:
                stats = await Deliveries(redis, prefix).stats()
                return len(receiver.to("b")) == count and stats.get("internal_error", 0) == 3

            return check

        await wait_until(await b_has(3), 30, "b's alerts and a's errors")
        await redis.delete(Deliveries(redis, prefix).delivered_key("a"))
        await publish_alerts(settings.kafka_bootstrap, topic, fixed)

        async def a_resumed() -> bool:
            return len(receiver.to("a")) == 2 and len(receiver.to("b")) == 5

        await wait_until(a_resumed, 30, "a's lane to go on")
        assert not task.done()
    dead = await Deliveries(redis, prefix).dead_letters()
    assert [(d["reason"], d["subscriber"]) for d in dead] == [("internal_error", "a")] * 3
    assert all("WRONGTYPE" in d["error"] for d in dead)
    assert sorted(d["alert"]["key"] for d in dead) == sorted(a.key for a in broken)
    assert {r.json()["occasion"] for r in receiver.to("a")} == {"fixed"}
    stats = await Deliveries(redis, prefix).stats()
    assert stats == {"internal_error": 3, "failed|webhook": 3, "sent|webhook": 7}


async def test_a_failing_subscriber_with_a_full_queue_sends_its_overflow_to_the_dead_letters(
    receiver: Receiver,
    black_hole: tuple[str, list[asyncio.StreamWriter]],
    redis: Redis,
    settings: Settings,
    tmp_path: Path,
) -> None:
    assert settings.kafka_bootstrap
    url, _ = black_hole
    path = write_config(
        tmp_path,
        {"name": "void", "type": "webhook", "url": url, "secret": SECRET, **LOCAL},
        webhook(receiver, "crm"),
        retry={"attempts": 1, "timeout": 1, "breaker_after": 1, "breaker_cooloff": 60},
        queue_limit=2,
    )
    alerts = [make_alert(f"c-{i}") for i in range(12)]
    topic = alerts_topic(settings)
    await ensure_alerts_topic(settings.kafka_bootstrap, topic, settings.partitions)
    async with running(settings, path):
        await publish_alerts(settings.kafka_bootstrap, topic, alerts)

        async def crm_has_all() -> bool:
            return len(receiver.to("crm")) == len(alerts)

        await wait_until(crm_has_all, 20, "every alert at the healthy subscriber")
    dead = await Deliveries(redis, settings.key_prefix).dead_letters()
    reasons = Counter(d["reason"] for d in dead)
    # the first alert timed out and opened the breaker; then at most two waited in the
    # queue, and the rest went straight to the dead letters
    assert reasons["delivery_failed"] >= 1 and reasons["backlog"] >= 6, reasons
    assert {d["subscriber"] for d in dead} == {"void"}
    backlog = [d for d in dead if d["reason"] == "backlog"]
    assert all("keeps failing" in d["error"] for d in backlog)


async def test_a_redis_that_refuses_writes_never_makes_an_alert_go_out_again(
    receiver: Receiver, redis: Redis, settings: Settings, tmp_path: Path
) -> None:
    """Redis full (it refuses writes, reads still work): the alert is sent, its record is
    refused, and the lane retries the record alone, with growing pauses, until Redis
    takes it. The subscriber gets the alert once."""
    assert settings.kafka_bootstrap
    path = write_config(tmp_path, webhook(receiver, "a"))
    topic = alerts_topic(settings)
    await ensure_alerts_topic(settings.kafka_bootstrap, topic, settings.partitions)
    deliveries = Deliveries(redis, settings.key_prefix)
    async with running(settings, path) as task:

        async def started() -> bool:  # the notifier's first write is behind it
            return bool(await redis.exists(deliveries.key("format")))

        await wait_until(started, 30, "the notifier to start")
        await redis.config_set("maxmemory", 1)
        try:
            await publish_alerts(settings.kafka_bootstrap, topic, [make_alert("full-1")])

            async def sent() -> bool:
                return len(receiver.to("a")) >= 1

            await wait_until(sent, 30, "the alert to be sent")
            await asyncio.sleep(3.5)  # the record refused at 0, 1 and 3 s
            assert len(receiver.to("a")) == 1
        finally:
            await redis.config_set("maxmemory", 0)

        async def recorded() -> bool:
            return (await deliveries.stats()).get("sent|webhook") == 1

        await wait_until(recorded, 30, "the delivery to be recorded")
        assert not task.done()
    assert len(receiver.to("a")) == 1
