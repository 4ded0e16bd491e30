"""The notifications file: subscribers, cool-downs and retries, validated.

See ``retention/delivery.py`` for how alerts reach the subscribers listed here.
"""

from __future__ import annotations

import os
import re
import ssl
from collections.abc import Mapping
from datetime import datetime, time, timedelta
from pathlib import Path
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

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

from contract.events import ATTRIBUTES
from processors.alerts import Alert, AlertKind
from processors.risk import PLAYBOOK, Band
from processors.webhook_signature import (
    IDEMPOTENCY_HEADER as IDEMPOTENCY_HEADER,
)
from processors.webhook_signature import (
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    Scheme,
)

Channel = Literal["webhook", "slack", "email"]


Outcome = Literal["delivered", "duplicate", "cooled_down", "filtered", "failed", "digested"]


Verdict = Literal["delivered", "retry", "permanent"]


Tls = Literal["none", "starttls", "implicit"]


#: why an entry is in the dead-letter list
DeadReason = Literal["delivery_failed", "undecodable", "internal_error", "backlog"]


_RESERVED_HEADERS = frozenset(
    h.lower() for h in ("Content-Type", SIGNATURE_HEADER, TIMESTAMP_HEADER, IDEMPOTENCY_HEADER)
)


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$")


_UNIT_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


class NotifyConfigError(ValueError):
    """The notifications file cannot be used; the message names the file and the field."""


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
    value = _env_value(data[env_field], env_field, info)
    return {**{k: v for k, v in data.items() if k != env_field}, target: value}


def _env_value(variable: object, env_field: str, info: ValidationInfo) -> str:
    if not isinstance(variable, str) or not variable:
        raise ValueError(f"{env_field} must name an environment variable")
    value = _env(info).get(variable)
    if not value:
        raise ValueError(f"{env_field}: environment variable {variable} is not set or empty")
    return value


def _file_value(path: object, file_field: str) -> str:
    """The text of a secret's file (a compose or Kubernetes secret), without the line end
    editors add."""
    if not isinstance(path, str | Path) or not str(path):
        raise ValueError(f"{file_field} must name a file")
    try:
        value = Path(path).read_text().strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"{file_field}: cannot read {str(path)!r}: {exc}") from None
    if not value:
        raise ValueError(f"{file_field}: {str(path)!r} is empty")
    return value


def _from_elsewhere(data: Any, target: str, info: ValidationInfo) -> Any:
    """``<target>_env: VAR`` or ``<target>_file: PATH`` in place of ``<target>``: secrets
    stay out of the notifications file, and out of every process's command line."""
    data = _from_env(data, f"{target}_env", target, info)
    file_field = f"{target}_file"
    if not isinstance(data, Mapping) or file_field not in data:
        return data
    if data.get(target) is not None:
        raise ValueError(f"give one of {target}, {target}_env and {file_field}")
    value = _file_value(data[file_field], file_field)
    return {**{k: v for k, v in data.items() if k != file_field}, target: value}


def _header_values(headers: object, info: ValidationInfo) -> object:
    """Header values given as text, or as ``{value_env: VAR}`` / ``{value_file: PATH}``
    for a header that carries a secret (a bearer token)."""
    if not isinstance(headers, Mapping):
        return headers
    out: dict[object, object] = {}
    for name, value in headers.items():
        if isinstance(value, Mapping):
            if set(value) == {"value_env"}:
                value = _env_value(value["value_env"], f"headers.{name}.value_env", info)
            elif set(value) == {"value_file"}:
                value = _file_value(value["value_file"], f"headers.{name}.value_file")
            else:
                raise ValueError(
                    f"header {name}: give a text value, or one of value_env and value_file"
                )
        out[name] = value
    return out


_WEEKDAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
Weekday = Literal["monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday"]


