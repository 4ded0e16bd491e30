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

Delivery is at least once. State in Redis, under the key prefix ``P``:

- ``P notify:delivered:<subscriber>``  sorted set, alert key → delivery time (ms); an alert
  found there is a duplicate (a redelivery after a restart, or the tracker raising it twice)
- ``P notify:last:<subscriber>:<kind>:<customer>``  the ``at`` (ms) of the last alert of that
  kind delivered for that customer; it expires with the cool-down
- ``P notify:dead``   list of JSON dead letters ``{reason, subscriber, alert, error,
  attempts, at}``, oldest first, trimmed to the newest ``dead_letter_limit`` entries
- ``P notify:stats``  hash of counters ``sent|<channel>``, ``failed|<channel>``,
  ``suppressed|<channel>``, ``duplicate|<channel>``; ``bad`` (undecodable alerts),
  ``internal_error`` (unexpected exceptions) and ``dead_trimmed`` (dead letters dropped by
  the limit)

A crash between a successful send and the Redis write sends that alert again after the
restart; webhook receivers drop it by its ``Idempotency-Key``, email by its ``Message-ID``.
Calls of :meth:`Notifier.deliver_to` for the same subscriber and customer must not
overlap: the service loop gives each subscriber one task that handles its alerts in turn,
and Kafka gives each customer's partition to one consumer.

Customer ids are free text from producers. Each channel renders them so that they stay
text: escaped for Slack's mrkdwn, control characters shown as escapes in email headers,
percent-encoded in the ``Idempotency-Key`` header, and JSON-encoded in webhook bodies.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import re
import smtplib
import ssl
import time
import unicodedata
import urllib.parse
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

from processors import webhook_signature
from processors.alerts import Alert, AlertKind
from processors.webhook_signature import SIGNATURE_HEADER, TIMESTAMP_HEADER

logger = logging.getLogger(__name__)

Channel = Literal["webhook", "slack", "email"]
Outcome = Literal["delivered", "duplicate", "cooled_down", "filtered", "failed"]
Verdict = Literal["delivered", "retry", "permanent"]
Tls = Literal["none", "starttls", "implicit"]
#: why an entry is in the dead-letter list
DeadReason = Literal["delivery_failed", "undecodable", "internal_error", "backlog"]

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
    #: ``starttls`` upgrades a plain connection (port 587); ``implicit`` speaks TLS from
    #: the first byte (port 465); ``none`` is for a relay on a trusted network
    tls: Tls = "none"
    #: a login over a connection without TLS sends the password in clear text: refused
    #: unless this is set
    allow_insecure_login: bool = False
    #: CA certificates to trust for the server's certificate (a private CA); the system's
    #: store when unset
    ca_file: Path | None = None

    @model_validator(mode="before")
    @classmethod
    def _password_env(cls, data: Any, info: ValidationInfo) -> Any:
        if isinstance(data, Mapping) and "password" in data and "password_env" not in data:
            raise ValueError("give the SMTP password as password_env: VARIABLE")
        return _from_env(data, "password_env", "password", info)

    @model_validator(mode="before")
    @classmethod
    def _starttls_flag(cls, data: Any) -> Any:
        """``starttls: true`` from older files means ``tls: starttls``."""
        if not isinstance(data, Mapping) or "starttls" not in data:
            return data
        flag = data["starttls"]
        if not isinstance(flag, bool):
            raise ValueError("starttls is true or false; prefer tls: starttls")
        rest = {k: v for k, v in data.items() if k != "starttls"}
        if "tls" in data and (data["tls"] == "starttls") != flag:
            raise ValueError("starttls and tls disagree; give tls only")
        if flag:
            rest["tls"] = "starttls"
        return rest

    @model_validator(mode="after")
    def _login_pair(self) -> EmailSubscriber:
        if (self.username is None) != (self.password is None):
            raise ValueError("username and password_env go together")
        if self.username is not None and self.tls == "none" and not self.allow_insecure_login:
            raise ValueError(
                "a login without TLS sends the password in clear text: set tls: starttls "
                "or tls: implicit, or allow_insecure_login: true on a trusted network"
            )
        if self.ca_file is not None and self.tls == "none":
            raise ValueError("ca_file is only used with tls: starttls or implicit")
        return self

    @property
    def starttls(self) -> bool:
        return self.tls == "starttls"

    def ssl_context(self) -> ssl.SSLContext:
        """Certificates and host names are checked, as a browser checks them."""
        cafile = str(self.ca_file) if self.ca_file is not None else None
        return ssl.create_default_context(cafile=cafile)


Subscriber = Annotated[
    WebhookSubscriber | SlackSubscriber | EmailSubscriber, Field(discriminator="type")
]
Duration = Annotated[float, Field(ge=0)]


