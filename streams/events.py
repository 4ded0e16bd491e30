"""The producer contract (METRICS.md, Events and Time), in one place.

The same models validate an event in a producing app, in ``retention produce`` and in the
worker, so an event the producer API accepts is one the worker accepts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

from pydantic import (
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

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
EventType = Literal["order", "login", "support"]
EVENT_TYPES: tuple[EventType, ...] = ("order", "login", "support")


def _parse_ts(value: Any) -> datetime:
    """Accept ISO 8601 with an offset or epoch seconds; reject naive and odd values."""
    if isinstance(value, bool):
        raise PydanticCustomError("invalid_timestamp", "ts must be ISO 8601 or epoch seconds")
    if isinstance(value, int | float):
        if not math.isfinite(value):
            raise PydanticCustomError("invalid_timestamp", "ts must be finite")
        try:
            return datetime.fromtimestamp(value, UTC)
        except (OverflowError, OSError, ValueError) as exc:
            raise PydanticCustomError("invalid_timestamp", "ts out of range") from exc
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError as exc:
            raise PydanticCustomError("invalid_timestamp", "ts is not ISO 8601") from exc
        if parsed.tzinfo is None or parsed.utcoffset() is None:
            raise PydanticCustomError("naive_timestamp", "ts has no UTC offset")
        return parsed.astimezone(UTC)
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise PydanticCustomError("naive_timestamp", "ts has no UTC offset")
        return value.astimezone(UTC)
    raise PydanticCustomError("invalid_timestamp", "ts must be ISO 8601 or epoch seconds")


Timestamp = Annotated[datetime, BeforeValidator(_parse_ts)]
Identifier = Annotated[StrictStr, Field(min_length=1, max_length=128)]
Amount = Annotated[StrictFloat | StrictInt, Field(ge=0, allow_inf_nan=False)]
Currency = Annotated[StrictStr, Field(pattern=r"^[A-Z]{3}$")]

SURVEY_RANGES: dict[str, tuple[int, int]] = {"csat": (1, 5), "nps": (0, 10), "ces": (1, 7)}


class _Event(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")

    event_id: Identifier
    customer_id: Identifier
    ts: Timestamp

    @property
    def ts_ms(self) -> int:
        """Event time in whole milliseconds since the epoch, the unit the store keeps."""
        return (self.ts - EPOCH) // timedelta(milliseconds=1)


class OrderEvent(_Event):
    type: Literal["order"]
    amount: Amount
    currency: Currency | None = None
    order_id: Identifier | None = None
    items: StrictInt | None = Field(default=None, ge=0)
    status: Literal["placed", "refunded", "cancelled"] = "placed"

    @property
    def amount_micros(self) -> int:
        """Money is summed as integer millionths so that totals are exact."""
        return round(self.amount * 1_000_000)


class LoginEvent(_Event):
    type: Literal["login"]
    channel: Identifier | None = None
    session_id: Identifier | None = None


class SupportEvent(_Event):
    type: Literal["support"]
    ticket_id: Identifier
    action: Literal["opened", "agent_replied", "resolved", "reopened", "rated"]
    survey: Literal["csat", "nps", "ces"] | None = None
    score: StrictInt | None = None

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
    "internal_error",
    "sum_overflow",
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
    return Rejection(reason, detail[:300])


def _check_routing(
    event: Event, topic_type: EventType | None, key: bytes | None
) -> Event | Rejection:
    if topic_type is not None and event.type != topic_type:
        return Rejection("type_mismatch", f"a {event.type} event on the {topic_type} topic")
    if key is not None and key != event.customer_id.encode():
        return Rejection("key_mismatch", "message key differs from customer_id")
    return event


def parse_event(
    raw: bytes | str, *, topic_type: EventType | None = None, key: bytes | None = None
) -> Event | Rejection:
    """Validate one message. ``topic_type`` and ``key`` check where it arrived."""
    try:
        event = _ADAPTER.validate_json(raw)
    except ValidationError as exc:
        return _rejection_from(exc)
    return _check_routing(event, topic_type, key)


def build_event(data: dict[str, Any]) -> Event:
    """Validate a Python mapping as an event, raising :class:`InvalidEvent`."""
    try:
        return _ADAPTER.validate_python(data)
    except ValidationError as exc:
        raise InvalidEvent(_rejection_from(exc)) from exc


def encode_event(event: Event) -> bytes:
    """The wire form: JSON with ``ts`` in ISO 8601 UTC and unset optionals left out."""
    return event.model_dump_json(exclude_none=True).encode()
