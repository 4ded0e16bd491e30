"""Properties of the contract over generated inputs: parsing never raises, and every valid
event becomes a store record and survives its own wire form."""

from __future__ import annotations

import json
import unicodedata
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from contract.events import (
    EPOCH,
    EVENT_CLASSES,
    EVENT_TYPES,
    MAX_AMOUNT,
    MAX_EVENT_BYTES,
    MAX_ITEMS,
    REJECT_REASONS,
    SURVEY_RANGES,
    TS_CEILING,
    Event,
    OrderEvent,
    Rejection,
    SupportEvent,
    build_event,
    encode_event,
    parse_event,
)
from store.record import FIELDS_PER_RECORD
from store.store import accepted_record

# Fixed, fast and free of files: no example database, no deadline on a shared machine.
FAST = settings(
    max_examples=150,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

CEILING_MS = (TS_CEILING - EPOCH) // timedelta(milliseconds=1)

# ---------------------------------------------------------------------------------------
# Valid events

id_chars = st.characters(exclude_categories=("Cc", "Cs", "Cf"))
ids = st.text(id_chars, min_size=1, max_size=128)
offsets = st.builds(
    timezone,
    st.integers(-(24 * 60 - 1), 24 * 60 - 1).map(lambda m: timedelta(minutes=m)),
)


@st.composite
def timestamps(draw: st.DrawFn) -> object:
    """A valid time in any accepted form: ISO 8601 with any offset, or epoch seconds."""
    micros = draw(st.integers(0, CEILING_MS * 1000 - 1))
    moment = EPOCH + timedelta(microseconds=micros)
    form = draw(st.sampled_from(["iso", "z", "int", "float"]))
    if form == "iso":
        return moment.astimezone(draw(offsets)).isoformat()
    if form == "z":
        return moment.isoformat().replace("+00:00", "Z")
    if form == "int":
        return micros // 1_000_000
    return micros / 1_000_000


def optional(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.none() | strategy


@st.composite
def valid_events(draw: st.DrawFn, event_type: str | None = None) -> dict[str, Any]:
    kind = event_type or draw(st.sampled_from(EVENT_TYPES))
    data: dict[str, Any] = {
        "event_id": draw(ids),
        "customer_id": draw(ids),
        "ts": draw(timestamps()),
        "type": kind,
    }
    if kind == "order":
        data["amount"] = draw(
            st.integers(0, MAX_AMOUNT) | st.floats(0, MAX_AMOUNT, allow_nan=False)
        )
        data["status"] = draw(st.sampled_from(["placed", "refunded", "cancelled"]))
        data["currency"] = draw(optional(st.from_regex(r"[A-Z]{3}", fullmatch=True)))
        data["order_id"] = draw(optional(ids))
        data["items"] = draw(optional(st.integers(0, MAX_ITEMS)))
    elif kind == "login":
        data["channel"] = draw(optional(ids))
        data["session_id"] = draw(optional(ids))
    else:
        data["ticket_id"] = draw(ids)
        action = draw(st.sampled_from(["opened", "agent_replied", "resolved", "reopened", "rated"]))
        data["action"] = action
        survey = draw(st.sampled_from(sorted(SURVEY_RANGES)))
        low, high = SURVEY_RANGES[survey]
        if action == "rated" or draw(st.booleans()):
            data["survey"], data["score"] = survey, draw(st.integers(low, high))
    return {k: v for k, v in data.items() if v is not None}


def id_fields(event: Event) -> list[str]:
    names = ("event_id", "customer_id", "order_id", "ticket_id", "channel", "session_id")
    return [value for name in names if isinstance(value := getattr(event, name, None), str)]


def check_accepted(event: Event) -> None:
    """What holds for every event the contract lets through."""
    assert isinstance(event, EVENT_CLASSES)
    for value in id_fields(event):
        assert 1 <= len(value) <= 128
        assert not any(unicodedata.category(c) in ("Cc", "Cs", "Cf") for c in value), value
    assert 0 <= event.ts_ms < CEILING_MS
    if isinstance(event, OrderEvent):
        assert 0 <= event.amount_micros <= MAX_AMOUNT * 1_000_000
        assert event.items is None or 0 <= event.items <= MAX_ITEMS
    if isinstance(event, SupportEvent) and event.score is not None:
        assert 0 <= event.score <= 10
    record = accepted_record(event, "orders", 3, 2**62)
    assert len(record) == FIELDS_PER_RECORD
    assert all(isinstance(field, str) for field in record)
    json.dumps(record, ensure_ascii=False).encode()  # the script's argument
    wire = encode_event(event)
    assert len(wire) <= MAX_EVENT_BYTES
    again = parse_event(wire, topic_type=event.type, key=event.customer_id.encode())
    assert again == event


@FAST
@given(valid_events())
def test_every_valid_event_builds_a_record_and_round_trips(data: dict[str, Any]) -> None:
    event = build_event(data)
    check_accepted(event)
    assert parse_event(json.dumps(data)) == event


# ---------------------------------------------------------------------------------------
# Hostile input

# number tokens that JSON encoders refuse to write but a message can carry
NUMBER_TOKENS = [
    b"1e400",
    b"-1e400",
    b"1e-400",
    b"NaN",
    b"Infinity",
    b"-Infinity",
    b"-0",
    b"9" * 5000,
    b"-" + b"9" * 400,
    b"1" + b"0" * 30,
    b"4102444800",
    b"4102444799.9999999",
    b"-0.0000001",
    b"1e9",
    b"1000000000.0000001",
]
PLACEHOLDER = "\x00raw-token\x00"

odd_times = st.one_of(
    st.datetimes(timezones=st.none() | offsets).map(datetime.isoformat),
    st.datetimes(timezones=offsets).map(lambda d: d.isoformat().replace("+00:00", "Z")),
    st.text(st.sampled_from("0123456789-+:TZ.Wt "), max_size=40),
    st.integers(-(10**30), 10**30),
    st.floats(),
)
extreme_numbers = st.one_of(
    st.integers(),
    st.integers(-(2**70), 2**70),
    st.floats(),
    st.sampled_from([MAX_AMOUNT, MAX_AMOUNT + 1, MAX_ITEMS + 1, 2**53, 2**63, -1]),
)
# any character at all, with the troublesome ones made common
odd_chars = st.one_of(
    st.characters(categories=["Cc"]),
    st.characters(categories=["Cs"]),
    st.sampled_from('\u2028\u2029\ufeff\u200b\u0301\\"é客🙂'),
    st.characters(exclude_categories=()),
)
odd_text = st.text(odd_chars, max_size=60)
json_values = st.recursive(
    st.none() | st.booleans() | extreme_numbers | odd_text,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(odd_text, inner, max_size=4),
    max_leaves=12,
)
FIELDS = [
    "event_id",
    "customer_id",
    "ts",
    "type",
    "amount",
    "currency",
    "order_id",
    "items",
    "status",
    "channel",
    "session_id",
    "ticket_id",
    "action",
    "survey",
    "score",
]


def dumps(data: object, tokens: list[bytes]) -> bytes:
    """JSON with raw number tokens spliced in where the placeholder stands."""
    text = json.dumps(data, allow_nan=True, ensure_ascii=False).encode("utf-8", "surrogatepass")
    marker = json.dumps(PLACEHOLDER).encode()
    for token in tokens:
        text = text.replace(marker, token, 1)
    return text


@st.composite
def mutated_events(draw: st.DrawFn) -> bytes | str:
    """A valid event with some fields swapped for odd values, dropped or retyped."""
    data: dict[str, Any] = draw(valid_events())
    tokens: list[bytes] = []
    for _ in range(draw(st.integers(1, 4))):
        # mostly the fields this event has, sometimes another type's or an unknown one
        name = draw(st.sampled_from(sorted(data)) | st.sampled_from(FIELDS) | odd_text)
        roll = draw(st.integers(0, 5))
        if roll == 0:
            data.pop(name, None)
        elif roll == 1:
            data[name] = PLACEHOLDER
            tokens.append(draw(st.sampled_from(NUMBER_TOKENS)))
        elif roll == 2:
            data[name] = draw(odd_times if name == "ts" else extreme_numbers)
        elif roll == 3:
            data[name] = draw(odd_text)
        else:
            data[name] = draw(json_values)
    raw = dumps(data, tokens)
    form = draw(st.sampled_from(["bytes", "bytes", "str", "truncated"]))
    if form == "str":
        return raw.decode("utf-8", "surrogatepass")
    if form == "truncated":
        return raw[: draw(st.integers(0, len(raw)))]
    return raw


def check_parsed(result: Event | Rejection) -> None:
    if isinstance(result, Rejection):
        # precise reasons for everything generated here: the last resort is never needed
        assert result.reason in REJECT_REASONS and result.reason != "internal_error", result
        assert result.detail
        result.detail.encode()
    else:
        check_accepted(result)


routing = st.fixed_dictionaries(
    {
        "topic_type": st.none() | st.sampled_from(EVENT_TYPES),
        "key": st.none() | st.binary(max_size=20),
        "latest_ms": st.none() | st.integers(-(2**63), 2**63),
    }
)


@FAST
@given(st.binary(max_size=400), routing)
def test_any_bytes_parse_to_an_event_or_a_rejection(raw: bytes, where: dict[str, Any]) -> None:
    check_parsed(parse_event(raw, **where))


@FAST
@given(st.text(st.characters(exclude_categories=()), max_size=200), routing)
def test_any_text_parses_to_an_event_or_a_rejection(raw: str, where: dict[str, Any]) -> None:
    check_parsed(parse_event(raw, **where))


@FAST
@given(json_values.map(lambda v: dumps(v, [])), routing)
def test_any_json_parses_to_an_event_or_a_rejection(raw: bytes, where: dict[str, Any]) -> None:
    check_parsed(parse_event(raw, **where))


@settings(FAST, max_examples=400)
@given(mutated_events(), routing)
def test_mutated_events_parse_to_an_event_or_a_rejection(
    raw: bytes | str, where: dict[str, Any]
) -> None:
    check_parsed(parse_event(raw, **where))


hostile_values = st.one_of(
    st.sampled_from(NUMBER_TOKENS).map(lambda token: (PLACEHOLDER, token)),
    extreme_numbers.map(lambda v: (v, None)),
    odd_text.map(lambda v: (v, None)),
    json_values.map(lambda v: (v, None)),
)


@settings(FAST, max_examples=300)
@given(valid_events(), st.data())
def test_any_value_in_any_field_is_bounded_or_rejected(
    data: dict[str, Any], draw: st.DataObject
) -> None:
    """One field of a valid event replaced: the event still meets every bound, or its
    rejection names the field's fault."""
    name = draw.draw(st.sampled_from(sorted(set(data) - {"type"})))
    value, token = draw.draw(hostile_values)
    data[name] = value
    result = parse_event(dumps(data, [token] if token else []))
    check_parsed(result)
    if isinstance(result, Rejection):
        expected = {"ts": ("invalid_timestamp", "naive_timestamp")}.get(
            name, ("invalid_field", "missing_field")
        )
        # tokens beyond what the parser holds, and text it cannot hold, are not JSON
        assert result.reason in (*expected, "invalid_json"), (name, result)


NUMERIC_FIELDS = [("order", "amount"), ("order", "items"), ("support", "score"), ("login", "ts")]


@FAST
@given(st.sampled_from(NUMERIC_FIELDS), st.data())
def test_every_number_is_bounded(where: tuple[str, str], draw: st.DataObject) -> None:
    kind, name = where
    data = draw.draw(valid_events(kind))
    value, token = draw.draw(
        st.sampled_from(NUMBER_TOKENS).map(lambda t: (PLACEHOLDER, t))
        | extreme_numbers.map(lambda v: (v, None))
    )
    data[name] = value
    result = parse_event(dumps(data, [token] if token else []))
    check_parsed(result)
    if isinstance(result, Rejection):
        assert result.reason in ("invalid_field", "invalid_timestamp", "invalid_json"), result


@FAST
@given(odd_times)
def test_any_time_is_accepted_in_range_or_rejected_as_a_timestamp(ts: object) -> None:
    data = {"event_id": "e", "customer_id": "c", "type": "login", "ts": ts}
    result = parse_event(json.dumps(data, allow_nan=True))
    if isinstance(result, Rejection):
        assert result.reason in ("invalid_timestamp", "naive_timestamp"), result
    else:
        assert EPOCH <= result.ts < TS_CEILING
        assert result.ts.tzinfo == UTC
