"""End to end: producer → Tansu → `retention worker` → Redis, checked exactly."""

from __future__ import annotations

import json
import random
from collections import Counter
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

from processors.state import to_public
from retention.config import Settings
from store.store import Store
from streams.app import group_id
from streams.producer import EventProducer
from streams.topics import Topics
from tests.eventgen import fold, random_events, with_duplicates, worker_rates
from tests.integration.conftest import Workers, read_topic, wait_until

T0 = 1_710_000_000  # 2024-03-09T16:00:00Z


def scripted_events() -> list[dict[str, Any]]:
    """A small story per customer, with times out of order and a duplicate."""
    order = {"type": "order", "customer_id": "alice"}
    return [
        {**order, "event_id": "a1", "ts": T0 + 200, "amount": 19.99},
        {**order, "event_id": "a2", "ts": "2024-03-09T16:01:40+00:00", "amount": 5},  # T0+100
        {**order, "event_id": "a1", "ts": T0 + 200, "amount": 19.99},  # duplicate
        {**order, "event_id": "a3", "ts": T0 + 300, "amount": 5, "status": "refunded"},
        {**order, "event_id": "a4", "ts": T0 + 400, "amount": 7, "status": "cancelled"},
        {"type": "login", "customer_id": "alice", "event_id": "a5", "ts": T0 + 50},
        {"type": "login", "customer_id": "alice", "event_id": "a6", "ts": T0 + 500},
        {
            "type": "support",
            "customer_id": "bob",
            "event_id": "b1",
            "ts": T0,
            "ticket_id": "k1",
            "action": "opened",
        },
        {
            "type": "support",
            "customer_id": "bob",
            "event_id": "b3",
            "ts": T0 + 7200,
            "ticket_id": "k1",
            "action": "resolved",
        },
        {
            "type": "support",
            "customer_id": "bob",
            "event_id": "b2",
            "ts": T0 + 3600,
            "ticket_id": "k1",
            "action": "agent_replied",
        },
        {
            "type": "support",
            "customer_id": "bob",
            "event_id": "b4",
            "ts": T0 + 100,
            "ticket_id": "k2",
            "action": "opened",
        },
        {
            "type": "support",
            "customer_id": "bob",
            "event_id": "b5",
            "ts": T0 + 9000,
            "ticket_id": "k1",
            "action": "rated",
            "survey": "nps",
            "score": 9,
        },
        {
            "type": "support",
            "customer_id": "bob",
            "event_id": "b6",
            "ts": T0 + 8000,
            "ticket_id": "k1",
            "action": "rated",
            "survey": "nps",
            "score": 3,
        },
        {
            "type": "support",
            "customer_id": "bob",
            "event_id": "b7",
            "ts": T0 + 8000,
            "ticket_id": "k1",
            "action": "rated",
            "survey": "csat",
            "score": 2,
        },
        {"type": "login", "customer_id": "carol", "event_id": "c1", "ts": "2024-03-09T17:00:00Z"},
    ]


#: (topic type, key, raw value, expected reason)
MALFORMED: list[tuple[str, bytes | None, bytes, str]] = [
    ("order", b"alice", b"{not json", "invalid_json"),
    (
        "login",
        b"carol",
        b'{"event_id":"x1","customer_id":"carol","ts":"2024-03-09T10:00:00","type":"login"}',
        "naive_timestamp",
    ),
    (
        "order",
        b"carol",
        b'{"event_id":"x2","customer_id":"carol","ts":1710000000,"type":"login"}',
        "type_mismatch",
    ),
    (
        "support",
        b"bob",
        b'{"event_id":"x3","ts":1710000000,"type":"support","ticket_id":"k","action":"opened"}',
        "missing_field",
    ),
    (
        "order",
        b"mallory",
        b'{"event_id":"x4","customer_id":"alice","ts":1710000000,"type":"order","amount":3}',
        "key_mismatch",
    ),
    (
        "order",
        b"alice",
        b'{"event_id":"x5","customer_id":"alice","ts":1710000000,"type":"order","amount":-3}',
        "invalid_field",
    ),
]


async def send_all(producer: EventProducer, events: list[dict[str, Any]]) -> Counter[str]:
    sent: Counter[str] = Counter()
    for event in events:
        await producer.send(event)
        sent[producer.topics.source(event["type"])] += 1
    return sent


async def wait_all_seen(
    store: Store, sent: Counter[str], workers: Workers, timeout: float = 90
) -> None:
    async def done() -> bool:
        stats = await store.stats()
        return all(stats.seen(topic) >= n for topic, n in sent.items())

    await wait_until(done, timeout, f"{dict(sent)} messages to be applied", workers.logs)
    stats = await store.stats()
    assert {t: stats.seen(t) for t in sent} == dict(sent), "messages counted twice"


async def read_dlq(settings: Settings, expected: int) -> list[Any]:
    assert settings.kafka_bootstrap
    topic = Topics.from_settings(settings).dlq
    return await read_topic(settings.kafka_bootstrap, topic, lambda got: len(got) >= expected)


