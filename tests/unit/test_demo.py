"""The demo traffic plan: valid events, reproducible, and with the habits it promises."""

from __future__ import annotations

import asyncio
import itertools
import random
from collections import Counter, defaultdict
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from contract.events import SURVEY_RANGES, Rejection, build_event, parse_event
from streams.demo import EXTRAS_EVERY, drive_demo
from streams.demo_plan import (
    PROFILES,
    QUIET_DAYS,
    Profile,
    customers_by_profile,
    malformed_order,
    plan_history,
    plan_live,
    profile_counts,
    track_open_tickets,
)
from streams.topics import Topics

NOW = datetime(2025, 3, 1, 12, 30, 15, 123456, tzinfo=UTC)
DAYS = 180
SEEDS = (1, 7, 42)

Event = dict[str, Any]


def _history(seed: int, customers: int = 60) -> list[Event]:
    return plan_history(random.Random(seed), customers, NOW, DAYS)


@pytest.fixture(scope="module")
def histories() -> dict[int, list[Event]]:
    return {seed: _history(seed) for seed in SEEDS}


def _profile(event: Mapping[str, Any]) -> str:
    """``demo-support_heavy-003`` -> ``support_heavy``."""
    return str(event["customer_id"]).split("-")[1]


def _ts(event: Mapping[str, Any]) -> datetime:
    return datetime.fromisoformat(event["ts"])


def _by_customer(events: list[Event]) -> dict[str, list[Event]]:
    grouped: dict[str, list[Event]] = defaultdict(list)
    for event in events:
        grouped[event["customer_id"]].append(event)
    return grouped


@pytest.mark.parametrize("seed", SEEDS)
def test_every_planned_event_validates(histories: dict[int, list[Event]], seed: int) -> None:
    for event in histories[seed]:
        built = build_event(event)
        assert built.event_id == event["event_id"]
        assert built.customer_id == event["customer_id"]


@pytest.mark.parametrize("customers", [1, 4, 5, 60, 123])
def test_small_and_odd_populations_plan_valid_events(customers: int) -> None:
    events = _history(3, customers)
    assert events
    for event in events:
        build_event(event)
    assert len({e["customer_id"] for e in events}) == customers


def test_same_seed_same_plan() -> None:
    assert _history(7) == _history(7)


def test_different_seed_different_plan() -> None:
    assert _history(7) != _history(8)


@pytest.mark.parametrize("profile", PROFILES)
def test_each_profile_present(histories: dict[int, list[Event]], profile: Profile) -> None:
    ids = customers_by_profile(60)[profile]
    assert ids
    active = {e["customer_id"] for e in histories[7]}
    assert set(ids) <= active
    assert ids[0] == f"demo-{profile}-001"


@pytest.mark.parametrize("customers", [4, 10, 60, 1000])
def test_profile_counts_cover_every_profile_and_add_up(customers: int) -> None:
    counts = profile_counts(customers)
    assert sum(counts.values()) == customers
    assert all(counts[p] >= 1 for p in PROFILES)


@pytest.mark.parametrize("seed", SEEDS)
def test_declining_customers_fall_silent_while_loyal_ones_stay(
    histories: dict[int, list[Event]], seed: int
) -> None:
    quiet_from = NOW - timedelta(days=QUIET_DAYS)
    recent = {e["customer_id"] for e in histories[seed] if _ts(e) >= quiet_from}
    by_profile = customers_by_profile(60)
    assert not recent & set(by_profile["declining"])
    assert set(by_profile["loyal"]) <= recent


@pytest.mark.parametrize("seed", SEEDS)
def test_declining_gaps_grow(histories: dict[int, list[Event]], seed: int) -> None:
    for cid in customers_by_profile(60)["declining"]:
        orders = sorted(
            _ts(e)
            for e in histories[seed]
            if e["customer_id"] == cid and e["type"] == "order" and e["status"] != "refunded"
        )
        gaps = [later - earlier for earlier, later in itertools.pairwise(orders)]
        assert gaps == sorted(gaps), cid


@pytest.mark.parametrize("seed", SEEDS)
def test_one_off_customers_order_once(histories: dict[int, list[Event]], seed: int) -> None:
    one_offs = set(customers_by_profile(60)["one_off"])
    placed = Counter(
        e["customer_id"]
        for e in histories[seed]
        if e["type"] == "order" and e["status"] == "placed" and e["customer_id"] in one_offs
    )
    assert placed == dict.fromkeys(one_offs, 1)


@pytest.mark.parametrize("seed", SEEDS)
def test_event_ids_unique_across_history_and_live(
    histories: dict[int, list[Event]], seed: int
) -> None:
    history = histories[seed]
    live = plan_live(
        random.Random(seed), customers_by_profile(60), NOW, first_id=len(history) + 1, visits=500
    )
    ids = [e["event_id"] for e in history + live]
    assert len(ids) == len(set(ids))