class RetryPolicy(BaseModel):
    """Exponential backoff: attempt n waits ``base_delay * 2**(n-1)``, capped."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    attempts: int = Field(default=5, ge=1, le=100)
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
    #: the dead-letter list keeps the newest this many entries (the oldest are dropped
    #: and counted), so that a dead subscriber cannot grow Redis without bound
    dead_letter_limit: int = Field(default=10_000, ge=1)
    #: alerts waiting per subscriber; when a subscriber whose breaker is open has this
    #: many, new alerts for it go straight to the dead letters (reason ``backlog``); a
    #: subscriber that is merely slow makes the reader wait instead
    queue_limit: int = Field(default=10_000, ge=1)

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


def _utf8(text: str) -> bytes:
    """UTF-8 that also carries lone surrogates (JSON allows ``"\\ud800"``); equal to
    ``text.encode()`` for every other string."""
    return text.encode("utf-8", "surrogatepass")


def header_text(text: str) -> str:
    """``text`` fit for a mail header: control, format and line-separator characters are
    shown as escapes (``\\r``, ``\\u202e``), so a customer id cannot end a header line
    and start another (``Bcc: ...``), nor make the message fail to build."""
    out = []
    for ch in text:
        category = unicodedata.category(ch)
        if category[0] == "C" or category in ("Zl", "Zp"):
            out.append(ch.encode("unicode_escape").decode("ascii"))
        else:
            out.append(ch)
    return "".join(out)


#: printable ASCII but ``%``, which starts an escape
_KEY_SAFE = "".join(chr(c) for c in range(0x21, 0x7F) if chr(c) != "%")


def header_key(key: str) -> str:
    """The alert key as an ``Idempotency-Key`` header value: percent-encoded (UTF-8) where it
    has anything but printable ASCII, so it is one valid header line for any customer id.
    Keys of plain ids pass unchanged."""
    return urllib.parse.quote(key, safe=_KEY_SAFE, errors="surrogatepass")


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
        # the notification text is mrkdwn too: `<!channel>` in an id must stay text
        "text": _mrkdwn(summary(alert)),
        "blocks": [
            # plain_text is not parsed for mentions or links
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
    """Short enough for Slack's header block (150) and a mail subject."""
    return f"{title(alert)}: customer {alert.customer_id}"[:150]


def email_message(alert: Alert, subscriber: EmailSubscriber, now: datetime) -> EmailMessage:
    """A plain-text email; its Message-ID derives from the alert key, so a resend after a
    crash threads with, and can be dropped as, the first."""
    msg = EmailMessage()
    star = " [high value]" if alert.high_value else ""
    msg["Subject"] = header_text(f"[retention] {summary_head(alert)}{star}")
    msg["From"] = subscriber.sender
    msg["To"] = ", ".join(subscriber.to)
    msg["Date"] = format_datetime(now.astimezone(UTC))
    digest = hashlib.sha256(_utf8(f"{subscriber.name}|{alert.key}")).hexdigest()[:32]
    msg["Message-ID"] = f"<{digest}@{subscriber.sender.split('@', 1)[1]}>"
    msg[IDEMPOTENCY_HEADER] = header_key(alert.key)
    reasons = "\n".join(f"  - {r}" for r in alert.reasons) or "  (none given)"
    details = "\n".join(f"  {k}: {v}" for k, v in sorted(alert.details.items())) or "  -"
    text = (
        f"{title(alert)}\n\n"
        f"Customer:   {header_text(alert.customer_id)}\n"
        f"Kind:       {alert.kind}\n"
        f"Raised at:  {alert.as_dict()['at']}\n"
        f"Risk score: {_risk(alert)}\n"
        f"High value: {'yes' if alert.high_value else 'no'}\n\n"
        f"Reasons:\n{reasons}\n\nDetails:\n{details}\n\n"
        f"Alert key: {header_text(alert.key)}\n"
    )
    # lone surrogates (from a JSON "\\ud800") cannot be encoded; show them as escapes
    msg.set_content(text.encode("utf-8", "backslashreplace").decode("utf-8"))
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


class BadAlert(ValueError):
    """A message on the alerts topic that is not an alert the notifier can render."""


def decode_alert(raw: bytes | None) -> Alert:
    """Decode and check that every channel can render the alert; anything else raises
    :class:`BadAlert` (never another exception), whatever the bytes."""
    try:
        alert = Alert.decode(raw or b"")
        if alert.risk_score is not None and (
            isinstance(alert.risk_score, bool)
            or not isinstance(alert.risk_score, int | float)
            or alert.risk_score != alert.risk_score
        ):
            raise ValueError(f"risk_score {alert.risk_score!r} is not a number")
        if not alert.customer_id:
            raise ValueError("empty customer_id")
        webhook_body(alert, "check")
        slack_message(alert)
    except Exception as exc:
        raise BadAlert(f"{type(exc).__name__}: {exc}"[:500]) from exc
    return alert


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
        delivered = self.key("delivered", subscriber.name)
        last = _utf8(self.key("last", subscriber.name, alert.kind, alert.customer_id))
        member = _utf8(alert.key)
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.zscore(delivered, member)
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
            pipe.zadd(delivered, {member: now_ms})
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
        return 1 if self.breaker_open(subscriber) else self.config.retry.attempts

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
        limit = self.config.dead_letter_limit
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.rpush(self.dead_key, json.dumps(entry, sort_keys=True, default=repr))
            pipe.ltrim(self.dead_key, -limit, -1)
            for counter in counters:
                pipe.hincrby(self.stats_key, counter, 1)
            length, *_ = await pipe.execute()
        if int(length) > limit:
            await self.redis.hincrby(self.stats_key, "dead_trimmed", int(length) - limit)

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

    async def _send(self, subscriber: Subscriber, alert: Alert) -> None:
        if isinstance(subscriber, WebhookSubscriber):
            body = webhook_body(alert, subscriber.name)
            # a fresh timestamp per attempt: a retry after minutes is not taken for a replay
            signed = webhook_signature.signature_headers(
                subscriber.secret.get_secret_value(), int(self.clock().timestamp()), body
            )
            headers = {
                **subscriber.headers,
                "Content-Type": "application/json",
                **signed,
                IDEMPOTENCY_HEADER: header_key(alert.key),
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
