"""Delivering customer alerts to subscribers: signed webhooks, Slack and email.

Subscribers are listed in a YAML file (``notifications.yml``)::

    cooldown: 24h                 # default for every kind; numbers are seconds
    cooldowns: {milestone: 0}     # per-kind overrides
    retry: {attempts: 5, base_delay: 1, max_delay: 60}
    subscribers:
      - name: crm
        type: webhook
        url: https://crm.example.com/hooks/retention
        secret_env: CRM_WEBHOOK_SECRET
        kinds: [at_risk, churned]
      - name: success-team
        type: slack
        url: https://hooks.slack.com/services/T000/B000/XXX
      - name: account-managers
        type: email
        smtp_host: smtp.example.com
        smtp_port: 587
        tls: starttls             # or implicit (port 465), or none
        username: retention
        password_env: SMTP_PASSWORD
        from: retention@example.com
        to: [am@example.com]

Delivery is at least once. What was delivered, the cool-downs, the dead letters and the
counters are kept in Redis by :class:`store.deliveries.Deliveries` (the ``notify:`` keys
of :mod:`store.layout`).

A Redis that refuses the write after a successful send (full, failing over, gone) does not
make the alert go out again: the notifier keeps it as sent and retries only the write,
with a growing pause. A crash in between sends that alert again after the restart; webhook
receivers drop it by its ``Idempotency-Key``, email by its ``Message-ID`` (Slack's incoming
webhooks have no such key).

A subscriber with a ``digest`` schedule gets no message per alert: each alert it wants is
kept in Redis (and recorded, so a repeat is a duplicate), and at the schedule's time one
message lists them, most CLTV at risk first (:meth:`Notifier.send_digests`). The digest's
key is the subscriber and its due time, so a resend after a crash carries the same key.

Calls of :meth:`Notifier.deliver_to` for the same subscriber and customer must not
overlap: the service loop gives each subscriber one task that handles its alerts in turn,
and Kafka gives each customer's partition to one consumer.

Customer ids are free text from producers. Each channel renders them so that they stay
text: escaped for Slack's mrkdwn, control characters shown as escapes in email headers,
percent-encoded in the ``Idempotency-Key`` header, and JSON-encoded in webhook bodies.
"""

from __future__ import annotations

import asyncio
import json
import logging
import smtplib
import ssl
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from email.message import EmailMessage
from functools import partial
from types import TracebackType
from typing import Any

import aiohttp

from processors import webhook_signature
from processors.alerts import Alert
from processors.notify_config import (
    IDEMPOTENCY_HEADER,
    DeadReason,
    EmailSubscriber,
    NotifyConfig,
    Outcome,
    SlackSubscriber,
    Subscriber,
    WebhookSubscriber,
)
from processors.notify_messages import (
    BadAlert,
    Digest,
    classify_status,
    decode_alert,
    digest_email,
    digest_webhook_body,
    email_message,
    header_key,
    ranked,
    retry_delay,
    slack_digest,
    slack_message,
    webhook_body,
)
from store.deliveries import Deliveries

logger = logging.getLogger(__name__)


# --- configuration -------------------------------------------------------------------------


# --- pure pieces of delivery ---------------------------------------------------------------


