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
        starttls: true
        username: retention
        password_env: SMTP_PASSWORD
        from: retention@example.com
        to: [am@example.com]

Delivery is at least once. State in Redis, under the key prefix ``P``:

- ``P notify:delivered:<subscriber>``  sorted set, alert key → delivery time (ms); an alert
  found there is a duplicate (a redelivery after a restart, or the tracker raising it twice)
- ``P notify:last:<subscriber>:<kind>:<customer>``  the ``at`` (ms) of the last alert of that
  kind delivered for that customer; it expires with the cool-down
- ``P notify:dead``   list of JSON dead letters ``{subscriber, alert, error, attempts, at}``
- ``P notify:stats``  hash of counters ``sent|<channel>``, ``failed|<channel>``,
  ``suppressed|<channel>``, ``duplicate|<channel>`` (and ``bad`` from the service loop)

A crash between a successful send and the Redis write sends that alert again after the
restart; webhook receivers drop it by its ``Idempotency-Key``, email by its ``Message-ID``.
Calls of :meth:`Notifier.deliver` for the same customer must not overlap: the service loop
handles one alert at a time, and Kafka gives each customer's partition to one consumer.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
import os
import re
import smtplib
import ssl
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import format_datetime
from functools import partial
from pathlib import Path
from types import TracebackType
from typing import Annotated, Any, Literal

import aiohttp
import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from redis.asyncio import Redis

from processors.alerts import Alert, AlertKind

logger = logging.getLogger(__name__)

Channel = Literal["webhook", "slack", "email"]
Outcome = Literal["delivered", "duplicate", "cooled_down", "filtered", "failed"]
Verdict = Literal["delivered", "retry", "permanent"]

SIGNATURE_HEADER = "X-Retention-Signature"
TIMESTAMP_HEADER = "X-Retention-Timestamp"
IDEMPOTENCY_HEADER = "Idempotency-Key"
_RESERVED_HEADERS = frozenset(
    h.lower() for h in ("Content-Type", SIGNATURE_HEADER, TIMESTAMP_HEADER, IDEMPOTENCY_HEADER)
)
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$")
_UNIT_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
_TITLES: dict[str, str] = {
    "at_risk": "At risk",
    "churned": "Churned",
    "reactivated": "Reactivated",
    "winback_due": "Win-back due",
    "cold_customer": "Cold customer",
    "post_purchase_followup": "Post-purchase follow-up",
    "milestone": "Milestone",
}


class NotifyConfigError(ValueError):
    """The notifications file cannot be used; the message names the file and the field."""


# --- configuration -------------------------------------------------------------------------


def parse_duration(value: object) -> float:
    """Seconds from a number or a string such as ``90``, ``30m``, ``24h`` or ``7d``."""
    if isinstance(value, bool):
        raise ValueError("a duration is a number of seconds or a string such as 24h")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str) and (match := _DURATION.match(value)):
        seconds = float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    else:
        raise ValueError(f"{value!r} is not a duration such as 3600, 30m, 24h or 7d")
    if seconds < 0:
        raise ValueError("a duration cannot be negative")
    return seconds


def _env(info: ValidationInfo) -> Mapping[str, str]:
    context = info.context if isinstance(info.context, Mapping) else {}
    environ = context.get("environ")
    return environ if isinstance(environ, Mapping) else os.environ


def _from_env(data: Any, env_field: str, target: str, info: ValidationInfo) -> Any:
    """Replace ``<env_field>: VAR`` by ``<target>: $VAR`` so secrets stay out of the file."""
    if not isinstance(data, Mapping) or env_field not in data:
        return data
    if data.get(target) is not None:
        raise ValueError(f"give either {target} or {env_field}, not both")
    variable = data[env_field]
    if not isinstance(variable, str) or not variable:
        raise ValueError(f"{env_field} must name an environment variable")
    value = _env(info).get(variable)
    if not value:
        raise ValueError(f"{env_field}: environment variable {variable} is not set or empty")
    return {**{k: v for k, v in data.items() if k != env_field}, target: value}