class DigestSchedule(BaseModel):
    """One message per day or week, at ``at`` in ``timezone``, listing the alerts that
    came since the last one, instead of one message per alert."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    every: Literal["day", "week"] = "day"
    at: time = time(8, 0)
    timezone: str = "UTC"
    #: the day of a weekly digest
    weekday: Weekday = "monday"

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"{value!r} is not an IANA time zone such as Europe/Berlin") from None
        return value

    def latest(self, now: datetime) -> datetime:
        """The last moment a digest was due at or before ``now`` (aware, in UTC)."""
        zone = ZoneInfo(self.timezone)
        local = now.astimezone(zone)
        day = local.date()
        for back in range(8):
            candidate_day = day - timedelta(days=back)
            if self.every == "week" and _WEEKDAYS[candidate_day.weekday()] != self.weekday:
                continue
            due = datetime.combine(candidate_day, self.at, tzinfo=zone)
            if due <= local:
                return due.astimezone(now.tzinfo)
        raise AssertionError("a weekly schedule is due within eight days")


class _Subscriber(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", max_length=64)
    #: the alert kinds this subscriber wants; None means all
    kinds: frozenset[AlertKind] | None = None
    #: only alerts whose risk band is one of these
    bands: frozenset[Band] | None = None
    #: only alerts with at least this risk score
    min_risk: float | None = Field(default=None, ge=0, le=1)
    #: only alerts about high-value customers
    high_value: bool = False
    #: only alerts with at least one of these reasons
    reasons: frozenset[str] | None = None
    #: only alerts about customers whose latest attribute is one of the values given, for
    #: every attribute named (country, channel, shop)
    attributes: dict[str, frozenset[str]] | None = None
    #: collect the alerts into one message per day or week
    digest: DigestSchedule | None = None

    @field_validator("kinds", "bands", "reasons")
    @classmethod
    def _some(cls, value: frozenset[str] | None) -> frozenset[str] | None:
        if value is not None and not value:
            raise ValueError("an empty list would receive nothing; omit it for all")
        return value

    @field_validator("reasons")
    @classmethod
    def _known_reasons(cls, value: frozenset[str] | None) -> frozenset[str] | None:
        unknown = sorted(set(value or ()) - set(PLAYBOOK))
        if unknown:
            raise ValueError(f"unknown reasons {unknown}; known: {sorted(PLAYBOOK)}")
        return value

    @field_validator("attributes")
    @classmethod
    def _known_attributes(
        cls, value: dict[str, frozenset[str]] | None
    ) -> dict[str, frozenset[str]] | None:
        if value is None:
            return None
        unknown = sorted(set(value) - set(ATTRIBUTES))
        if unknown:
            raise ValueError(f"unknown attributes {unknown}; known: {list(ATTRIBUTES)}")
        if not value or any(not values for values in value.values()):
            raise ValueError("an empty list would receive nothing; omit it for all")
        # countries as the contract keeps them
        return {
            name: frozenset(v.upper() for v in values) if name == "country" else values
            for name, values in value.items()
        }

    def wants(self, alert: Alert) -> bool:
        """Whether the alert passes every filter the subscriber set (all of them)."""
        if self.kinds is not None and alert.kind not in self.kinds:
            return False
        if self.bands is not None and alert.band not in self.bands:
            return False
        if self.min_risk is not None and (alert.risk_score or 0.0) < self.min_risk:
            return False
        if self.high_value and not alert.high_value:
            return False
        if self.attributes is not None and any(
            alert.attributes.get(name) not in values for name, values in self.attributes.items()
        ):
            return False
        return self.reasons is None or bool(self.reasons & set(alert.reasons))


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


class _HttpSubscriber(_Subscriber):
    """A subscriber reached by an HTTP POST: its URL may come from the environment or a
    file (``url_env``, ``url_file``: a Slack webhook URL is itself the secret), and it
    must be ``https://`` unless ``allow_http`` says otherwise."""

    url: HttpUrl
    #: an ``http://`` URL sends the alerts (and a webhook's signature and headers) in
    #: clear text: refused unless this is set, for a receiver on a trusted network
    allow_http: bool = False

    @model_validator(mode="before")
    @classmethod
    def _url_elsewhere(cls, data: Any, info: ValidationInfo) -> Any:
        return _from_elsewhere(data, "url", info)

    @model_validator(mode="after")
    def _https(self) -> _HttpSubscriber:
        if self.url.lower().startswith("http://") and not self.allow_http:
            raise ValueError(
                "an http:// URL sends every alert in clear text: use https://, or set "
                "allow_http: true for a receiver on a trusted network"
            )
        return self


class WebhookSubscriber(_HttpSubscriber):
    type: Literal["webhook"]
    #: HMAC-SHA256 key of the ``X-Retention-Signature`` header
    secret: SecretStr
    #: the signing scheme (processors/webhook_signature.py): ``v2`` signs the
    #: Idempotency-Key too; ``v1`` is for receivers not yet updated
    signature: Scheme = "v2"
    headers: dict[str, str] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _secret_env(cls, data: Any, info: ValidationInfo) -> Any:
        if isinstance(data, Mapping) and not {"secret", "secret_env", "secret_file"} & set(data):
            raise ValueError("a webhook is signed: give secret_env: VARIABLE (or secret_file)")
        return _from_elsewhere(data, "secret", info)

    @field_validator("headers", mode="before")
    @classmethod
    def _secret_headers(cls, value: object, info: ValidationInfo) -> object:
        return _header_values(value, info)

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


class SlackSubscriber(_HttpSubscriber):
    type: Literal["slack"]


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
            raise ValueError("give the SMTP password as password_env: VARIABLE (or password_file)")
        return _from_elsewhere(data, "password", info)

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
