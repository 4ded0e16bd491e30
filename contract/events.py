"""The producer contract (docs/metrics.md, Events and Time), in one place.

The same models validate an event in a producing app, in ``retention produce`` and in the
worker, so an event the producer API accepts is one the worker accepts.
"""

from __future__ import annotations

import math
import unicodedata
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictFloat,
    StrictInt,
    StrictStr,
    TypeAdapter,
    ValidationError,
    model_validator,
)
from pydantic_core import PydanticCustomError

from contract.countries import COUNTRY_CODES

#: The units every stored number is in: times in milliseconds since the epoch, days
#: counted from it, money in millionths (one home for them, at the bottom of the layers).
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
MS_PER_DAY = 86_400_000
MICROS = 1_000_000
#: Amounts whose millionths a double still holds exactly (2^53 / 10^6, some 9e9 units).
_FLOAT_EXACT_UNITS = 2**53 / MICROS
#: Event times lie in [EPOCH, TS_CEILING): every period and date computed from them stays
#: far inside what ``datetime`` and the store's day numbers can hold.
TS_CEILING = datetime(2100, 1, 1, tzinfo=UTC)
#: The largest order amount (inclusive), in any currency: a B2B order of 10^13 IDR is some
#: US$600M. The store keeps money sums in two parts, exact far beyond any shop's revenue
#: (docs/store.md; ``store.layout.money_micros``).
MAX_AMOUNT = 10_000_000_000_000
MAX_ITEMS = 1_000_000
#: The largest message, in bytes, before it is even parsed.
MAX_EVENT_BYTES = 32 * 1024
#: How far ahead of the wall clock a live event may be dated by default (the worker reads
#: ``RETENTION_MAX_FUTURE_SECONDS``).
DEFAULT_MAX_FUTURE_SECONDS = 86400.0
EventType = Literal["order", "login", "support"]
EVENT_TYPES: tuple[EventType, ...] = ("order", "login", "support")


_CEILING_SECONDS = (TS_CEILING - EPOCH).total_seconds()
_OUT_OF_RANGE = "ts out of range (1970-01-01 to 2099-12-31 UTC)"


def _in_range(value: datetime) -> datetime:
    try:
        utc = value.astimezone(UTC)
    except (OverflowError, ValueError) as exc:
        # an offset pushed the time past year 1 or 9999
        raise PydanticCustomError("invalid_timestamp", _OUT_OF_RANGE) from exc
    if not EPOCH <= utc < TS_CEILING:
        raise PydanticCustomError("invalid_timestamp", _OUT_OF_RANGE)
    return utc


def _parse_ts(value: Any) -> datetime:
    """Accept ISO 8601 with an offset or epoch seconds; reject naive and odd values."""
    if isinstance(value, bool):
        raise PydanticCustomError("invalid_timestamp", "ts must be ISO 8601 or epoch seconds")
    if isinstance(value, int | float):
        if isinstance(value, float) and not math.isfinite(value):
            raise PydanticCustomError("invalid_timestamp", "ts must be finite")
        # compared before any conversion: an int of 400 digits has no float form
        if not 0 <= value < _CEILING_SECONDS:
            raise PydanticCustomError("invalid_timestamp", _OUT_OF_RANGE)
        try:
            return _in_range(datetime.fromtimestamp(value, UTC))
        except (OverflowError, OSError, ValueError) as exc:
            raise PydanticCustomError("invalid_timestamp", _OUT_OF_RANGE) from exc
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError as exc:
            raise PydanticCustomError("invalid_timestamp", "ts is not ISO 8601") from exc
        if parsed.tzinfo is None or parsed.utcoffset() is None:
            raise PydanticCustomError("naive_timestamp", "ts has no UTC offset")
        return _in_range(parsed)
    if isinstance(value, datetime):
        if value.tzinfo is None or value.utcoffset() is None:
            raise PydanticCustomError("naive_timestamp", "ts has no UTC offset")
        return _in_range(value)
    raise PydanticCustomError("invalid_timestamp", "ts must be ISO 8601 or epoch seconds")


def _printable_id(value: str) -> str:
    """Ids end up in keys, logs, headers and messages people read: no control characters,
    nothing unencodable, and no format characters (a right-to-left override or a
    zero-width space makes one id look like another)."""
    if value.isprintable():
        # one pass in C, true for nearly every id: none of the characters below is printable
        return value
    for char in value:
        category = unicodedata.category(char)
        if category == "Cc":
            raise PydanticCustomError("invalid_field", "ids must not contain control characters")
        if category == "Cs":
            # a lone surrogate has no UTF-8 form, so no message key could ever match it
            raise PydanticCustomError("invalid_field", "ids must not contain lone surrogates")
        if category == "Cf":
            raise PydanticCustomError(
                "invalid_field",
                "ids must not contain format characters ({code})",
                {"code": f"U+{ord(char):04X}"},
            )
    return value


Timestamp = Annotated[datetime, BeforeValidator(_parse_ts)]
Identifier = Annotated[
    StrictStr, Field(min_length=1, max_length=128), AfterValidator(_printable_id)
]
Amount = Annotated[StrictFloat | StrictInt, Field(ge=0, le=MAX_AMOUNT, allow_inf_nan=False)]
Currency = Annotated[StrictStr, Field(pattern=r"^[A-Z]{3}$")]