class _Subscriber(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", max_length=64)
    #: the alert kinds this subscriber wants; None means all
    kinds: frozenset[AlertKind] | None = None

    @field_validator("kinds")
    @classmethod
    def _some_kinds(cls, value: frozenset[AlertKind] | None) -> frozenset[AlertKind] | None:
        if value is not None and not value:
            raise ValueError("an empty kinds list would receive nothing; omit it for all kinds")
        return value

    def wants(self, alert: Alert) -> bool:
        return self.kinds is None or alert.kind in self.kinds


def _http_url(value: str) -> str:
    if not re.match(r"^https?://[^/\s]+", value):
        raise ValueError(f"{value!r} is not an http(s) URL")
    return value


def _address(value: str) -> str:
    if not re.match(r"^[^@\s<>]+@[^@\s<>]+$", value):
        raise ValueError(f"{value!r} is not an email address")
    return value


HttpUrl = Annotated[str, AfterValidator(_http_url)]
EmailAddress = Annotated[str, AfterValidator(_address)]


class WebhookSubscriber(_Subscriber):
    type: Literal["webhook"]
    url: HttpUrl
    #: HMAC-SHA256 key of the ``X-Retention-Signature`` header
    secret: SecretStr
    headers: dict[str, str] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _secret_env(cls, data: Any, info: ValidationInfo) -> Any:
        if isinstance(data, Mapping) and "secret" not in data and "secret_env" not in data:
            raise ValueError("a webhook is signed: give secret_env: VARIABLE (or secret)")
        return _from_env(data, "secret_env", "secret", info)

    @field_validator("secret")
    @classmethod
    def _nonempty(cls, value: SecretStr) -> SecretStr:
        if not value.get_secret_value():
            raise ValueError("the secret is empty")
        return value

    @field_validator("headers")
    @classmethod
    def _own_headers(cls, value: dict[str, str]) -> dict[str, str]:
        clash = sorted(h for h in value if h.lower() in _RESERVED_HEADERS)
        if clash:
            raise ValueError(f"headers {clash} are set by the notifier")
        return value


class SlackSubscriber(_Subscriber):
    type: Literal["slack"]
    url: HttpUrl


class EmailSubscriber(_Subscriber):
    type: Literal["email"]
    smtp_host: str = Field(min_length=1)
    smtp_port: int = Field(default=25, ge=1, le=65535)
    sender: EmailAddress = Field(alias="from")
    to: tuple[EmailAddress, ...] = Field(min_length=1)
    username: str | None = None
    password: SecretStr | None = None
    starttls: bool = False

    @model_validator(mode="before")
    @classmethod
    def _password_env(cls, data: Any, info: ValidationInfo) -> Any:
        if isinstance(data, Mapping) and "password" in data and "password_env" not in data:
            raise ValueError("give the SMTP password as password_env: VARIABLE")
        return _from_env(data, "password_env", "password", info)

    @model_validator(mode="after")
    def _login_pair(self) -> EmailSubscriber:
        if (self.username is None) != (self.password is None):
            raise ValueError("username and password_env go together")
        return self


Subscriber = Annotated[
    WebhookSubscriber | SlackSubscriber | EmailSubscriber, Field(discriminator="type")
]
Duration = Annotated[float, Field(ge=0)]


class RetryPolicy(BaseModel):
    """Exponential backoff: attempt n waits ``base_delay * 2**(n-1)``, capped."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    attempts: int = Field(default=5, ge=1, le=20)
    base_delay: Duration = 1.0
    max_delay: Duration = 60.0
    #: per attempt, for HTTP and SMTP alike
    timeout: Duration = 10.0
    #: after this many alerts in a row end in dead letters, a subscriber gets a single
    #: attempt per alert for ``breaker_cooloff``: a dead endpoint must not hold up the
    #: stream of alerts for everyone with a full round of retries per alert
    breaker_after: int = Field(default=3, ge=1)
    breaker_cooloff: Duration = 60.0

    @field_validator("base_delay", "max_delay", "timeout", "breaker_cooloff", mode="before")
    @classmethod
    def _duration(cls, value: object) -> float:
        return parse_duration(value)


class NotifyConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    subscribers: tuple[Subscriber, ...]
    cooldown: Duration = 86400.0
    cooldowns: dict[AlertKind, Duration] = Field(default_factory=dict)
    retry: RetryPolicy = RetryPolicy()
    #: how long delivered alert keys are remembered
    dedupe_horizon: Duration = 30 * 86400.0

    @field_validator("cooldown", "dedupe_horizon", mode="before")
    @classmethod
    def _duration(cls, value: object) -> float:
        return parse_duration(value)

    @field_validator("cooldowns", mode="before")
    @classmethod
    def _durations(cls, value: object) -> object:
        if isinstance(value, Mapping):
            return {k: parse_duration(v) for k, v in value.items()}
        return value

    @field_validator("subscribers")
    @classmethod
    def _unique_names(cls, value: tuple[Subscriber, ...]) -> tuple[Subscriber, ...]:
        if not value:
            raise ValueError("no subscribers: list at least one")
        names = [s.name for s in value]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(f"subscriber names must be unique; repeated: {repeated}")
        return value

    def cooldown_for(self, kind: AlertKind) -> float:
        return self.cooldowns.get(kind, self.cooldown)


def _format_errors(exc: ValidationError) -> str:
    lines = []
    for err in exc.errors(include_url=False):
        where = ".".join(str(p) for p in err["loc"]) or "(top level)"
        lines.append(f"  {where}: {err['msg'].removeprefix('Value error, ')}")
    return "\n".join(lines)


def parse_config(
    data: object, environ: Mapping[str, str] | None = None, source: str = "config"
) -> NotifyConfig:
    """Validate parsed YAML: a mapping with ``subscribers``, or just the list of them."""
    if isinstance(data, list):
        data = {"subscribers": data}
    if not isinstance(data, Mapping):
        raise NotifyConfigError(f"{source}: expected a mapping with a subscribers list")
    context = {"environ": os.environ if environ is None else environ}
    try:
        return NotifyConfig.model_validate(data, context=context)
    except ValidationError as exc:
        message = f"{source}: invalid notifications config\n{_format_errors(exc)}"
        raise NotifyConfigError(message) from None


def load_config(path: Path, environ: Mapping[str, str] | None = None) -> NotifyConfig:
    """Read ``notifications.yml``; secrets named by ``*_env`` come from ``environ``."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise NotifyConfigError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise NotifyConfigError(f"{path}: not valid YAML: {exc}") from exc
    return parse_config(data, environ, str(path))


# --- pure pieces of delivery ---------------------------------------------------------------


def sign(body: bytes, secret: str | bytes) -> str:
    """``sha256=<hex>``: HMAC-SHA256 of the exact body bytes, as GitHub and Stripe sign."""
    key = secret.encode() if isinstance(secret, str) else secret
    return "sha256=" + hmac.new(key, body, hashlib.sha256).hexdigest()


def verify(body: bytes, secret: str | bytes, signature: str) -> bool:
    """What a receiver does: compare in constant time."""
    return hmac.compare_digest(sign(body, secret), signature)


def webhook_body(alert: Alert, subscriber: str) -> bytes:
    return json.dumps(
        {**alert.as_dict(), "subscriber": subscriber}, sort_keys=True, separators=(",", ":")
    ).encode()


def classify_status(status: int) -> Verdict:
    """2xx delivered; 408, 429 and 5xx are worth retrying; anything else will not change."""
    if 200 <= status < 300:
        return "delivered"
    if status in (408, 429) or status >= 500:
        return "retry"
    return "permanent"


def retry_delay(attempt: int, policy: RetryPolicy, retry_after: float | None = None) -> float:
    """Wait after failed attempt ``attempt`` (1-based); a server's Retry-After is honoured
    up to ``max_delay``."""
    backoff: float = policy.base_delay * 2.0 ** (attempt - 1)
    return min(policy.max_delay, max(backoff, retry_after or 0.0))


def title(alert: Alert) -> str:
    return _TITLES.get(alert.kind, alert.kind.replace("_", " ").capitalize())


def _risk(alert: Alert) -> str:
    return "-" if alert.risk_score is None else f"{alert.risk_score:.2f}"


def summary(alert: Alert) -> str:
    """One line: kind, customer, risk score, high value, reasons."""
    facts = [f"risk {_risk(alert)}"] + (["high value"] if alert.high_value else [])
    reasons = "; ".join(alert.reasons) or "no reasons given"
    return f"{title(alert)}: customer {alert.customer_id} ({', '.join(facts)}) - {reasons}"


def _mrkdwn(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def slack_message(alert: Alert) -> dict[str, Any]:
    """An incoming-webhook payload: ``text`` for notifications, ``blocks`` for the channel."""
    reasons = "\n".join(f"• {_mrkdwn(r)}" for r in alert.reasons) or "_no reasons given_"
    fields = {
        "Customer": f"`{_mrkdwn(alert.customer_id)}`",
        "Kind": alert.kind,
        "Risk score": _risk(alert),
        "High value": "yes" if alert.high_value else "no",
    }
    at = alert.at.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")
    return {
        "text": summary(alert),
        "blocks": [
            {"type": "header", "text": {"type": "plain_text", "text": summary_head(alert)}},
            {
                "type": "section",
                "fields": [{"type": "mrkdwn", "text": f"*{k}*\n{v}"} for k, v in fields.items()],
            },
            {"type": "section", "text": {"type": "mrkdwn", "text": f"*Reasons*\n{reasons}"}},
            {
                "type": "context",
                "elements": [{"type": "mrkdwn", "text": f"{at} · key `{_mrkdwn(alert.key)}`"}],
            },
        ],
    }


def summary_head(alert: Alert) -> str:
    return f"{title(alert)}: customer {alert.customer_id}"[:150]


def email_message(alert: Alert, subscriber: EmailSubscriber, now: datetime) -> EmailMessage:
    """A plain-text email; its Message-ID derives from the alert key, so a resend after a
    crash threads with, and can be dropped as, the first."""
    msg = EmailMessage()
    star = " [high value]" if alert.high_value else ""
    msg["Subject"] = f"[retention] {summary_head(alert)}{star}"
    msg["From"] = subscriber.sender
    msg["To"] = ", ".join(subscriber.to)
    msg["Date"] = format_datetime(now.astimezone(UTC))
    digest = hashlib.sha256(f"{subscriber.name}|{alert.key}".encode()).hexdigest()[:32]
    msg["Message-ID"] = f"<{digest}@{subscriber.sender.split('@', 1)[1]}>"
    msg[IDEMPOTENCY_HEADER] = alert.key
    reasons = "\n".join(f"  - {r}" for r in alert.reasons) or "  (none given)"
    details = "\n".join(f"  {k}: {v}" for k, v in sorted(alert.details.items())) or "  -"
    msg.set_content(
        f"{title(alert)}\n\n"
        f"Customer:   {alert.customer_id}\n"
        f"Kind:       {alert.kind}\n"
        f"Raised at:  {alert.as_dict()['at']}\n"
        f"Risk score: {_risk(alert)}\n"
        f"High value: {'yes' if alert.high_value else 'no'}\n\n"
        f"Reasons:\n{reasons}\n\nDetails:\n{details}\n\n"
        f"Alert key: {alert.key}\n"
    )
    return msg


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
    if isinstance(exc, OSError):
        return DeliveryError(f"{type(exc).__name__}: {exc}", retryable=True)
    return DeliveryError(repr(exc), retryable=False)


def _retry_after(headers: Mapping[str, str]) -> float | None:
    value = headers.get("Retry-After", "")
    return float(value) if value.strip().isdigit() else None


def _smtp_send(subscriber: EmailSubscriber, msg: EmailMessage, timeout: float) -> None:
    with smtplib.SMTP(subscriber.smtp_host, subscriber.smtp_port, timeout=timeout) as smtp:
        if subscriber.starttls:
            smtp.starttls(context=ssl.create_default_context())
        if subscriber.username and subscriber.password:
            smtp.login(subscriber.username, subscriber.password.get_secret_value())
        refused = smtp.send_message(msg)
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

    Use as ``async with Notifier(config, redis, prefix) as notifier``: it owns one HTTP
    session. ``redis`` may decode responses or not.
    """

    def __init__(
        self,
        config: NotifyConfig,
        redis: Redis,
        key_prefix: str,
        *,
        clock: Callable[[], datetime] = _utcnow,
    ) -> None:
        self.config = config
        self.redis = redis
        self.prefix = key_prefix
        self.clock = clock
        self._session: aiohttp.ClientSession | None = None
        self._failures: dict[str, int] = {}
        self._open_until: dict[str, float] = {}

    def key(self, *parts: str) -> str:
        return self.prefix + "notify:" + ":".join(parts)

    @property
    def stats_key(self) -> str:
        return self.key("stats")

    @property
    def dead_key(self) -> str:
        return self.key("dead")

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
        if not subscriber.wants(alert):
            return "filtered"
        delivered = self.key("delivered", subscriber.name)
        last = self.key("last", subscriber.name, alert.kind, alert.customer_id)
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.zscore(delivered, alert.key)
            pipe.get(last)
            seen, last_at = await pipe.execute()
        if seen is not None:
            await self.redis.hincrby(self.stats_key, f"duplicate|{subscriber.type}", 1)
            return "duplicate"
        cooldown_ms = int(self.config.cooldown_for(alert.kind) * 1000)
        if last_at is not None and _ms(alert.at) - int(last_at) < cooldown_ms:
            await self.redis.hincrby(self.stats_key, f"suppressed|{subscriber.type}", 1)
            logger.info(
                "alert cooled down",
                extra={"subscriber": subscriber.name, "alert": alert.key},
            )
            return "cooled_down"
        attempts = await self._attempt(subscriber, alert)
        self._record(subscriber, failed=attempts.error is not None)
        if attempts.error is not None:
            await self._dead_letter(subscriber, alert, attempts)
            return "failed"
        now_ms = _ms(self.clock())
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.zadd(delivered, {alert.key: now_ms})
            pipe.zremrangebyscore(delivered, "-inf", now_ms - self.config.dedupe_horizon * 1000)
            if cooldown_ms > 0:
                pipe.set(last, _ms(alert.at), px=cooldown_ms)
            pipe.hincrby(self.stats_key, f"sent|{subscriber.type}", 1)
            await pipe.execute()
        return "delivered"

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
        if time.monotonic() < self._open_until.get(subscriber.name, 0.0):
            return 1
        return self.config.retry.attempts

    async def _attempt(self, subscriber: Subscriber, alert: Alert) -> Attempts:
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
        record = {
            "subscriber": subscriber.name,
            "alert": alert.as_dict(),
            "error": attempts.error,
            "attempts": attempts.count,
            "at": self.clock().astimezone(UTC).isoformat().replace("+00:00", "Z"),
        }
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.rpush(self.dead_key, json.dumps(record, sort_keys=True))
            pipe.hincrby(self.stats_key, f"failed|{subscriber.type}", 1)
            await pipe.execute()
        logger.error(
            "alert dead-lettered",
            extra={"subscriber": subscriber.name, "alert": alert.key, "error": attempts.error},
        )

    async def _send(self, subscriber: Subscriber, alert: Alert) -> None:
        if isinstance(subscriber, WebhookSubscriber):
            body = webhook_body(alert, subscriber.name)
            headers = {
                **subscriber.headers,
                "Content-Type": "application/json",
                SIGNATURE_HEADER: sign(body, subscriber.secret.get_secret_value()),
                TIMESTAMP_HEADER: str(int(self.clock().timestamp())),
                IDEMPOTENCY_HEADER: alert.key,
            }
            await self._post(subscriber.url, body, headers)
        elif isinstance(subscriber, SlackSubscriber):
            body = json.dumps(slack_message(alert)).encode()
            await self._post(subscriber.url, body, {"Content-Type": "application/json"})
        else:
            msg = email_message(alert, subscriber, self.clock())
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


async def dead_letters(redis: Redis, key_prefix: str) -> list[dict[str, Any]]:
    """The dead-letter records, oldest first."""
    raw = await redis.lrange(f"{key_prefix}notify:dead", 0, -1)
    return [json.loads(r) for r in raw]


async def notify_stats(redis: Redis, key_prefix: str) -> dict[str, int]:
    raw = await redis.hgetall(f"{key_prefix}notify:stats")
    out: dict[str, int] = {}
    for field_name, value in raw.items():
        name = field_name.decode() if isinstance(field_name, bytes) else str(field_name)
        with contextlib.suppress(ValueError):
            out[name] = int(value)
    return out