async def test_known_mix_gives_exact_state_and_dead_letters(
    settings: Settings, store: Store, producer: EventProducer, workers: Workers
) -> None:
    rng = random.Random(20240309)
    story = scripted_events()
    noise = with_duplicates(rng, random_events(rng, customers=30, count=400), share=0.1)
    sent = await send_all(producer, story + noise)
    for topic_type, key, value, _ in MALFORMED:
        await producer.send_raw(producer.topics.source(topic_type), value, key)  # type: ignore[arg-type]
        sent[producer.topics.source(topic_type)] += 1  # type: ignore[arg-type]
    await producer.flush()

    workers.start()
    await wait_all_seen(store, sent, workers)

    alice = await store.read_customer("alice")
    bob = await store.read_customer("bob")
    assert alice is not None and bob is not None
    a, b = to_public(alice), to_public(bob)
    # Written out by hand, so that the reference fold is itself checked.
    assert (a["orders"], a["revenue"], a["refunds"], a["cancelled_orders"]) == (2, 19.99, 1, 1)
    assert a["aov"] == 24.99 / 2
    assert a["first_seen"] == "2024-03-09T16:00:50.000Z"
    assert a["last_order_at"] == "2024-03-09T16:03:20.000Z"
    assert a["last_activity_at"] == "2024-03-09T16:08:20.000Z"
    assert a["logins"] == 2
    assert (b["tickets_opened"], b["tickets_resolved"], b["open_tickets"]) == (2, 1, 1)
    assert b["first_response_seconds_avg"] == 3600
    assert (b["nps"], b["csat"], b["ces"]) == (9, 2, None)
    assert b["last_activity_at"] is None  # support is not an activity kind by default

    expected = fold(story + noise, frozenset(settings.activity_kinds), worker_rates(settings))
    assert await store.customer_ids() == sorted(expected)
    for customer_id, state in expected.items():
        assert await store.read_customer(customer_id) == state, customer_id

    stats = await store.stats()
    unique = len({e["event_id"] for e in story + noise})
    assert sum(stats.accepted.values()) == unique
    assert sum(stats.duplicates.values()) == len(story + noise) - unique
    by_reason: Counter[str] = Counter()
    for (_, reason), n in stats.rejected.items():
        by_reason[reason] += n
    assert by_reason == Counter(m[3] for m in MALFORMED)

    dead = await read_dlq(settings, len(MALFORMED))
    got = sorted(
        (dict(m.headers)["x-reason"].decode(), m.value, m.key, dict(m.headers)["x-source-topic"])
        for m in dead
    )
    want = sorted(
        (reason, value, key, producer.topics.source(t).encode())  # type: ignore[arg-type]
        for t, key, value, reason in MALFORMED
    )
    assert got == want
    for message in dead:
        headers = dict(message.headers)
        assert int(headers["x-source-offset"]) >= 0
        assert 0 <= int(headers["x-source-partition"]) < settings.partitions

    # the batches' acks reach Kafka: the group commits every partition up to what is stored
    applied = await store.applied_offsets()
    assert applied and set(applied) <= {(t, p) for t in sent for p in range(settings.partitions)}

    async def committed_upto_store() -> bool:
        return await group_committed(settings, list(applied)) == {
            tp: offset + 1 for tp, offset in applied.items()
        }

    await wait_until(committed_upto_store, 30, "Kafka commits up to the store", workers.logs)


async def group_committed(settings: Settings, tps: list[tuple[str, int]]) -> dict[Any, Any]:
    """The worker group's committed offsets in Kafka, read without joining the group."""
    assert settings.kafka_bootstrap
    reader = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap,
        group_id=group_id(settings),
        enable_auto_commit=False,
    )
    await reader.start()
    try:
        return {(t, p): await reader.committed(TopicPartition(t, p)) for t, p in tps}
    finally:
        await reader.stop()


async def test_status_reports_worker_and_lag(
    settings: Settings, store: Store, producer: EventProducer, workers: Workers
) -> None:
    from retention import status

    sent = await send_all(producer, scripted_events())
    await producer.flush()
    workers.start()
    await wait_all_seen(store, sent, workers)

    async def worker_assigned() -> bool:
        st = await status.gather(settings)
        return st.ok and any(w["partitions"] for w in st.workers.values())

    await wait_until(worker_assigned, 30, "status ok", workers.logs)
    st = await status.gather(settings)
    assert st.lag is not None and set(st.lag) == set(producer.topics.sources)
    assert st.customers == 3
    assert st.calendar == "UTC, weeks from Monday"
    assert "periods  UTC, weeks from Monday" in status.render(st)
    assert json.loads(json.dumps(st.as_dict()))["ok"] is True


async def test_sync_producer_for_code_without_an_event_loop(
    settings: Settings, store: Store, producer: EventProducer, workers: Workers
) -> None:
    import asyncio

    import pytest

    from contract.events import InvalidEvent
    from streams.producer import SyncEventProducer

    def from_a_plain_thread() -> None:
        assert settings.kafka_bootstrap
        with SyncEventProducer(settings.kafka_bootstrap, producer.topics) as sync:
            sync.send(
                {"event_id": "s1", "customer_id": "sync", "ts": T0, "type": "order", "amount": 12.5}
            )
            sync.send({"event_id": "s2", "customer_id": "sync", "ts": T0 + 60, "type": "login"})
            with pytest.raises(InvalidEvent):  # refused in the app, never sent
                sync.send(
                    {"event_id": "s3", "customer_id": "sync", "ts": "yesterday", "type": "login"}
                )

    await asyncio.to_thread(from_a_plain_thread)
    workers.start()
    sent = Counter({producer.topics.source("order"): 1, producer.topics.source("login"): 1})
    await wait_all_seen(store, sent, workers)
    state = await store.read_customer("sync")
    assert state is not None and (state.orders, state.logins, state.placed_micros) == (
        1,
        1,
        12_500_000,
    )