def _country(value: str) -> str:
    code = value.upper()
    if code not in COUNTRY_CODES:
        raise PydanticCustomError(
            "invalid_field", "country must be an ISO 3166-1 alpha-2 code such as DE or US"
        )
    return code


#: An ISO 3166-1 alpha-2 code, any case, kept in upper case.
Country = Annotated[StrictStr, Field(min_length=2, max_length=2), AfterValidator(_country)]
#: The customer attributes an order or a login may carry, besides what they say of
#: themselves: where the customer buys, through which channel, in which storefront. The
#: store keeps each customer's first and latest value of each (docs/events.md).
DIMENSIONS: tuple[str, ...] = ("country", "channel", "shop")
#: What the store keeps of a customer per attribute (first and latest value), and what the
#: breakdowns go by: the dimensions, and the currency of its orders.
ATTRIBUTES: tuple[str, ...] = (*DIMENSIONS, "currency")

SURVEY_RANGES: dict[str, tuple[int, int]] = {"csat": (1, 5), "nps": (0, 10), "ces": (1, 7)}
_SCORE_LOW = min(low for low, _ in SURVEY_RANGES.values())
_SCORE_HIGH = max(high for _, high in SURVEY_RANGES.values())


class _Event(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")

    event_id: Identifier
    customer_id: Identifier
    ts: Timestamp

    @property
    def ts_ms(self) -> int:
        """Event time in whole milliseconds since the epoch, the unit the store keeps."""
        return (self.ts - EPOCH) // timedelta(milliseconds=1)

    def dimensions(self) -> dict[str, str]:
        """The customer attributes this event carries (:data:`DIMENSIONS`), those present."""
        return {}


class _Dimensions(_Event):
    country: Country | None = None
    channel: Identifier | None = None
    shop: Identifier | None = None

    def dimensions(self) -> dict[str, str]:
        out = {}
        if self.country is not None:
            out["country"] = self.country
        if self.channel is not None:
            out["channel"] = self.channel
        if self.shop is not None:
            out["shop"] = self.shop
        return out


class OrderEvent(_Dimensions):
    type: Literal["order"]
    amount: Amount
    currency: Currency | None = None
    order_id: Identifier | None = None
    items: StrictInt | None = Field(default=None, ge=0, le=MAX_ITEMS)
    status: Literal["placed", "refunded", "cancelled"] = "placed"

    @property
    def amount_micros(self) -> int:
        """Money is summed as integer millionths so that totals are exact.

        Below 2^53 millionths the float product rounds to the nearest millionth; above, a
        double no longer holds every millionth, so the amount's shortest decimal form (what
        JSON carried, for up to 15 significant digits) is scaled instead."""
        if self.amount < _FLOAT_EXACT_UNITS:
            return round(self.amount * MICROS)
        return int((Decimal(repr(self.amount)) * MICROS).to_integral_value(ROUND_HALF_EVEN))


class LoginEvent(_Dimensions):
    type: Literal["login"]
    session_id: Identifier | None = None


class SupportEvent(_Event):
    type: Literal["support"]
    ticket_id: Identifier
    action: Literal["opened", "agent_replied", "resolved", "reopened", "rated"]
    survey: Literal["csat", "nps", "ces"] | None = None
    # bounded even when no survey names its exact range (an unrated action ignores it)
    score: StrictInt | None = Field(default=None, ge=_SCORE_LOW, le=_SCORE_HIGH)

    @model_validator(mode="after")
    def _rating_fields(self) -> SupportEvent:
        if self.action != "rated":
            return self
        if self.survey is None or self.score is None:
            raise PydanticCustomError("missing_field", "a rated action needs survey and score")
        low, high = SURVEY_RANGES[self.survey]
        if not low <= self.score <= high:
            raise PydanticCustomError(
                "invalid_field", f"{self.survey} score must lie in {low}..{high}"
            )
        return self


Event = OrderEvent | LoginEvent | SupportEvent
EVENT_CLASSES = (OrderEvent, LoginEvent, SupportEvent)
_ADAPTER: TypeAdapter[Event] = TypeAdapter(Annotated[Event, Field(discriminator="type")])

RejectReason = Literal[
    "invalid_json",
    "not_an_object",
    "unknown_type",
    "missing_field",
    "invalid_field",
    "invalid_timestamp",
    "naive_timestamp",
    "type_mismatch",
    "key_mismatch",
    "future_timestamp",  # later than the wall clock plus the allowed margin
    "too_large",  # more than MAX_EVENT_BYTES, refused before parsing
    "internal_error",  # failed anywhere between decoding and building the store's record
    "corrupt_state",  # its customer's stored state cannot be read; set aside until restored
    "unknown_currency",  # no rate converts the order's currency into the reporting one
]
REJECT_REASONS: tuple[RejectReason, ...] = RejectReason.__args__  # type: ignore[attr-defined]


@dataclass(frozen=True, slots=True)
class Rejection:
    """Why an input is not an event: a closed ``reason`` (a counter label) and a detail."""

    reason: RejectReason
    detail: str


class InvalidEvent(ValueError):
    """Raised in a producing app for an event that the worker would reject."""

    def __init__(self, rejection: Rejection) -> None:
        super().__init__(f"{rejection.reason}: {rejection.detail}")
        self.rejection = rejection


_PYDANTIC_REASONS: dict[str, RejectReason] = {
    "json_invalid": "invalid_json",
    "json_type": "invalid_json",
    "model_attributes_type": "not_an_object",
    "model_type": "not_an_object",
    "dict_type": "not_an_object",
    "union_tag_invalid": "unknown_type",
    "union_tag_not_found": "missing_field",
    "missing": "missing_field",
    "invalid_timestamp": "invalid_timestamp",
    "naive_timestamp": "naive_timestamp",
    "missing_field": "missing_field",
}


def _rejection_from(error: ValidationError) -> Rejection:
    first = error.errors(include_url=False)[0]
    reason = _PYDANTIC_REASONS.get(first["type"], "invalid_field")
    where = ".".join(str(part) for part in first["loc"][1:] or first["loc"])
    detail = f"{where}: {first['msg']}" if where else str(first["msg"])
    return Rejection(reason, _clean(detail))


def _check_routing(
    event: Event, topic_type: EventType | None, key: bytes | None
) -> Event | Rejection:
    if topic_type is not None and event.type != topic_type:
        return Rejection("type_mismatch", f"a {event.type} event on the {topic_type} topic")
    # ids hold no lone surrogates, so they always have a UTF-8 form to compare with
    if key is not None and key != event.customer_id.encode():
        return Rejection("key_mismatch", "message key differs from customer_id")
    return event


def _future(event: Event, latest_ms: int | None) -> Rejection | None:
    if latest_ms is None or event.ts_ms <= latest_ms:
        return None
    ahead = (event.ts_ms - latest_ms) / 1000
    return Rejection("future_timestamp", f"ts lies {ahead:.0f} s beyond the allowed margin")


def _clean(text: str) -> str:
    """A detail fit for a log line or a Kafka header: short, and always valid UTF-8."""
    return text[:300].encode("utf-8", "backslashreplace").decode()


def _describe(exc: BaseException) -> str:
    try:
        text = f"{type(exc).__name__}: {exc}"
    except Exception:  # an exception whose str() fails still has a name
        text = type(exc).__name__
    return _clean(text)


def _parse(
    raw: bytes | str, topic_type: EventType | None, key: bytes | None, latest_ms: int | None
) -> Event | Rejection:
    if isinstance(raw, str):
        try:
            raw = raw.encode()
        except UnicodeEncodeError:
            return Rejection("invalid_json", "text with a lone surrogate has no UTF-8 form")
    if len(raw) > MAX_EVENT_BYTES:
        return Rejection("too_large", f"{len(raw)} bytes, more than {MAX_EVENT_BYTES}")
    try:
        event = _ADAPTER.validate_json(raw)
    except ValidationError as exc:
        return _rejection_from(exc)
    return _future(event, latest_ms) or _check_routing(event, topic_type, key)


def parse_event(
    raw: bytes | str,
    *,
    topic_type: EventType | None = None,
    key: bytes | None = None,
    latest_ms: int | None = None,
) -> Event | Rejection:
    """Validate one message; never raises, whatever the input.

    ``topic_type`` and ``key`` check where it arrived; ``latest_ms`` (epoch ms), when
    given, is the latest event time accepted: live traffic passes the wall clock plus a
    margin, a backtest passes nothing and judges by its own data.
    """
    try:
        return _parse(raw, topic_type, key, latest_ms)
    except Exception as exc:
        # The last resort: a worker must go on, so the message becomes a rejection that
        # names the failure rather than an exception that stops the agent.
        return Rejection("internal_error", _describe(exc))


def build_event(data: dict[str, Any], *, latest_ms: int | None = None) -> Event:
    """Validate a Python mapping as an event, raising :class:`InvalidEvent`.

    The checks are those of :func:`parse_event` on the event's encoding, so an event built
    here is one the worker accepts.
    """
    try:
        event = _ADAPTER.validate_python(data)
    except ValidationError as exc:
        raise InvalidEvent(_rejection_from(exc)) from exc
    return check_event(event, latest_ms=latest_ms)


def _oversized(event: Event) -> Rejection | None:
    size = len(encode_event(event))
    if size <= MAX_EVENT_BYTES:
        return None
    return Rejection("too_large", f"encoded as {size} bytes, more than {MAX_EVENT_BYTES}")


def check_event(event: Event, *, latest_ms: int | None = None) -> Event:
    """The checks of :func:`build_event` that depend on more than the fields themselves,
    for an event that is already a model (raises :class:`InvalidEvent`)."""
    rejection = _future(event, latest_ms) or _oversized(event)
    if rejection is not None:
        raise InvalidEvent(rejection)
    return event


def encode_event(event: Event) -> bytes:
    """The wire form: JSON with ``ts`` in ISO 8601 UTC and unset optionals left out."""
    return event.model_dump_json(exclude_none=True).encode()
