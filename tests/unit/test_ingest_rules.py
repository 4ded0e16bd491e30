"""The HTTP ingest rules without a server: bodies, batches, verdicts, token buckets."""

from __future__ import annotations

import gzip
import json
import time
from collections.abc import Mapping
from typing import Any

import pytest

from contract.events import Event, build_event
from retention.ingest_rules import (
    RateLimiter,
    RequestError,
    TokenBucket,
    event_items,
    inflate,
    retry_after,
    verdicts,
)

LIMIT = 1024


def validate(item: Mapping[str, Any]) -> Event:
    return build_event(dict(item), latest_ms=int((time.time() + 86400) * 1000))


def order(n: int, **extra: Any) -> dict[str, Any]:
    return {
        "event_id": f"o-{n}",
        "customer_id": "c",
        "ts": 1.7e9,
        "type": "order",
        "amount": 1,
        **extra,
    }


def status_of(call: Any) -> int:
    with pytest.raises(RequestError) as caught:
        call()
    return caught.value.status


@pytest.mark.parametrize(
    ("body", "encoding", "expected"),
    [
        (b"x" * LIMIT, None, b"x" * LIMIT),  # exactly the limit passes
        (b"{}", "identity", b"{}"),
        (gzip.compress(b"x" * LIMIT), "gzip", b"x" * LIMIT),
        (gzip.compress(b"{}"), "x-gzip", b"{}"),  # the old name of gzip
        (gzip.compress(b"ab") + gzip.compress(b"cd"), "GZIP", b"abcd"),  # two members
    ],
)
def test_inflate_passes_bodies_within_the_limit(
    body: bytes, encoding: str | None, expected: bytes
) -> None:
    assert inflate(body, encoding, LIMIT) == expected


@pytest.mark.parametrize(
    ("body", "encoding", "status"),
    [
        (b"x" * (LIMIT + 1), None, 413),
        (gzip.compress(b"x" * (LIMIT + 1)), "gzip", 413),
        (gzip.compress(b"\0" * 50_000_000), "gzip", 413),  # a zip bomb of 50 MB in ~50 KB
        (gzip.compress(b"x" * 600) + gzip.compress(b"y" * 600), "gzip", 413),  # members add up
        (b"{}", "gzip", 400),  # not gzip
        (gzip.compress(b"x" * 100)[:-10], "gzip", 400),  # truncated
        (b"{}", "br", 415),
        (b"{}", "deflate", 415),
    ],
)
def test_inflate_refuses(body: bytes, encoding: str, status: int) -> None:
    assert status_of(lambda: inflate(body, encoding, LIMIT)) == status


@pytest.mark.parametrize(
    ("payload", "endpoint", "status"),
    [
        (b"{", "events", 400),
        (b"[]", "events", 400),  # /v1/events takes one object
        (b'"x"', "events", 400),
        (b"NaN", "events", 400),  # Python's extension, not JSON
        (b'{"amount": Infinity}', "events", 400),
        (b"[{}]", "batch", 400),  # a batch is {"events": [...]}
        (b'{"events": {}}', "batch", 400),
        (b'{"events": []}', "batch", 400),
        (b'{"events": [1, 2, 3, 4]}', "batch", 413),  # over max_events = 3
        (b"[" * 100_000, "batch", 400),  # nesting past the recursion limit
    ],
)
def test_event_items_refuses(payload: bytes, endpoint: Any, status: int) -> None:
    assert status_of(lambda: event_items(payload, endpoint, 3)) == status


def test_event_items_returns_the_items_unjudged() -> None:
    assert event_items(b'{"a": 1}', "events", 3) == [{"a": 1}]
    assert event_items(b'{"events": [1, {"b": 2}, null]}', "batch", 3) == [1, {"b": 2}, None]


def test_verdicts_judge_each_item_and_keep_their_order() -> None:
    items: list[Any] = [
        order(1),
        [],
        order(2, ts="2024-01-01T00:00:00"),
        order(3, ts=time.time() + 3 * 86400),
        {"event_id": "x" * 200, "type": "login"},
        order(4, note="y" * 40_000),
    ]
    judged = verdicts(items, validate, len(json.dumps(items)))
    body = judged.body()
    assert (body["accepted"], body["rejected"], judged.status()) == (1, 5, 202)
    assert [(r["index"], r["status"], r.get("reason")) for r in body["results"]] == [
        (0, "accepted", None),
        (1, "rejected", "not_an_object"),
        (2, "rejected", "naive_timestamp"),
        (3, "rejected", "future_timestamp"),
        (4, "rejected", "invalid_field"),  # an id of 200 characters
        (5, "rejected", "too_large"),
    ]
    # an id the contract refuses is not echoed back
    assert [r["event_id"] for r in body["results"]] == ["o-1", None, "o-2", "o-3", None, "o-4"]


