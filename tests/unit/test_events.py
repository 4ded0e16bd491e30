"""The producer contract, row by row."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from streams.events import (
    REJECT_REASONS,
    InvalidEvent,
    OrderEvent,
    Rejection,
    build_event,
    encode_event,
    parse_event,
)

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
    ],
)
def test_rejections_carry_a_closed_reason(message: bytes, reason: str) -> None:
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
