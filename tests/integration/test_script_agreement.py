"""The batch script and the reference fold agree on random valid streams.

Streams mix several customers and all three event types, with exact repeats of earlier
events (producer retries), arrival order unrelated to event time, late events, dead
letters taking offsets, and redeliveries of what was already applied. They reach the
script in random batches, with offsets counting up per partition as Kafka numbers them.
Every customer's stored state must equal the fold of the distinct events in arrival order
(``processors/state.py``), field by field.
"""

from __future__ import annotations

import uuid
import zlib
from collections import Counter
from dataclasses import dataclass
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from redis.asyncio import Redis

from contract.events import REJECT_REASONS, Event, OrderEvent, build_event
from processors.state import CustomerState
from processors.windows import period_days
from store.layout import ATTRIBUTE_LETTERS
from store.store import RESPONSE_BOUNDS, Store, accepted_record, rejected_record
from tests.eventgen import fold

BASE_MS = 1_700_000_000_000  # 2023-11-14
DAY_MS = 86_400_000
PARTITIONS = 3
TOPICS = {"order": "orders", "login": "logins", "support": "support"}

CUSTOMERS = ["c-1", "c-2", "c-3", "klant:ä", "客户 7", "🙂"]
customer_ids = st.sampled_from(CUSTOMERS)
tickets = st.sampled_from(["t-1", "t-2"])
ATTRIBUTES = {
    "country": ["DE", "fr", "US"],
    "channel": ["web", "app", "Marketplace"],
    "shop": ["eu", "us", "ünïcode shop"],
}
# mostly spread over two months (days, ISO weeks and months change), sometimes the same
# instant as another event (ties), sometimes a year earlier (late)
times = st.one_of(
    st.integers(0, 60 * DAY_MS),
    st.sampled_from([0, 1, DAY_MS - 1, DAY_MS, 7 * DAY_MS]),
    st.integers(-400 * DAY_MS, -300 * DAY_MS),
).map(lambda offset: BASE_MS + offset)
amounts = st.integers(0, 10**7).map(lambda cents: cents / 100) | st.floats(0, 10_000)


@st.composite
def events(draw: st.DrawFn, n: int) -> Event:
    kind = draw(st.sampled_from(["order", "login", "support"]))
    data: dict[str, Any] = {
        "event_id": f"e-{n}",
        "customer_id": draw(customer_ids),
        "type": kind,
        "ts": draw(times) / 1000,
    }
    if kind in ("order", "login"):
        # customer attributes, some of them, changing and tied in time
        for name, values in ATTRIBUTES.items():
            value = draw(st.none() | st.sampled_from(values))
            if value is not None:
                data[name] = value
    if kind == "order":
        data["amount"] = draw(amounts)
        data["status"] = draw(st.sampled_from(["placed", "placed", "refunded", "cancelled"]))
    elif kind == "support":
        action = draw(st.sampled_from(["opened", "agent_replied", "resolved", "reopened", "rated"]))
        data |= {"ticket_id": draw(tickets), "action": action}
        if action == "rated":
            survey, low, high = draw(
                st.sampled_from([("csat", 1, 5), ("nps", 0, 10), ("ces", 1, 7)])
            )
            data |= {"survey": survey, "score": draw(st.integers(low, high))}
    return build_event(data)


@dataclass
class Stream:
    """Messages in arrival order: an event, or ``None`` for a dead letter."""

    messages: list[Event | None]
    batch_sizes: list[int]
    replays: list[int]  # per batch: how many already applied messages come again
    kinds: frozenset[str]


