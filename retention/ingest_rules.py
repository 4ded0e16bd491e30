"""The HTTP ingest API's rules, without I/O: bodies, batches, per-event verdicts, rates.

:mod:`retention.ingest` serves them; keeping them here lets the unit tests check every
limit and status without a server.

Statuses (docs/sending-events.md, "HTTP ingest"): ``400`` malformed body, ``413`` body or
batch too large (a gzip body is judged by what it inflates to, so a small zip bomb is
refused too), ``415`` an encoding other than gzip or identity, ``429`` over the key's rate
of requests, events or bytes.
"""

from __future__ import annotations

import json
import math
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from contract.events import MAX_EVENT_BYTES, Event, InvalidEvent, Rejection

Endpoint = Literal["events", "batch"]
ENDPOINTS: tuple[Endpoint, ...] = ("events", "batch")
#: Every status the two endpoints answer with: the exporter reports each from 0.
STATUSES: tuple[int, ...] = (202, 400, 401, 403, 408, 413, 415, 422, 429, 500, 503)


class RequestError(Exception):
    """A request refused whole: its status, a closed ``error`` code and a detail."""

    def __init__(
        self, status: int, error: str, detail: str, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(f"{status} {error}: {detail}")
        self.status, self.error, self.detail = status, error, detail
        self.headers = headers or {}

    def body(self) -> dict[str, str]:
        return {"error": self.error, "detail": self.detail}


def too_large(detail: str) -> RequestError:
    return RequestError(413, "too_large", detail)


def malformed(detail: str) -> RequestError:
    return RequestError(400, "malformed", detail)


def inflate(body: bytes, encoding: str | None, limit: int) -> bytes:
    """The body as JSON bytes: gunzipped when ``encoding`` says gzip, never over ``limit``.

    Decompression stops one byte past ``limit``, so a zip bomb costs at most that much
    memory before its 413. Concatenated gzip members (RFC 1952) are read one after another.
    """
    coding = (encoding or "identity").strip().lower()
    if coding == "identity":
        if len(body) > limit:
            raise too_large(f"body of {len(body)} bytes, more than {limit}")
        return body
    if coding not in ("gzip", "x-gzip"):
        raise RequestError(415, "unsupported_encoding", f"Content-Encoding {coding!r}: use gzip")
    out = bytearray()
    rest = body
    while rest:
        inflater = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
        try:
            out += inflater.decompress(rest, limit + 1 - len(out))
        except zlib.error as exc:
            raise malformed(f"not gzip: {exc}") from exc
        if len(out) > limit:
            raise too_large(f"body inflates to more than {limit} bytes")
        if not inflater.eof:
            raise malformed("gzip stream is truncated")
        rest = inflater.unused_data
    return bytes(out)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _loads(payload: bytes) -> Any:
    try:
        # NaN and Infinity are Python's extensions, not JSON
        return json.loads(payload, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as exc:
        raise malformed(f"not JSON: {str(exc)[:200]}") from exc


def event_items(payload: bytes, endpoint: Endpoint, max_events: int) -> list[Any]:
    """The events a body holds, not yet judged.

    ``/v1/events`` takes one event object; ``/v1/batch`` takes ``{"events": [...]}`` with 1
    to ``max_events`` items. An item that is not an event is judged later, on its own.
    """
    body = _loads(payload)
    if endpoint == "events":
        if not isinstance(body, dict):
            raise malformed("the body must be one event, a JSON object")
        return [body]
    if not isinstance(body, dict) or not isinstance(body.get("events"), list):
        raise malformed('the body must be an object {"events": [...]}')
    items: list[Any] = body["events"]
    if not items:
        raise malformed("the batch holds no event")
    if len(items) > max_events:
        raise too_large(f"{len(items)} events, more than {max_events} per batch")
    return items


def judge(item: Any, validate: Callable[[Mapping[str, Any]], Event]) -> Event | Rejection:
    """One item's verdict under ``validate`` (the producer API's); never raises."""
    if not isinstance(item, dict):
        return Rejection("not_an_object", f"an event is a JSON object, not {type(item).__name__}")
    try:
        return validate(item)
    except InvalidEvent as exc:
        return exc.rejection
    except Exception as exc:  # a bug must cost one event, not the request
        return Rejection("internal_error", f"{type(exc).__name__}"[:300])


def _event_id(item: Any) -> str | None:
    value = item.get("event_id") if isinstance(item, dict) else None
    return value if isinstance(value, str) and len(value) <= 128 else None


@dataclass
class Verdicts:
    """Per item of a request: its event, or why it was rejected."""

    items: list[Any]
    outcomes: list[Event | Rejection]

    @property
    def accepted(self) -> list[Event]:
        return [o for o in self.outcomes if not isinstance(o, Rejection)]

    @property
    def rejections(self) -> list[Rejection]:
        return [o for o in self.outcomes if isinstance(o, Rejection)]

    def status(self) -> int:
        """202 when any event was accepted (and, by then, acknowledged); 422 when none."""
        return 202 if self.accepted else 422

    def body(self) -> dict[str, Any]:
        results: list[dict[str, Any]] = []
        for index, (item, outcome) in enumerate(zip(self.items, self.outcomes, strict=True)):
            entry: dict[str, Any] = {"index": index, "event_id": _event_id(item)}
            if isinstance(outcome, Rejection):
                entry.update(status="rejected", reason=outcome.reason, detail=outcome.detail)
            else:
                entry["status"] = "accepted"
            results.append(entry)
        return {
            "accepted": len(self.accepted),
            "rejected": len(self.rejections),
            "results": results,
        }


def _oversized(item: Any) -> Rejection | None:
    """An item over :data:`MAX_EVENT_BYTES` as compact JSON, as the topics would refuse it
    (the model would drop unknown fields and shrink it, hiding the size from the check)."""
    size = len(json.dumps(item, separators=(",", ":"), ensure_ascii=False).encode())
    if size <= MAX_EVENT_BYTES:
        return None
    return Rejection("too_large", f"{size} bytes, more than {MAX_EVENT_BYTES}")


def verdicts(
    items: list[Any], validate: Callable[[Mapping[str, Any]], Event], payload_size: int
) -> Verdicts:
    """Each item's verdict. Sizes are measured only when the whole body could hold an
    item over the limit, which small requests cannot."""
    sized = payload_size > MAX_EVENT_BYTES
    return Verdicts(
        items,
        [(sized and _oversized(item)) or judge(item, validate) for item in items],
    )


@dataclass
class TokenBucket:
    """``rate`` tokens a second up to ``burst``; a request takes its cost (one, or its
    events, or its bytes). A cost over the burst needs a full bucket and empties it, so
    that a request the burst cannot hold is slowed, not refused for good."""

    rate: float
    burst: float
    tokens: float = -1.0
    at: float = 0.0

    def wait(self, now: float, cost: float = 1.0) -> float:
        """The seconds until ``cost`` can be taken (0: now); takes nothing."""
        if math.isinf(self.rate):  # no limit (and no inf * 0 to make a NaN)
            return 0.0
        if self.tokens < 0:  # a new bucket starts full
            self.tokens, self.at = self.burst, now
        self.tokens = min(self.burst, self.tokens + (now - self.at) * self.rate)
        self.at = now
        cost = min(cost, self.burst)
        return 0.0 if self.tokens >= cost else (cost - self.tokens) / self.rate

    def take(self, now: float, cost: float = 1.0) -> float:
        """0 when ``cost`` was taken, else the seconds until it will be there."""
        wait = self.wait(now, cost)
        if wait == 0 and not math.isinf(self.rate):
            self.tokens -= min(cost, self.burst)
        return wait


Volume = Literal["events", "bytes"]


@dataclass
class RateLimiter:
    """Token buckets per key name: requests, events and bytes. They live in this process's
    memory: N servers behind a load balancer let a key through at up to N times the rate.
    Without ``event_rate`` and ``byte_rate`` only requests are limited."""

    rate: float
    burst: float
    event_rate: float = math.inf
    event_burst: float = math.inf
    byte_rate: float = math.inf
    byte_burst: float = math.inf
    buckets: dict[str, TokenBucket] = field(default_factory=dict)
    volumes: dict[str, tuple[TokenBucket, TokenBucket]] = field(default_factory=dict)

    def wait(self, name: str, now: float) -> float:
        """Takes one request from the key's bucket: 0, or the seconds to wait."""
        bucket = self.buckets.get(name)
        if bucket is None:
            bucket = self.buckets[name] = TokenBucket(self.rate, self.burst)
        return bucket.take(now)

    def wait_volume(
        self, name: str, now: float, events: int, size: int
    ) -> tuple[float, Volume | None]:
        """Takes ``events`` and ``size`` bytes when both are there: (0, None); else takes
        neither and says how long to wait and which limit was hit."""
        pair = self.volumes.get(name)
        if pair is None:
            pair = self.volumes[name] = (
                TokenBucket(self.event_rate, self.event_burst),
                TokenBucket(self.byte_rate, self.byte_burst),
            )
        by_events, by_bytes = pair
        waits: list[tuple[float, Volume]] = [
            (by_events.wait(now, events), "events"),
            (by_bytes.wait(now, size), "bytes"),
        ]
        wait, limit = max(waits)
        if wait > 0:
            return wait, limit
        by_events.take(now, events)
        by_bytes.take(now, size)
        return 0.0, None


def retry_after(seconds: float) -> str:
    """A ``Retry-After`` value: whole seconds, at least 1."""
    return str(max(1, math.ceil(seconds)))