@pytest.mark.parametrize("seed", SEEDS)
def test_timestamps_aware_in_window_and_ordered(
    histories: dict[int, list[Event]], seed: int
) -> None:
    stamps = [_ts(e) for e in histories[seed]]
    assert all(ts.tzinfo is not None and ts.utcoffset() == timedelta(0) for ts in stamps)
    assert all(NOW - timedelta(days=DAYS) <= ts <= NOW for ts in stamps)
    assert stamps == sorted(stamps)


@pytest.mark.parametrize("survey", sorted(SURVEY_RANGES))
def test_support_heavy_ratings_in_range_and_low(
    histories: dict[int, list[Event]], survey: str
) -> None:
    low, high = SURVEY_RANGES[survey]
    scores = [
        e["score"]
        for events in histories.values()
        for e in events
        if e["type"] == "support" and e["action"] == "rated" and e["survey"] == survey
    ]
    assert scores
    assert all(low <= s <= high for s in scores)
    assert sum(scores) / len(scores) < (low + high) / 2


@pytest.mark.parametrize("seed", SEEDS)
def test_support_heavy_customers_have_rated_tickets(
    histories: dict[int, list[Event]], seed: int
) -> None:
    support = [e for e in histories[seed] if e["type"] == "support"]
    assert {_profile(e) for e in support} == {"support_heavy"}
    rated = {e["customer_id"] for e in support if e["action"] == "rated"}
    assert rated == set(customers_by_profile(60)["support_heavy"])


@pytest.mark.parametrize("seed", SEEDS)
def test_ticket_steps_follow_their_order(histories: dict[int, list[Event]], seed: int) -> None:
    steps: dict[str, list[str]] = defaultdict(list)
    for event in histories[seed]:
        if event["type"] == "support":
            steps[event["ticket_id"]].append(event["action"])
    for ticket, actions in steps.items():
        assert actions[0] == "opened", ticket
        assert actions.count("opened") == 1, ticket
        if "rated" in actions:
            assert actions[-1] == "rated" and actions[-2] == "resolved", ticket


@pytest.mark.parametrize("seed", SEEDS)
def test_orders_realistic(histories: dict[int, list[Event]], seed: int) -> None:
    orders = [e for e in histories[seed] if e["type"] == "order"]
    statuses = Counter(e["status"] for e in orders)
    assert statuses["refunded"] + statuses["cancelled"] < 0.2 * statuses["placed"]
    assert statuses["refunded"] and statuses["cancelled"]
    placed = {e["order_id"]: e for e in orders if e["status"] != "refunded"}
    assert all(15 <= e["amount"] <= 200 for e in placed.values())
    for refund in (e for e in orders if e["status"] == "refunded"):
        original = placed[refund["order_id"]]
        assert original["status"] == "placed"
        assert 0 < refund["amount"] <= original["amount"]
        assert _ts(refund) > _ts(original)


def test_logins_use_web_or_app(histories: dict[int, list[Event]]) -> None:
    channels = {e["channel"] for e in histories[7] if e["type"] == "login"}
    assert channels == {"web", "app"}


@pytest.mark.parametrize("now", [NOW, datetime(2025, 3, 1, 14, 30, tzinfo=UTC).astimezone()])
def test_naive_now_rejected_aware_now_accepted(now: datetime) -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        plan_history(random.Random(1), 10, now.replace(tzinfo=None), DAYS)
    assert plan_history(random.Random(1), 10, now, DAYS)


def test_live_events_validate_and_happen_now() -> None:
    live = plan_live(random.Random(5), customers_by_profile(60), NOW, first_id=10, visits=300)
    assert live[0]["event_id"] == "demo-live-10"
    for event in live:
        build_event(event)
        assert _ts(event) == NOW.replace(microsecond=0)


def test_live_activity_follows_the_profiles() -> None:
    by_profile = customers_by_profile(60)
    live = plan_live(random.Random(11), by_profile, NOW, visits=5000)
    per_customer = {
        profile: sum(1 for e in live if _profile(e) == profile) / len(by_profile[profile])
        for profile in PROFILES
    }
    assert per_customer["loyal"] > per_customer["support_heavy"] > per_customer["one_off"]
    assert per_customer["declining"] < per_customer["one_off"] / 4
    assert per_customer["declining"] < 0.05 * per_customer["loyal"]


def test_live_support_works_on_open_tickets() -> None:
    history = _history(7)
    open_tickets = track_open_tickets({}, history)
    assert open_tickets
    live = plan_live(
        random.Random(2), customers_by_profile(60), NOW, visits=400, open_tickets=open_tickets
    )
    followed = {e["ticket_id"] for e in live if e["type"] == "support" and e["action"] != "opened"}
    known = {t for tickets in open_tickets.values() for t in tickets}
    opened_live = {e["ticket_id"] for e in live if e.get("action") == "opened"}
    assert followed
    assert followed <= known | opened_live