@st.composite
def streams(draw: st.DrawFn) -> Stream:
    count = draw(st.integers(1, 60))
    distinct = [draw(events(n)) for n in range(count)]
    arrival: list[Event | None] = list(draw(st.permutations(distinct)))
    # producer retries: exact copies of earlier events, arriving later
    for _ in range(draw(st.integers(0, count // 2))):
        original = draw(st.integers(0, len(arrival) - 1))
        if arrival[original] is not None:
            arrival.insert(draw(st.integers(original + 1, len(arrival))), arrival[original])
    for _ in range(draw(st.integers(0, 3))):
        arrival.insert(draw(st.integers(0, len(arrival))), None)
    sizes: list[int] = []
    while sum(sizes) < len(arrival):
        sizes.append(draw(st.integers(1, max(1, len(arrival) - sum(sizes)))))
    replays = [draw(st.integers(0, 5) | st.just(0)) for _ in sizes]
    kinds = frozenset(draw(st.sets(st.sampled_from(["order", "login", "support"]), min_size=1)))
    return Stream(arrival, sizes, replays, kinds)


def partition_of(customer_id: str) -> int:
    """Keyed by customer, as the producer sends: one customer, one partition."""
    return zlib.crc32(customer_id.encode()) % PARTITIONS


def records(stream: Stream) -> list[list[str]]:
    """Each message where Kafka would put it, with the next offset of its partition."""
    next_offset = {(topic, p): 100 * p for topic in TOPICS.values() for p in range(PARTITIONS)}
    out = []
    for n, event in enumerate(stream.messages):
        if event is None:
            topic, partition = "orders", n % PARTITIONS
        else:
            topic, partition = TOPICS[event.type], partition_of(event.customer_id)
        offset = next_offset[(topic, partition)]
        next_offset[(topic, partition)] += 1
        if event is None:
            reason = REJECT_REASONS[n % len(REJECT_REASONS)]
            out.append(rejected_record(topic, partition, offset, reason))
        else:
            out.append(accepted_record(event, topic, partition, offset))
    return out


@settings(
    max_examples=50,
    deadline=None,
    database=None,
    # one Redis client for all examples; each example has its own key prefix
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(streams())
async def test_script_agrees_with_the_fold(redis: Redis, stream: Stream) -> None:
    prefix = f"agree{uuid.uuid4().hex[:10]}:"
    store = Store(redis, prefix, sorted(stream.kinds), offsets_scope="agreement")
    batch = records(stream)
    applied, start = 0, 0
    now_ms = BASE_MS + 90 * DAY_MS
    for size, replay in zip(stream.batch_sizes, stream.replays, strict=True):
        # a redelivery: the tail of what was applied comes again ahead of the new batch
        again = batch[max(0, start - replay) : start]
        result = await store.apply_batch(again + batch[start : start + size], now_ms=now_ms)
        applied += result.applied
        start += size
    sent = [event for event in stream.messages if event is not None]
    expected = fold(sent, stream.kinds)
    assert applied == len({event.event_id for event in sent})
    for customer_id, state in expected.items():
        assert await store.read_customer(customer_id) == state
    for customer_id in set(CUSTOMERS) - set(expected):
        assert await store.read_customer(customer_id) is None
    assert await stored_totals(redis, prefix) == expected_totals(sent, expected)
    keys = [key async for key in redis.scan_iter(match=f"{prefix}*", count=1000)]
    if keys:
        await redis.delete(*keys)


Totals = dict[str, dict[str, int]]


def _add(totals: Totals, key: str, field: str, n: int) -> None:
    row = totals.setdefault(key, {})
    row[field] = row.get(field, 0) + n


def expected_sales(sent: list[Event]) -> Totals:
    """Sales per period from the distinct orders, with buyers ``b`` and repeat buyers
    ``r`` (two placed orders or more in the period)."""
    totals: Totals = {}
    placed: Counter[tuple[str, str]] = Counter()
    seen: set[tuple[str, str, str]] = set()
    for event in sent:
        identity = (event.type, event.customer_id, event.event_id)
        if identity in seen:
            continue
        seen.add(identity)
        if not isinstance(event, OrderEvent) or event.status == "cancelled":
            continue
        for period, day in zip("dwm", period_days(event.ts_ms), strict=True):
            key = f"sales:{period}:{day}"
            if event.status == "placed":
                _add(totals, key, "o", 1)
                _add(totals, key, "pm", event.amount_micros)
                placed[key, event.customer_id] += 1
            else:
                _add(totals, key, "rm", event.amount_micros)
    for (key, _), n in placed.items():
        _add(totals, key, "b", 1)
        _add(totals, key, "r", int(n >= 2))
    return totals


def expected_totals(sent: list[Event], states: dict[str, CustomerState]) -> Totals:
    """What the hashes shared by all customers must hold: sales per period
    (:func:`expected_sales`), survey totals over latest scores, the first-response
    histogram, customers by the latest value of each attribute."""
    totals = expected_sales(sent)
    for state in states.values():
        for survey, score in state.scores.items():
            _add(totals, "surveys", f"{survey}|sum", score.value)
            _add(totals, "surveys", f"{survey}|n", 1)
            if survey == "nps" and score.value >= 9:
                _add(totals, "surveys", "nps|promoters", 1)
            elif survey == "nps" and score.value <= 6:
                _add(totals, "surveys", "nps|detractors", 1)
        for ticket in state.tickets.values():
            ms = ticket.response_ms()
            if ms is None:
                continue
            bound = next((str(b) for b in RESPONSE_BOUNDS if ms <= b * 1000), "+Inf")
            _add(totals, "responses", bound, 1)
            _add(totals, "responses", "count", 1)
            _add(totals, "responses", "sum_ms", ms)
        # customers by the latest value of each attribute
        for name, kept in state.attributes.items():
            _add(totals, f"attrs:{ATTRIBUTE_LETTERS[name]}", kept.latest, 1)
    return _nonzero(totals)


async def stored_totals(redis: Redis, prefix: str) -> Totals:
    keys = [key async for key in redis.scan_iter(match=f"{prefix}sales:*", count=1000)]
    totals: Totals = {}
    attrs = [f"{prefix}attrs:{letter}" for letter in ATTRIBUTE_LETTERS.values()]
    for key in [*keys, f"{prefix}surveys", f"{prefix}responses", *attrs]:
        raw = await redis.hgetall(key)
        if raw:
            totals[key[len(prefix) :]] = {name: int(value) for name, value in raw.items()}
    return _nonzero(totals)


def _nonzero(totals: Totals) -> Totals:
    """Fields back at 0 (a score replaced, a response time moved) are left out."""
    kept = {key: {f: n for f, n in row.items() if n != 0} for key, row in totals.items()}
    return {key: row for key, row in kept.items() if row}