def test_verdicts_of_only_rejections_are_a_422() -> None:
    judged = verdicts([{"type": "order"}], validate, 20)
    assert judged.status() == 422 and judged.accepted == []


def test_a_validator_that_raises_costs_one_event() -> None:
    def broken(item: Mapping[str, Any]) -> Event:
        raise RuntimeError("bug")

    judged = verdicts([order(1)], broken, 10)
    assert [r.reason for r in judged.rejections] == ["internal_error"]


@pytest.mark.parametrize(
    ("rate", "burst", "times", "waits"),
    [
        # a new bucket is full: burst requests pass at once, the next waits 1/rate
        (2.0, 3, [0, 0, 0, 0], [0, 0, 0, 0.5]),
        # refills at rate, never above burst
        (1.0, 2, [0, 0, 10, 10, 10], [0, 0, 0, 0, 1.0]),
        # half a token after 0.5 s of a 1/s bucket: half a second more to wait
        (1.0, 1, [0, 0.5], [0, 0.5]),
    ],
)
def test_token_bucket(rate: float, burst: int, times: list[float], waits: list[float]) -> None:
    bucket = TokenBucket(rate, burst)
    assert [pytest.approx(bucket.take(t)) for t in times] == waits


def test_rate_limiter_keeps_one_bucket_per_key() -> None:
    limiter = RateLimiter(rate=1.0, burst=1)
    assert limiter.wait("a", 0) == 0
    assert limiter.wait("a", 0) > 0
    assert limiter.wait("b", 0) == 0


@pytest.mark.parametrize(("seconds", "header"), [(0.01, "1"), (1.0, "1"), (1.2, "2"), (30, "30")])
def test_retry_after_is_whole_seconds_rounded_up(seconds: float, header: str) -> None:
    assert retry_after(seconds) == header


@pytest.mark.parametrize(
    ("rate", "burst", "costs", "waits"),
    [
        # 10 a second, 20 at once: a request of 15 events, then one of 10 waits for 5
        (10.0, 20, [(0, 15), (0, 10)], [0, 0.5]),
        # a cost over the burst needs a full bucket, and empties it
        (10.0, 20, [(0, 50), (0, 1)], [0, 0.1]),
        (10.0, 20, [(0, 1), (0, 50)], [0, 0.1]),
    ],
)
def test_token_bucket_takes_a_cost(
    rate: float, burst: int, costs: list[tuple[float, float]], waits: list[float]
) -> None:
    bucket = TokenBucket(rate, burst)
    assert [pytest.approx(bucket.take(t, cost)) for t, cost in costs] == waits


def test_rate_limiter_counts_events_and_bytes_per_key() -> None:
    limiter = RateLimiter(
        rate=100.0, burst=100, event_rate=10.0, event_burst=20, byte_rate=1000.0, byte_burst=2000
    )
    assert limiter.wait_volume("a", 0, events=20, size=100) == (0.0, None)
    # over the events: the wait until 5 more are allowed, and neither bucket is taken from
    wait, limit = limiter.wait_volume("a", 0, events=5, size=100)
    assert (pytest.approx(wait), limit) == (0.5, "events")
    assert limiter.wait_volume("a", 0.5, events=5, size=100) == (0.0, None)
    # over the bytes: refilled to 2,000 by 0.5 s, 1,900 left after the last request
    wait, limit = limiter.wait_volume("a", 0.5, events=0, size=2000)
    assert (pytest.approx(wait), limit) == (0.1, "bytes")
    # another key has buckets of its own
    assert limiter.wait_volume("b", 0, events=20, size=2000) == (0.0, None)


def test_a_rate_limiter_without_volume_limits_counts_only_requests() -> None:
    limiter = RateLimiter(rate=1.0, burst=1)
    assert limiter.wait_volume("a", 0, events=10**9, size=10**12) == (0.0, None)