def test_track_open_tickets_follows_the_lifecycle() -> None:
    def support(ticket: str, action: str) -> Event:
        return {"type": "support", "customer_id": "c", "ticket_id": ticket, "action": action}

    events = [
        support("t1", "opened"),
        support("t2", "opened"),
        {"type": "login", "customer_id": "c"},
        support("t1", "resolved"),
        support("t1", "rated"),
        support("t2", "agent_replied"),
        support("t1", "reopened"),
        support("t2", "resolved"),
    ]
    assert track_open_tickets({}, events[:2]) == {"c": ("t1", "t2")}
    assert track_open_tickets({}, events) == {"c": ("t1",)}
    assert track_open_tickets({"c": ("t1",)}, [support("t1", "resolved")]) == {}


@pytest.mark.parametrize("number", [1, 2, 3, 50])
def test_malformed_order_is_invalid_json(number: int) -> None:
    raw = malformed_order(random.Random(number), "demo-loyal-001", number)
    rejection = parse_event(raw, topic_type="order", key=b"demo-loyal-001")
    assert isinstance(rejection, Rejection)
    assert rejection.reason == "invalid_json"


class FakeSink:
    """Records what the demo sends; every send is stored at once."""

    def __init__(self, stop_after: int | None = None, stop: asyncio.Event | None = None) -> None:
        self.sent: list[tuple[str, Any]] = []
        self.flushes = 0
        self._stop_after = stop_after
        self._stop = stop

    def _stored(self) -> asyncio.Future[Any]:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        future.set_result(None)
        limit = self._stop_after
        if self._stop is not None and limit is not None and len(self.sent) >= limit:
            self._stop.set()
        return future

    async def send(self, event: Mapping[str, Any]) -> asyncio.Future[Any]:
        build_event(dict(event))
        self.sent.append(("event", dict(event)))
        return self._stored()

    async def send_raw(
        self, topic: str, value: bytes, key: bytes | None = None
    ) -> asyncio.Future[Any]:
        self.sent.append(("raw", (topic, value, key)))
        return self._stored()

    async def flush(self) -> None:
        self.flushes += 1


async def test_drive_demo_sends_history_live_and_extras() -> None:
    sink = FakeSink()
    live_count = 2 * EXTRAS_EVERY + 50
    stats = await drive_demo(
        sink,
        Topics("t-"),
        customers=20,
        rate_per_second=1_000_000,
        max_live_events=live_count,
        clock=lambda: NOW,
    )
    events = [item for kind, item in sink.sent if kind == "event"]
    raws = [item for kind, item in sink.sent if kind == "raw"]
    history = _history_for_demo(customers=20)
    assert events[: len(history)] == history
    assert stats.history == len(history)
    assert stats.live == live_count
    assert stats.duplicates == stats.malformed == len(raws) == 2
    assert len(events) == len(history) + live_count + 2
    assert sink.flushes >= 2

    live_part = events[len(history) :]
    ids = Counter(e["event_id"] for e in live_part)
    duplicated = [event_id for event_id, n in ids.items() if n > 1]
    assert len(duplicated) == 2
    assert all(event_id.startswith("demo-20250301T123015-") for event_id in ids)
    for topic, value, key in raws:
        assert topic == "t-orders"
        assert key is not None and key.decode() in {e["customer_id"] for e in history}
        assert isinstance(parse_event(value), Rejection)


def _history_for_demo(customers: int) -> list[Event]:
    return plan_history(random.Random(7), customers, NOW, 180)


async def test_drive_demo_stops_when_asked() -> None:
    stop = asyncio.Event()
    history_size = len(_history_for_demo(customers=8))
    sink = FakeSink(stop_after=history_size + 30, stop=stop)
    stats = await drive_demo(
        sink, Topics(), customers=8, rate_per_second=1_000_000, stop=stop, clock=lambda: NOW
    )
    assert stop.is_set()
    assert stats.history == history_size
    assert stats.live == 30


async def test_drive_demo_paces_live_events() -> None:
    loop = asyncio.get_running_loop()
    sink = FakeSink()
    started = loop.time()
    stats = await drive_demo(
        sink, Topics(), customers=8, rate_per_second=200, max_live_events=20, clock=lambda: NOW
    )
    assert stats.live == 20
    assert loop.time() - started >= 19 / 200


async def test_rate_must_be_positive() -> None:
    sink = FakeSink()
    with pytest.raises(ValueError, match="rate_per_second"):
        await drive_demo(sink, Topics(), rate_per_second=0)
    assert sink.sent == []
