"""One frozen settings object, read from the environment and passed in everywhere."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import AliasChoices, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from contract.events import EventType
from processors.windows import Calendar, calendar_of
from streams.kafka_security import KafkaSecurity, SaslMechanism, SecurityProtocol

ActivityKind = EventType  # the event types that can count as activity
#: The P(alive) models of processors/alive_models.py (kept here so that reading settings
#: does not load the numerics)
AliveModelName = Literal["bgnbd", "mbgnbd", "paretonbd"]


class Settings(BaseSettings):
    """Tracker configuration.

    ``KAFKA_BOOTSTRAP`` and ``REDIS_URL`` name the services; everything else is read from
    ``RETENTION_*`` variables. When the two service variables are unset, commands use the
    embedded stack that ``retention up`` recorded in ``data_dir``.
    """

    model_config = SettingsConfigDict(env_prefix="RETENTION_", frozen=True, extra="ignore")

    kafka_bootstrap: str | None = Field(
        default=None, validation_alias=AliasChoices("KAFKA_BOOTSTRAP", "kafka_bootstrap")
    )
    redis_url: str | None = Field(
        default=None, validation_alias=AliasChoices("REDIS_URL", "redis_url")
    )
    # The Redis URL may come from a file instead (a compose or Kubernetes secret), as a
    # password should: it then shows in no command line and no environment listing
    redis_url_file: Path | None = Field(
        default=None, validation_alias=AliasChoices("REDIS_URL_FILE", "redis_url_file")
    )
    # Kafka SASL and TLS (streams/kafka_security.py), named as Kafka clients name them;
    # PLAINTEXT (the default) adds nothing to the clients. The password may come from a
    # file instead (a compose or Kubernetes secret).
    kafka_security_protocol: SecurityProtocol = Field(
        default="PLAINTEXT",
        validation_alias=AliasChoices("KAFKA_SECURITY_PROTOCOL", "kafka_security_protocol"),
    )
    kafka_sasl_mechanism: SaslMechanism = Field(
        default="PLAIN",
        validation_alias=AliasChoices("KAFKA_SASL_MECHANISM", "kafka_sasl_mechanism"),
    )
    kafka_sasl_username: str | None = Field(
        default=None,
        validation_alias=AliasChoices("KAFKA_SASL_USERNAME", "kafka_sasl_username"),
    )
    kafka_sasl_password: SecretStr | None = Field(
        default=None,
        validation_alias=AliasChoices("KAFKA_SASL_PASSWORD", "kafka_sasl_password"),
    )
    kafka_sasl_password_file: Path | None = Field(
        default=None,
        validation_alias=AliasChoices("KAFKA_SASL_PASSWORD_FILE", "kafka_sasl_password_file"),
    )
    kafka_ssl_cafile: Path | None = Field(
        default=None, validation_alias=AliasChoices("KAFKA_SSL_CAFILE", "kafka_ssl_cafile")
    )
    kafka_ssl_certfile: Path | None = Field(
        default=None, validation_alias=AliasChoices("KAFKA_SSL_CERTFILE", "kafka_ssl_certfile")
    )
    kafka_ssl_keyfile: Path | None = Field(
        default=None, validation_alias=AliasChoices("KAFKA_SSL_KEYFILE", "kafka_ssl_keyfile")
    )
    data_dir: Path = Path(".retention")
    topic_prefix: str = ""
    key_prefix: str = "rt:"
    #: customers are spread over this many shards of the store, chosen when it is set up
    #: (None: the recorded count, else 1 on a single Redis and 12 on a Redis Cluster)
    shards: int | None = Field(default=None, ge=1, le=1024)
    partitions: int = Field(default=4, ge=1)
    app_id: str = "retention-tracker"
    activity_kinds: Annotated[tuple[ActivityKind, ...], NoDecode] = ("order", "login")
    default_currency: str = "USD"
    # Money is reported in one currency: orders in others are converted at the ECB
    # reference rate of their own day (processors/currency.py says which day's rate when
    # there is none); a CSV of your own daily rates (ECB layout) replaces the bundled one.
    reporting_currency: str = "USD"
    rates_file: Path | None = None
    # How long event ids are remembered to drop producer duplicates. Redeliveries after a
    # crash are recognised by partition offsets instead, which cost no memory per event.
    dedupe_horizon_seconds: int = Field(default=7 * 86400, ge=60)
    # How far ahead of the wall clock a live event may be dated (RETENTION_MAX_FUTURE_SECONDS);
    # later ones are rejected as future_timestamp. Backtests judge by their own data instead.
    max_future_seconds: float = Field(default=86400.0, ge=0)
    #: the most records one fetch, and so one batch of the ingest, holds
    batch_size: int = Field(default=1000, ge=1)
    #: how long a fetch that finds nothing may wait at the broker (streams/app.py)
    fetch_max_wait_ms: int = Field(default=100, ge=1, le=60_000)
    # Kafka group timeouts. Production keeps Kafka's usual values; the embedded stack
    # shortens them because Tansu makes a joining member wait half the session timeout.
    session_timeout_seconds: float = Field(default=30.0, gt=0)
    heartbeat_interval_seconds: float = Field(default=3.0, gt=0)
    worker_heartbeat_seconds: float = Field(default=1.0, gt=0)
    # Periods: W of docs/metrics.md (whole days, since periods start at midnight), which clock
    # closes them (compacts their bitmaps; rows are counted when read), and how long after
    # its end a period waits for that.
    # uvloop lowers Faust's per-message cost, the worker's ceiling (bench/README.md)
    event_loop: Literal["asyncio", "uvloop"] = "uvloop"
    churn_after_days: int = Field(default=90, ge=1)
    # The shop's calendar (processors/windows.py): the IANA zone its days, weeks and months
    # start in, and the first day of its weeks. A store keeps the calendar it was written
    # with; another one needs `retention rebuild`.
    timezone: str = "UTC"
    week_start: Literal[
        "monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday"
    ] = "monday"
    clock: Literal["wall", "watermark"] = "wall"
    lateness_seconds: float = Field(default=3600.0, ge=0)
    close_every_seconds: float = Field(default=5.0, gt=0)
    # How often the leader refits the P(alive) and spend models to all buyers (it also
    # refits on demand)
    refit_every_seconds: float = Field(default=3600.0, gt=0)
    # The P(alive) model: bgnbd | mbgnbd | paretonbd. MBG/NBD by default: as cheap to fit
    # as BG/NBD and as good a fit on CDNOW, but it does not give every one-time buyer
    # P(alive) = 1, so a silent one-time buyer can be found at risk; Pareto/NBD fits slower.
    alive_model: AliveModelName = "mbgnbd"
    # Predicted CLTV: months ahead (of 30 days) and the monthly discount rate
    cltv_months: int = Field(default=12, ge=0, le=1200)
    cltv_discount_monthly: float = Field(default=0.01, ge=0, lt=1)
    # Lifecycle and risk: the rules file (defaults in processors/risk.py) and how often the
    # leader looks at customers that are due
    risk_file: Path | None = None
    evaluate_every_seconds: float = Field(default=2.0, gt=0)
    evaluate_batch: int = Field(default=500, ge=1)
    # Who evaluates the due customers: every worker, for the shards that follow its
    # partitions, on the core it ingests with (worker); or `retention evaluator`
    # processes of their own, and the workers only ingest (separate)
    evaluation: Literal["worker", "separate"] = "worker"
    # Notifications: the subscribers file (see processors/notify_config.py); cool-downs, retries
    # and secrets (as *_env variable names) are set there
    notifications_file: Path | None = None
    # The web view's address as the people who get alerts reach it (for example
    # https://retention.shop.example): alerts then carry a link to the customer's page
    web_base_url: str | None = None
    #: values of each customer attribute the exporter labels; the rest are "other"
    attribute_top: int = Field(default=10, ge=1, le=100)
    # `up --demo` without a notifications file: how long after start the demo's daily
    # digest subscriber gets its first digest
    demo_digest_after_seconds: float = Field(default=180.0, gt=0)
    # port for a worker's own /metrics (batch latency, Redis errors); None = not served
    worker_metrics_port: int | None = Field(default=None, ge=0, le=65535)
    # Both /metrics endpoints (exporter and workers): the worker's bind address (the
    # exporter's is its --host), who may scrape (a bearer token and/or basic auth
    # "user:password", each given directly or in a file; none set = no auth), how long the
    # exporter reuses one read of Redis, and when a worker with lag counts as stalled
    worker_metrics_host: str = "127.0.0.1"
    metrics_bearer_token: SecretStr | None = None
    metrics_bearer_token_file: Path | None = None
    metrics_basic_auth: SecretStr | None = None
    metrics_basic_auth_file: Path | None = None
    metrics_cache_seconds: float = Field(default=5.0, ge=0)
    # a worker whose partitions have lag and that applied nothing for this long is stalled
    worker_stalled_after_seconds: float = Field(default=60.0, gt=0)
    # HTTP ingest (`retention ingest`): the decompressed body limit (a gzip body counts as
    # what it inflates to), events per batch, each write key's token bucket (requests per
    # second and burst, per server process), how long a request waits for the broker's
    # acknowledgement before it gets a 503, and how long a key lookup is reused (so also
    # how long a revoked key may still write)
    ingest_max_body_bytes: int = Field(default=1024 * 1024, ge=1024)
    ingest_max_batch_events: int = Field(default=1000, ge=1)
    ingest_rate_per_second: float = Field(default=100.0, gt=0)
    ingest_burst: int = Field(default=200, ge=1)
    ingest_broker_timeout_seconds: float = Field(default=5.0, gt=0)
    ingest_key_cache_seconds: float = Field(default=5.0, ge=0)
    # What one ingest process spends on a client (docs/security.md, "The HTTP servers'
    # limits"): how long a request's headers may take to arrive (also how long an idle
    # keep-alive connection is kept), how long its body, how many connections are open at
    # once (more get a 503), and its Redis connections (a request that finds them all busy
    # waits for one)
    ingest_header_timeout_seconds: float = Field(default=10.0, gt=0)
    ingest_body_timeout_seconds: float = Field(default=30.0, gt=0)
    ingest_max_connections: int = Field(default=512, ge=1)
    ingest_redis_max_connections: int = Field(default=32, ge=1)
    # When the keys cannot be read from Redis: how long the last keys read keep letting
    # requests in, and the longest wait between two tries (the first comes after 0.5 s,
    # then twice as long each time)
    ingest_key_stale_seconds: float = Field(default=60.0, ge=0)
    ingest_key_retry_max_seconds: float = Field(default=30.0, gt=0)
    # Each write key's events and bytes (of JSON, as inflated) a second and their bursts,
    # besides its requests, per server process; a request over its burst waits for a full
    # bucket
    ingest_events_per_second: float = Field(default=10_000.0, gt=0)
    ingest_events_burst: int = Field(default=20_000, ge=1)
    ingest_bytes_per_second: float = Field(default=10 * 1024 * 1024, gt=0)
    ingest_bytes_burst: int = Field(default=20 * 1024 * 1024, ge=1)

    @field_validator("activity_kinds", mode="before")
    @classmethod
    def _split_kinds(cls, value: object) -> object:
        if isinstance(value, str):
            return tuple(part.strip() for part in value.split(",") if part.strip())
        return value

    @model_validator(mode="after")
    def _redis_url_from_file(self) -> Settings:
        """REDIS_URL_FILE fills ``redis_url`` when REDIS_URL is unset (REDIS_URL wins)."""
        if self.redis_url is None and self.redis_url_file is not None:
            try:
                text = self.redis_url_file.read_text().strip()
            except OSError as exc:
                raise ValueError(f"REDIS_URL_FILE cannot be read: {exc}") from exc
            if not text:
                raise ValueError(f"REDIS_URL_FILE {self.redis_url_file} is empty")
            # frozen: set once, while the settings are being made
            object.__setattr__(self, "redis_url", text)
        return self

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        if value != "UTC":
            try:
                ZoneInfo(value)
            except (ZoneInfoNotFoundError, ValueError) as exc:
                raise ValueError(
                    f"RETENTION_TIMEZONE {value!r} is not an IANA zone name "
                    "(such as Europe/Berlin, Asia/Tokyo or America/Los_Angeles)"
                ) from exc
        return value

    @field_validator("week_start", mode="before")
    @classmethod
    def _lower_day(cls, value: object) -> object:
        return value.lower() if isinstance(value, str) else value

    def calendar(self) -> Calendar:
        """The calendar periods are counted in."""
        return calendar_of(self.timezone, self.week_start)

    @field_validator("default_currency", "reporting_currency")
    @classmethod
    def _currency_code(cls, value: str) -> str:
        if len(value) != 3 or not value.isalpha() or not value.isupper():
            raise ValueError("default_currency must be an ISO 4217 code such as USD")
        return value

    def env(self) -> dict[str, str]:
        """These settings as environment variables, for a child process to read back."""
        out: dict[str, str] = {}
        for name, value in self.model_dump().items():
            if value is None:
                continue
            key = (
                name.upper()
                if name.startswith(("redis_url", "kafka_"))
                else f"RETENTION_{name.upper()}"
            )
            if isinstance(value, SecretStr):
                value = value.get_secret_value()
            out[key] = ",".join(value) if isinstance(value, tuple) else str(value)
        return out

    def kafka_security(self) -> KafkaSecurity:
        """SASL and TLS for every Kafka client; raises ValueError when incomplete."""
        password = self.kafka_sasl_password
        if password is None and self.kafka_sasl_password_file is not None:
            try:
                text = self.kafka_sasl_password_file.read_text().rstrip("\r\n")
            except OSError as exc:
                raise ValueError(f"KAFKA_SASL_PASSWORD_FILE cannot be read: {exc}") from exc
            password = SecretStr(text)
        return KafkaSecurity(
            security_protocol=self.kafka_security_protocol,
            sasl_mechanism=self.kafka_sasl_mechanism,
            username=self.kafka_sasl_username,
            password=None if password is None else password.get_secret_value(),
            ssl_cafile=_path(self.kafka_ssl_cafile),
            ssl_certfile=_path(self.kafka_ssl_certfile),
            ssl_keyfile=_path(self.kafka_ssl_keyfile),
        )

    def with_services(self, kafka_bootstrap: str, redis_url: str) -> Settings:
        return self.model_copy(update={"kafka_bootstrap": kafka_bootstrap, "redis_url": redis_url})


def _path(path: Path | None) -> str | None:
    return None if path is None else str(path)
