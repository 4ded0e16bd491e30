"""The producer contract, row by row."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone

import pytest

from contract import events
from contract.events import (
    DEFAULT_MAX_FUTURE_SECONDS,
    MAX_AMOUNT,
    MAX_EVENT_BYTES,
    MAX_ITEMS,
    REJECT_REASONS,
    InvalidEvent,
    OrderEvent,
    Rejection,
    build_event,
    encode_event,
    parse_event,
)
from retention.config import Settings

BASE = {"event_id": "e1", "customer_id": "c1", "ts": "2024-03-13T10:21:14Z"}


def raw(**fields: object) -> bytes:
    return json.dumps({**BASE, **fields}).encode()


@pytest.mark.parametrize(
    ("message", "reason"),
    [
        (b"{oops", "invalid_json"),
        (b"[1, 2]", "not_an_object"),
        (b'"a string"', "not_an_object"),
        (raw(type="purchase"), "unknown_type"),
        (json.dumps({"event_id": "e", "customer_id": "c", "ts": 1}).encode(), "missing_field"),
        (raw(type="order"), "missing_field"),  # amount is required
        (raw(type="order", amount=-1), "invalid_field"),
        (raw(type="order", amount="12"), "invalid_field"),  # numbers only, not strings
        (raw(type="order", amount=1, currency="usd"), "invalid_field"),
        (raw(type="order", amount=1, status="shipped"), "invalid_field"),
        (raw(type="login", event_id=""), "invalid_field"),
        (raw(type="login", customer_id="x" * 129), "invalid_field"),
        (raw(type="login", ts="2024-03-13T10:21:14"), "naive_timestamp"),
        (raw(type="login", ts="13/03/2024"), "invalid_timestamp"),
        (raw(type="login", ts=True), "invalid_timestamp"),
        (raw(type="login", ts="1710325274"), "invalid_timestamp"),  # epoch must be a number
        (raw(type="login", ts=1e300), "invalid_timestamp"),
        (raw(type="support", ticket_id="t", action="closed"), "invalid_field"),
        (raw(type="support", ticket_id="t", action="rated"), "missing_field"),
        (
            raw(type="support", ticket_id="t", action="rated", survey="nps", score=11),
            "invalid_field",
        ),
        (
            raw(type="support", ticket_id="t", action="rated", survey="csat", score=0),
            "invalid_field",
        ),
        (
            raw(type="support", ticket_id="t", action="rated", survey="ces", score=8),
            "invalid_field",
        ),
        (raw(type="support", action="opened"), "missing_field"),
        # every number is bounded
        (raw(type="order", amount=1e308), "invalid_field"),
        (raw(type="order", amount=MAX_AMOUNT + 0.01), "invalid_field"),
        (raw(type="order", amount=10**30), "invalid_field"),
        (raw(type="order", amount=1, items=MAX_ITEMS + 1), "invalid_field"),
        (raw(type="order", amount=1, items=-1), "invalid_field"),
        (raw(type="support", ticket_id="t", action="opened", score=10**6), "invalid_field"),
        (raw(type="support", ticket_id="t", action="opened", score=-1), "invalid_field"),
        (
            b'{"event_id":"e","customer_id":"c","ts":1,"type":"order","amount":1e400}',
            "invalid_field",
        ),
        (b'{"event_id":"e","customer_id":"c","ts":1,"type":"order","amount":NaN}', "invalid_field"),
        (
            b'{"event_id":"e","customer_id":"c","ts":1,"type":"order","amount":1,"items":'
            + b"9" * 5000
            + b"}",
            "invalid_json",
        ),
        # times from 1970 (inclusive) to 2100 (exclusive), whatever the offset
        (raw(type="login", ts="9999-12-31T23:59:59Z"), "invalid_timestamp"),
        (
            raw(type="login", ts="9999-12-31T23:30:00-01:00"),
            "invalid_timestamp",
        ),  # past year 9999 in UTC
        (
            raw(type="login", ts="0001-01-01T00:00:00+01:00"),
            "invalid_timestamp",
        ),  # before year 1 in UTC
        (raw(type="login", ts="2100-01-01T00:00:00Z"), "invalid_timestamp"),
        (
            raw(type="login", ts="2099-12-31T23:30:00-01:00"),
            "invalid_timestamp",
        ),  # 2099 locally, 2100 in UTC
        (raw(type="login", ts="1969-12-31T23:59:59.999Z"), "invalid_timestamp"),
        (raw(type="login", ts="1970-01-01T00:30:00+01:00"), "invalid_timestamp"),  # 1969 in UTC
        (raw(type="login", ts=-1), "invalid_timestamp"),
        (raw(type="login", ts=4102444800), "invalid_timestamp"),  # 2100-01-01
        (raw(type="login", ts=10**20), "invalid_timestamp"),
        (
            b'{"event_id":"e","customer_id":"c","type":"login","ts":' + b"9" * 400 + b"}",
            "invalid_timestamp",
        ),  # a big int, not a float
        (b'{"event_id":"e","customer_id":"c","type":"login","ts":1e400}', "invalid_timestamp"),
        (b'{"event_id":"e","customer_id":"c","type":"login","ts":-Infinity}', "invalid_timestamp"),
        # ids without control characters
        (raw(type="login", customer_id="c\n1"), "invalid_field"),
        (raw(type="login", event_id="e\r"), "invalid_field"),
        (raw(type="login", event_id="\x00"), "invalid_field"),
        (raw(type="login", channel="web\x7f"), "invalid_field"),
        (raw(type="login", session_id="s\x85"), "invalid_field"),  # C1 controls too
        (raw(type="order", amount=1, order_id="o\t1"), "invalid_field"),
        (raw(type="support", ticket_id="t\x1b", action="opened"), "invalid_field"),
        # text that is not JSON at all
        (b'{"event_id":"e\xff","customer_id":"c","ts":1,"type":"login"}', "invalid_json"),
        (b'{"event_id":"\\ud800","customer_id":"c","ts":1,"type":"login"}', "invalid_json"),
        ('{"event_id":"\ud800","customer_id":"c","ts":1,"type":"login"}', "invalid_json"),
        (b"[" * 100_000 + b"]" * 100_000, "too_large"),
        (b"[" * 10_000 + b"]" * 10_000, "invalid_json"),  # nested past the parser's depth
        (b"", "invalid_json"),
        (raw(type="login", padding="x" * MAX_EVENT_BYTES), "too_large"),
    ],
)
def test_rejections_carry_a_closed_reason(message: bytes | str, reason: str) -> None:
    result = parse_event(message)
    assert isinstance(result, Rejection)
    assert result.reason == reason
    assert result.reason in REJECT_REASONS
    assert result.detail


@pytest.mark.parametrize(
    ("ts", "expected_ms"),
    [
        ("2024-03-13T10:21:14Z", 1710325274000),
        ("2024-03-13T11:21:14+01:00", 1710325274000),  # offsets are converted to UTC
        ("2024-03-13T10:21:14.123456Z", 1710325274123),  # ms precision, truncated
        (1710325274, 1710325274000),
        (1710325274.5, 1710325274500),
        (0, 0),
        ("1970-01-01T00:00:00Z", 0),  # the floor is inclusive
        ("1970-01-01T01:00:00+01:00", 0),
        ("2099-12-31T23:59:59.999Z", 4102444799999),  # the last millisecond before 2100
        ("2100-01-01T00:59:59+01:00", 4102444799000),  # 2100 locally, 2099 in UTC
        (4102444799, 4102444799000),
    ],
)
def test_timestamps_become_utc_milliseconds(ts: object, expected_ms: int) -> None:
    event = parse_event(raw(type="login", ts=ts))
    assert not isinstance(event, Rejection)
    assert event.ts.tzinfo == UTC
    assert event.ts_ms == expected_ms


@pytest.mark.parametrize(
    ("topic_type", "key", "reason"),
    [
        ("login", b"c1", "type_mismatch"),
        ("order", b"someone-else", "key_mismatch"),
        ("order", b"c1", None),
        ("order", None, None),  # a keyless message is accepted; its key is not checked
        (None, b"c1", None),
    ],
)
def test_topic_and_key_must_match(
    topic_type: object, key: bytes | None, reason: str | None
) -> None:
    result = parse_event(raw(type="order", amount=3), topic_type=topic_type, key=key)  # type: ignore[arg-type]
    assert (result.reason if isinstance(result, Rejection) else None) == reason


def test_amounts_are_exact_millionths() -> None:
    event = build_event({**BASE, "type": "order", "amount": 19.99})
    assert isinstance(event, OrderEvent)
    assert event.amount_micros == 19_990_000
    assert (
        sum(
            build_event({**BASE, "type": "order", "amount": 0.1}).amount_micros  # type: ignore[union-attr]
            for _ in range(3)
        )
        == 300_000
    )


def test_encoded_event_round_trips() -> None:
    event = build_event(
        {
            **BASE,
            "type": "support",
            "ticket_id": "t",
            "action": "rated",
            "survey": "nps",
            "score": 0,
            "extra": "ignored",
        }
    )
    again = parse_event(encode_event(event))
    assert again == event
    assert b"extra" not in encode_event(event)


def test_build_event_raises_with_the_reason() -> None:
    with pytest.raises(InvalidEvent) as info:
        build_event({**BASE, "type": "order", "amount": -5})
    assert info.value.rejection.reason == "invalid_field"
    assert "amount" in str(info.value)


def test_datetime_objects_need_a_zone() -> None:
    with pytest.raises(InvalidEvent):
        build_event({**BASE, "type": "login", "ts": datetime(2024, 1, 1)})
    event = build_event({**BASE, "type": "login", "ts": datetime(2024, 1, 1, tzinfo=UTC)})
    assert event.ts_ms == 1704067200000


def test_the_largest_amount_is_exact_in_millionths() -> None:
    event = build_event({**BASE, "type": "order", "amount": MAX_AMOUNT, "items": MAX_ITEMS})
    assert isinstance(event, OrderEvent)
    assert event.amount_micros == 10**19
    # past 2^53 millionths the amount's decimal form is scaled, not the float product
    big = build_event({**BASE, "type": "order", "amount": 1_234_567_890_123.45})
    assert isinstance(big, OrderEvent)
    assert big.amount_micros == 1_234_567_890_123_450_000
    assert round(1_234_567_890_123.45 * 1_000_000) != 1_234_567_890_123_450_000
    with pytest.raises(InvalidEvent) as info:
        build_event({**BASE, "type": "order", "amount": 1e308})
    assert info.value.rejection.reason == "invalid_field"


MINUS_ONE = timezone(timedelta(hours=-1))
PLUS_ONE = timezone(timedelta(hours=1))


@pytest.mark.parametrize(
    "ts",
    [
        "9999-12-31T23:30:00-01:00",
        "0001-01-01T00:00:00+01:00",
        "9999-12-31T23:59:59Z",
        datetime(9999, 12, 31, 23, 30, tzinfo=MINUS_ONE),  # the same, as objects
        datetime(1, 1, 1, tzinfo=PLUS_ONE),
        datetime(2100, 1, 1, tzinfo=UTC),
        datetime(1969, 12, 31, 23, 59, tzinfo=UTC),
        -0.5,
        float("inf"),
        10**400,
    ],
)
def test_build_event_turns_odd_times_into_invalid_event(ts: object) -> None:
    with pytest.raises(InvalidEvent) as info:
        build_event({**BASE, "type": "login", "ts": ts})
    assert info.value.rejection.reason == "invalid_timestamp"


@pytest.mark.parametrize(
    ("ts_ms", "latest_ms", "reason"),
    [
        (1_000, None, None),  # no margin: a backtest judges by its own data
        (1_000, 1_000, None),  # the limit itself is allowed
        (1_001, 1_000, "future_timestamp"),
        (4_102_444_799_000, 0, "future_timestamp"),
        (0, 0, None),
    ],
)
def test_events_later_than_the_margin_are_future(
    ts_ms: int, latest_ms: int | None, reason: str | None
) -> None:
    message = raw(type="login", ts=ts_ms / 1000)
    parsed = parse_event(message, latest_ms=latest_ms)
    assert (parsed.reason if isinstance(parsed, Rejection) else None) == reason
    if reason is None:
        assert build_event(json.loads(message), latest_ms=latest_ms).ts_ms == ts_ms
    else:
        with pytest.raises(InvalidEvent) as info:
            build_event(json.loads(message), latest_ms=latest_ms)
        assert info.value.rejection.reason == reason


def test_the_default_margin_is_the_settings_default(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Settings().max_future_seconds == DEFAULT_MAX_FUTURE_SECONDS
    monkeypatch.setenv("RETENTION_MAX_FUTURE_SECONDS", "60")
    assert Settings().max_future_seconds == 60


@pytest.mark.parametrize(
    ("customer_id", "key", "reason"),
    [
        ("café-7", "café-7".encode(), None),  # keys are the UTF-8 form of the id
        ("客户-1", "客户-1".encode(), None),
        ("🙂", "🙂".encode(), None),
        ("café-7", "café-7".encode("latin-1"), "key_mismatch"),
        ("café-7", b"\xff\xfe", "key_mismatch"),  # a key that is not UTF-8 at all
        ("cafe\u0301-7", "café-7".encode(), "key_mismatch"),  # no normalisation: bytes compare
    ],
)
def test_non_ascii_ids_are_checked_against_their_key(
    customer_id: str, key: bytes, reason: str | None
) -> None:
    result = parse_event(raw(type="login", customer_id=customer_id), key=key)
    assert (result.reason if isinstance(result, Rejection) else None) == reason


@pytest.mark.parametrize(
    ("field", "value"),
    [
        # a right-to-left override: "c-1\u202egnp.exe" shows as "c-1exe.png"
        ("customer_id", "c-1\u202egnp.exe"),
        ("customer_id", "c-1\u200b"),  # zero-width space: two ids that look the same
        ("customer_id", "\ufeffc-1"),  # a byte-order mark at the start
        ("customer_id", "c\u2066-1\u2069"),  # an isolate
        ("event_id", "e\u200d1"),  # zero-width joiner
        ("customer_id", "c\U000e0041"),  # a tag character
        ("customer_id", "c\u00ad1"),  # soft hyphen
    ],
)
def test_ids_with_format_characters_are_rejected(field: str, value: str) -> None:
    result = parse_event(raw(type="login", **{field: value}))
    assert isinstance(result, Rejection)
    assert result.reason == "invalid_field"
    assert "format character" in result.detail
    assert f"U+{ord(next(c for c in value if c not in 'c-1e.gnpx')):04X}" in result.detail


@pytest.mark.parametrize("bad", ["c\x00", "c\u2028\n", "\ud800", "a\udcffb"])
def test_build_event_refuses_ids_that_no_message_can_carry(bad: str) -> None:
    with pytest.raises(InvalidEvent) as info:
        build_event({**BASE, "type": "login", "customer_id": bad})
    assert info.value.rejection.reason == "invalid_field"
    info.value.rejection.detail.encode()  # details are always valid UTF-8


def test_the_size_limit_applies_before_parsing() -> None:
    fits = raw(type="login", padding="x")
    fits = fits[:-1] + b" " * (MAX_EVENT_BYTES - len(fits)) + b"}"
    assert len(fits) == MAX_EVENT_BYTES
    assert not isinstance(parse_event(fits), Rejection)
    assert not isinstance(parse_event(fits.decode()), Rejection)
    over = fits[:-1] + b" }"
    rejection = parse_event(over)
    assert isinstance(rejection, Rejection) and rejection.reason == "too_large"
    # a str is measured in UTF-8 bytes, not characters
    wide = json.dumps(
        {**BASE, "type": "login", "note": "é" * (MAX_EVENT_BYTES // 2)}, ensure_ascii=False
    )
    assert len(wide) < MAX_EVENT_BYTES
    assert parse_event(wide) == Rejection(
        "too_large", f"{len(wide.encode())} bytes, more than {MAX_EVENT_BYTES}"
    )


def test_build_event_refuses_an_event_whose_encoding_is_too_large(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # bounded fields keep every event far below the limit; a lower one shows the check
    event = build_event({**BASE, "type": "login", "channel": "c" * 100})
    size = len(encode_event(event))
    monkeypatch.setattr(events, "MAX_EVENT_BYTES", size - 1)
    with pytest.raises(InvalidEvent) as info:
        build_event({**BASE, "type": "login", "channel": "c" * 100})
    assert info.value.rejection.reason == "too_large"
    assert build_event({**BASE, "type": "login"}).type == "login"


def test_an_unexpected_failure_becomes_an_internal_error(monkeypatch: pytest.MonkeyPatch) -> None:
    class Broken:
        def validate_json(self, raw: object) -> object:
            raise RecursionError("maximum recursion depth exceeded")

    monkeypatch.setattr(events, "_ADAPTER", Broken())
    result = parse_event(raw(type="login"))
    assert result == Rejection("internal_error", "RecursionError: maximum recursion depth exceeded")


def test_reasons_are_one_closed_list() -> None:
    for reason in ("future_timestamp", "too_large", "internal_error", "unknown_currency"):
        assert reason in REJECT_REASONS
    assert len(set(REJECT_REASONS)) == len(REJECT_REASONS)


def test_orders_and_logins_carry_customer_attributes() -> None:
    base = {"event_id": "e", "customer_id": "c", "ts": 1_700_000_000}
    order = build_event(
        {**base, "type": "order", "amount": 5, "country": "de", "channel": "app", "shop": "eu"}
    )
    assert order.dimensions() == {"country": "DE", "channel": "app", "shop": "eu"}
    login = build_event({**base, "type": "login", "channel": "web", "country": "JP"})
    assert login.dimensions() == {"country": "JP", "channel": "web"}
    # a support event names none; an extra field is ignored as any other
    ticket = {**base, "type": "support", "ticket_id": "t", "action": "opened", "country": "FR"}
    assert build_event(ticket).dimensions() == {}
    for bad in ({"country": "XX"}, {"country": "DEU"}, {"country": "D"}, {"shop": ""}):
        rejected = parse_event(json.dumps({**base, "type": "order", "amount": 1, **bad}).encode())
        assert isinstance(rejected, Rejection) and rejected.reason == "invalid_field", bad