class DeliveryError(Exception):
    def __init__(self, message: str, retryable: bool, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.retry_after = retry_after


def smtp_error(exc: BaseException) -> DeliveryError:
    """4xx SMTP replies and lost connections are transient; 5xx replies are not."""
    if isinstance(exc, smtplib.SMTPRecipientsRefused):
        codes = [code for code, _ in exc.recipients.values()]
        transient = bool(codes) and all(400 <= c < 500 for c in codes)
        return DeliveryError(f"recipients refused: {exc.recipients}", transient)
    if isinstance(exc, smtplib.SMTPResponseException):
        text = exc.smtp_error.decode(errors="replace") if isinstance(exc.smtp_error, bytes) else ""
        transient = 400 <= exc.smtp_code < 500 or exc.smtp_code < 0
        return DeliveryError(f"SMTP {exc.smtp_code} {text}".strip(), transient)
    if isinstance(exc, smtplib.SMTPServerDisconnected):
        return DeliveryError(f"SMTP server disconnected: {exc}", retryable=True)
    if isinstance(exc, smtplib.SMTPException):
        return DeliveryError(f"SMTP: {exc}", retryable=False)
    if isinstance(exc, ssl.SSLCertVerificationError):
        # the same certificate will not verify on the next attempt either
        return DeliveryError(f"TLS certificate not trusted: {exc}", retryable=False)
    if isinstance(exc, OSError):
        return DeliveryError(f"{type(exc).__name__}: {exc}", retryable=True)
    return DeliveryError(repr(exc), retryable=False)


def _retry_after(headers: Mapping[str, str]) -> float | None:
    value = headers.get("Retry-After", "")
    return float(value) if value.strip().isdigit() else None


def _smtp_connect(subscriber: EmailSubscriber, timeout: float) -> smtplib.SMTP:
    if subscriber.tls == "implicit":
        return smtplib.SMTP_SSL(
            subscriber.smtp_host,
            subscriber.smtp_port,
            timeout=timeout,
            context=subscriber.ssl_context(),
        )
    return smtplib.SMTP(subscriber.smtp_host, subscriber.smtp_port, timeout=timeout)


def _smtp_send(subscriber: EmailSubscriber, msg: EmailMessage, timeout: float) -> None:
    login = subscriber.username is not None and subscriber.password is not None
    if login and subscriber.tls == "none" and not subscriber.allow_insecure_login:
        # the config refuses this already; a config built in code must not slip through
        raise DeliveryError("refusing to log in without TLS", retryable=False)
    with _smtp_connect(subscriber, timeout) as smtp:
        if subscriber.tls == "starttls":
            # raises SMTPNotSupportedError when the server does not offer it: the
            # password is then never sent
            smtp.starttls(context=subscriber.ssl_context())
        if subscriber.username is not None and subscriber.password is not None:
            smtp.login(subscriber.username, subscriber.password.get_secret_value())
        # the envelope comes from the config, never from the message's headers
        refused = smtp.send_message(msg, from_addr=subscriber.sender, to_addrs=list(subscriber.to))
    if refused:
        # the others have it already; sending again would repeat it to them
        logger.warning(
            "some recipients refused",
            extra={"subscriber": subscriber.name, "refused": sorted(refused)},
        )


# --- the notifier --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Attempts:
    error: str | None
    count: int


def _utcnow() -> datetime:
    return datetime.now(UTC)


def _ms(ts: datetime) -> int:
    return int(ts.timestamp() * 1000)


class Notifier:
    """Send each alert to every subscriber that wants it, at most once per subscriber.

    Use as ``async with Notifier(config, Deliveries(redis, prefix)) as notifier``: it owns
    one HTTP session; ``state`` keeps what was delivered, and the dead letters.
    """

    def __init__(
        self,
        config: NotifyConfig,
        state: Deliveries,
        *,
        clock: Callable[[], datetime] = _utcnow,
    ) -> None:
        self.config = config
        self.state = state
        self.clock = clock
        self._session: aiohttp.ClientSession | None = None
        self._failures: dict[str, int] = {}
        self._open_until: dict[str, float] = {}
        #: (subscriber, alert key) → when it was sent, for alerts sent whose record Redis
        #: refused: tried again, only the record is retried, never the send
        self._unrecorded: dict[tuple[str, str], int] = {}

    async def start(self) -> None:
        if self._session is None:
            self._session = aiohttp.ClientSession()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def __aenter__(self) -> Notifier:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def deliver(self, alert: Alert) -> dict[str, Outcome]:
        """Per subscriber, concurrently: a slow or failing one does not hold up the rest.

        A failure to reach Redis is raised after every subscriber had its turn, so that
        the caller does not commit the alert; the subscribers that got it are recorded and
        will see it as a duplicate next time.
        """
        subscribers = self.config.subscribers
        results = await asyncio.gather(
            *(self._deliver_one(s, alert) for s in subscribers), return_exceptions=True
        )
        outcomes: dict[str, Outcome] = {}
        for subscriber, result in zip(subscribers, results, strict=True):
            if isinstance(result, BaseException):
                raise result
            outcomes[subscriber.name] = result
        return outcomes

    async def _deliver_one(self, subscriber: Subscriber, alert: Alert) -> Outcome:
        return await self.deliver_to(subscriber, alert)

    def breaker_open(self, subscriber: Subscriber) -> bool:
        """Whether the subscriber's recent alerts kept failing (see ``retry.breaker_after``)."""
        return time.monotonic() < self._open_until.get(subscriber.name, 0.0)

    async def deliver_to(self, subscriber: Subscriber, alert: Alert) -> Outcome:
        """One subscriber's turn: dedupe, cool-down, attempts, record or dead-letter.

        Failures of the subscriber end in the dead letters; a Redis error is raised, and
        the alert is then neither recorded nor dead-lettered for this subscriber."""
        if not subscriber.wants(alert):
            return "filtered"
        cooldown_ms = int(self.config.cooldown_for(alert.kind) * 1000)
        sent_ms = self._unrecorded.get((subscriber.name, alert.key))
        if sent_ms is not None:
            # sent already, and Redis refused to record it: record it, and send nothing
            await self._record_delivery(subscriber, alert, sent_ms, cooldown_ms)
            return "delivered"
        seen = await self.state.seen(subscriber.name, alert.kind, alert.customer_id, alert.key)
        if seen.delivered:
            await self.state.count(f"duplicate|{subscriber.type}")
            return "duplicate"
        if seen.last_at_ms is not None and _ms(alert.at) - seen.last_at_ms < cooldown_ms:
            await self.state.count(f"suppressed|{subscriber.type}")
            logger.info(
                "alert cooled down",
                extra={"subscriber": subscriber.name, "alert": alert.key},
            )
            return "cooled_down"
        if subscriber.digest is not None:
            await self.state.collect(subscriber.name, alert.key, alert.encode())
            await self._record_delivery(
                subscriber, alert, _ms(self.clock()), cooldown_ms, outcome="digested"
            )
            return "digested"
        attempts = await self._attempt(subscriber, alert)
        self._record(subscriber, failed=attempts.error is not None)
        if attempts.error is not None:
            await self._dead_letter(subscriber, alert, attempts)
            return "failed"
        sent_ms = _ms(self.clock())
        self._unrecorded[(subscriber.name, alert.key)] = sent_ms
        await self._record_delivery(subscriber, alert, sent_ms, cooldown_ms)
        return "delivered"

    async def _record_delivery(
        self,
        subscriber: Subscriber,
        alert: Alert,
        sent_ms: int,
        cooldown_ms: int,
        outcome: str = "sent",
    ) -> None:
        """Record a sent (or digested) alert; a Redis error is raised with the alert kept as
        sent, so the caller's retry records it without sending it again."""
        await self.state.record(
            subscriber.name,
            subscriber.type,
            alert.kind,
            alert.customer_id,
            alert.key,
            delivered_ms=sent_ms,
            alert_ms=_ms(alert.at),
            cooldown_ms=cooldown_ms,
            horizon_ms=self.config.dedupe_horizon * 1000,
            outcome=outcome,
        )
        self._unrecorded.pop((subscriber.name, alert.key), None)

    def _record(self, subscriber: Subscriber, failed: bool) -> None:
        """Count consecutive failed alerts; open the breaker at ``breaker_after``."""
        policy = self.config.retry
        if not failed:
            self._failures.pop(subscriber.name, None)
            self._open_until.pop(subscriber.name, None)
            return
        failures = self._failures.get(subscriber.name, 0) + 1
        self._failures[subscriber.name] = failures
        if failures >= policy.breaker_after:
            self._open_until[subscriber.name] = time.monotonic() + policy.breaker_cooloff
            logger.warning(
                "subscriber keeps failing: one attempt per alert for a while",
                extra={"subscriber": subscriber.name, "failed_alerts": failures},
            )

    def _allowed_attempts(self, subscriber: Subscriber) -> int:
        return 1 if self.breaker_open(subscriber) else self.config.retry.attempts

    async def send_digests(self) -> dict[str, Outcome]:
        """Send each digest subscriber the digest that has come due, if any: the alerts it
        kept since the last one, ranked. A subscriber seen for the first time starts from
        its latest due time, so its first digest comes at the next one. A digest that
        cannot be sent is tried again at the next call, with what arrived meanwhile."""
        outcomes: dict[str, Outcome] = {}
        now = self.clock()
        for subscriber in self.config.subscribers:
            if subscriber.digest is None:
                continue
            due = subscriber.digest.latest(now)
            due_ms = _ms(due)
            sent, kept = await self.state.digest(subscriber.name)
            if sent is not None and sent >= due_ms:
                continue
            alerts = []
            for key, raw in kept.items():
                try:
                    alerts.append(decode_alert(raw.encode() if isinstance(raw, str) else raw))
                except BadAlert as exc:
                    await self.internal_error(subscriber, None, exc)
                    logger.error("kept alert cannot be read", extra={"alert": key})
            if sent is None:
                # first sight: the digest starts here; what was kept waits for the next one
                await self.state.digest_sent(subscriber.name, due_ms, [])
                continue
            if not alerts:
                await self.state.digest_sent(subscriber.name, due_ms, list(kept))
                continue
            digest = Digest(subscriber.name, due, subscriber.digest.every, ranked(alerts))
            attempts = await self._attempt(subscriber, digest)
            self._record(subscriber, failed=attempts.error is not None)
            if attempts.error is not None:
                await self.state.count(f"digest_failed|{subscriber.type}")
                logger.error(
                    "digest not sent; trying again later",
                    extra={"subscriber": subscriber.name, "error": attempts.error},
                )
                outcomes[subscriber.name] = "failed"
                continue
            await self.state.digest_sent(subscriber.name, due_ms, list(kept))
            await self.state.count(f"sent|{subscriber.type}")
            logger.info(
                "digest sent",
                extra={"subscriber": subscriber.name, "alerts": len(alerts), "key": digest.key},
            )
            outcomes[subscriber.name] = "delivered"
        return outcomes

    async def _attempt(self, subscriber: Subscriber, alert: Alert | Digest) -> Attempts:
        policy = self.config.retry
        allowed = self._allowed_attempts(subscriber)
        for attempt in range(1, allowed + 1):
            try:
                await self._send(subscriber, alert)
                return Attempts(None, attempt)
            except DeliveryError as exc:
                error = exc
            except Exception as exc:
                # a message that cannot even be built will not build next time either
                logger.exception("cannot send", extra={"subscriber": subscriber.name})
                error = DeliveryError(repr(exc), retryable=False)
            if not error.retryable or attempt == allowed:
                return Attempts(str(error), attempt)
            delay = retry_delay(attempt, policy, error.retry_after)
            logger.warning(
                "delivery failed, retrying",
                extra={
                    "subscriber": subscriber.name,
                    "alert": alert.key,
                    "attempt": attempt,
                    "error": str(error),
                    "delay_seconds": delay,
                },
            )
            await asyncio.sleep(delay)
        raise AssertionError("unreachable: attempts >= 1")

    async def _dead_letter(self, subscriber: Subscriber, alert: Alert, attempts: Attempts) -> None:
        await self.push_dead_letter(
            "delivery_failed",
            {
                "subscriber": subscriber.name,
                "alert": alert.as_dict(),
                "error": attempts.error,
                "attempts": attempts.count,
            },
            counters=(f"failed|{subscriber.type}",),
        )
        logger.error(
            "alert dead-lettered",
            extra={"subscriber": subscriber.name, "alert": alert.key, "error": attempts.error},
        )

    async def push_dead_letter(
        self, reason: DeadReason, record: Mapping[str, Any], counters: tuple[str, ...] = ()
    ) -> None:
        """Append to the dead-letter list, keep its newest ``dead_letter_limit`` entries,
        and count what the trim dropped, so that the list stays bounded and no drop is
        silent."""
        entry = {
            "reason": reason,
            **record,
            "at": self.clock().astimezone(UTC).isoformat().replace("+00:00", "Z"),
        }
        await self.state.push_dead_letter(entry, self.config.dead_letter_limit, counters)

    async def internal_error(
        self, subscriber: Subscriber | None, alert: Alert | None, exc: BaseException
    ) -> None:
        """An exception nobody expected, while handling ``alert`` for ``subscriber``: logged,
        counted and dead-lettered, so that the alert is not lost and the service goes on."""
        logger.error(
            "unexpected error handling an alert",
            exc_info=exc,
            extra={
                "subscriber": subscriber.name if subscriber else None,
                "alert": alert.key if alert else None,
            },
        )
        counters = ("internal_error",) + ((f"failed|{subscriber.type}",) if subscriber else ())
        await self.push_dead_letter(
            "internal_error",
            {
                "subscriber": subscriber.name if subscriber else None,
                "alert": alert.as_dict() if alert else None,
                "error": f"{type(exc).__name__}: {exc}"[:1000],
                "attempts": 0,
            },
            counters=counters,
        )
        if subscriber and alert:  # dead-lettered: nothing left to record
            self._unrecorded.pop((subscriber.name, alert.key), None)

    async def _send(self, subscriber: Subscriber, alert: Alert | Digest) -> None:
        if isinstance(subscriber, WebhookSubscriber):
            body = (
                webhook_body(alert, subscriber.name)
                if isinstance(alert, Alert)
                else digest_webhook_body(alert, subscriber.name)
            )
            key = header_key(alert.key)
            # a fresh timestamp per attempt: a retry after minutes is not taken for a replay;
            # the key is signed with it, so a replay cannot pass for a new alert
            signed = webhook_signature.signature_headers(
                subscriber.secret.get_secret_value(),
                int(self.clock().timestamp()),
                body,
                key,
                subscriber.signature,
            )
            headers = {
                **subscriber.headers,
                "Content-Type": "application/json",
                **signed,
                IDEMPOTENCY_HEADER: key,
            }
            await self._post(subscriber.url, body, headers)
        elif isinstance(subscriber, SlackSubscriber):
            message = slack_message(alert) if isinstance(alert, Alert) else slack_digest(alert)
            body = json.dumps(message).encode()
            await self._post(subscriber.url, body, {"Content-Type": "application/json"})
        else:
            msg = (
                email_message(alert, subscriber, self.clock())
                if isinstance(alert, Alert)
                else digest_email(alert, subscriber, self.clock())
            )
            send = partial(_smtp_send, subscriber, msg, self.config.retry.timeout)
            try:
                await asyncio.get_running_loop().run_in_executor(None, send)
            except (smtplib.SMTPException, OSError) as exc:
                raise smtp_error(exc) from exc

    async def _post(self, url: str, body: bytes, headers: dict[str, str]) -> None:
        if self._session is None:
            raise RuntimeError("Notifier used outside `async with`")
        timeout = aiohttp.ClientTimeout(total=self.config.retry.timeout)
        try:
            async with self._session.post(
                url, data=body, headers=headers, timeout=timeout, allow_redirects=False
            ) as resp:
                text = await resp.text(errors="replace")
                verdict = classify_status(resp.status)
                retry_after = _retry_after(resp.headers)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise DeliveryError(f"{type(exc).__name__}: {exc}", retryable=True) from exc
        if verdict != "delivered":
            raise DeliveryError(
                f"HTTP {resp.status}: {text[:200]}", verdict == "retry", retry_after
            )
