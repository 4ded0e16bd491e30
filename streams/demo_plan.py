"""Demo traffic planned: a past for a mixed population, then live visits, as event dicts.

A dashboard over an empty topic shows nothing, and one fed with uniform random events shows
nothing interesting either. The population here has habits that the retention numbers should
tell apart: loyal regulars, customers drifting away, one-off buyers and unhappy customers who
keep calling support.

Pure: an explicit ``random.Random`` and ``now`` in, plain event dicts out, so a seed always
gives the same traffic and tests need no broker. ``streams/demo.py`` sends it.
"""

from __future__ import annotations

import itertools
import json
import math
import random
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from contract.events import SURVEY_RANGES

Profile = Literal["loyal", "declining", "one_off", "support_heavy"]


PROFILES: tuple[Profile, ...] = ("loyal", "declining", "one_off", "support_heavy")


#: Share of the population per profile: mostly regulars, enough of the rest to show churn.
PROFILE_SHARES: dict[Profile, float] = {
    "loyal": 0.35,
    "declining": 0.25,
    "one_off": 0.20,
    "support_heavy": 0.20,
}


#: Relative chance, per customer, of being the next live visitor. Declining customers are
#: nearly gone, so a rare comeback shows up as a reactivation rather than as noise.
LIVE_WEIGHTS: dict[Profile, float] = {
    "loyal": 10.0,
    "support_heavy": 4.0,
    "one_off": 0.5,
    "declining": 0.05,
}


LIVE_ORDER_CHANCE: dict[Profile, float] = {
    "loyal": 0.35,
    "support_heavy": 0.25,
    "one_off": 0.20,
    "declining": 0.15,
}


#: Declining customers fall silent this many days (at least) before ``now``.
QUIET_DAYS = 30


QUIET_DAYS_MAX = 60


CANCEL_RATE = 0.04


REFUND_RATE = 0.06


REOPEN_RATE = 0.25


RATED_RATE = 0.8


#: Which survey a customer answers; CSAT is the one most shops send after a ticket.
SURVEY_WEIGHTS: dict[str, float] = {"csat": 0.5, "nps": 0.3, "ces": 0.2}


PlannedEvent = dict[str, Any]


Planner = Callable[[random.Random, str, datetime, datetime], list[PlannedEvent]]


def _most_behind(counts: Mapping[Profile, int], population: int) -> Profile:
    """The profile furthest below its share of a population of this size."""
    return max(PROFILES, key=lambda p: PROFILE_SHARES[p] * population - counts[p])


def profile_counts(customers: int) -> dict[Profile, int]:
    """Split a population by :data:`PROFILE_SHARES`.

    Customers are handed out one at a time to the profile most behind its share, so the
    split stays close to the shares at every size and four customers cover all profiles.
    """
    if customers < 1:
        raise ValueError("customers must be at least 1")
    counts: dict[Profile, int] = dict.fromkeys(PROFILES, 0)
    for size in range(1, customers + 1):
        counts[_most_behind(counts, size)] += 1
    return counts


def customer_id(profile: Profile, number: int) -> str:
    """``demo-loyal-007``: the profile is readable in every dashboard and log line."""
    return f"demo-{profile}-{number:03d}"


def customers_by_profile(customers: int) -> dict[Profile, list[str]]:
    """The demo population: customer ids grouped by profile."""
    return {
        profile: [customer_id(profile, n) for n in range(1, count + 1)]
        for profile, count in profile_counts(customers).items()
    }


def _require_aware(now: datetime) -> None:
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError("now must be timezone-aware")


def _iso(ts: datetime) -> str:
    """Whole seconds in UTC with a ``Z``; flooring keeps a planned time from moving ahead."""
    return ts.astimezone(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def _days(rng: random.Random, low: float, high: float) -> timedelta:
    return timedelta(days=rng.uniform(low, high))


def _hours(rng: random.Random, low: float, high: float) -> timedelta:
    return timedelta(hours=rng.uniform(low, high))


def _fraction_of(
    rng: random.Random, start: datetime, end: datetime, low: float, high: float
) -> datetime:
    """An instant a random share of the way from start to end, so plans scale with ``days``."""
    return start + (end - start) * rng.uniform(low, high)


def _regular_times(
    rng: random.Random, first: datetime, end: datetime, low_days: float, high_days: float
) -> list[datetime]:
    """Habitual instants (orders): from ``first``, gaps uniform in [low, high] days."""
    times: list[datetime] = []
    at = first
    while at < end:
        times.append(at)
        at += _days(rng, low_days, high_days)
    return times


def _random_times(
    rng: random.Random, start: datetime, end: datetime, mean_gap_days: float
) -> list[datetime]:
    """Unplanned instants (logins, tickets): a Poisson process between start and end."""
    times: list[datetime] = []
    at = start + timedelta(days=rng.expovariate(1 / mean_gap_days))
    while at < end:
        times.append(at)
        at += timedelta(days=rng.expovariate(1 / mean_gap_days))
    return times


def _amount(rng: random.Random) -> float:
    """Basket values cluster around 50 with a long tail, as in most shops; kept in 15..200."""
    return round(min(200.0, max(15.0, rng.lognormvariate(math.log(50.0), 0.55))), 2)


def _low_skewed_score(rng: random.Random, survey: str) -> int:
    """A score in the survey's range, skewed low: these customers are not happy."""
    low, high = SURVEY_RANGES[survey]
    span = high - low + 1
    return low + min(span - 1, int(rng.random() ** 2 * span))


def _order(
    cid: str,
    ts: datetime,
    order_id: str,
    amount: float,
    status: str = "placed",
    items: int | None = None,
) -> PlannedEvent:
    event: PlannedEvent = {
        "customer_id": cid,
        "ts": ts,
        "type": "order",
        "order_id": order_id,
        "amount": amount,
        "status": status,
        **attributes_of(cid),
    }
    if items is not None:
        event["items"] = items
    return event


#: the demo shop's markets and channels: each customer buys in one of them
MARKETS = ("DE", "AT", "FR", "US", "GB")
CHANNELS = ("web", "app", "marketplace")


def attributes_of(cid: str) -> dict[str, str]:
    """A customer's country and channel, the same on each of its orders."""
    n = zlib.crc32(cid.encode())
    return {"country": MARKETS[n % len(MARKETS)], "channel": CHANNELS[n // 7 % len(CHANNELS)]}


def _login(rng: random.Random, cid: str, ts: datetime) -> PlannedEvent:
    return {
        "customer_id": cid,
        "ts": ts,
        "type": "login",
        "channel": "app" if rng.random() < 0.6 else "web",
        "session_id": f"s-{rng.getrandbits(40):010x}",
    }


def _support(cid: str, ts: datetime, ticket_id: str, action: str) -> PlannedEvent:
    return {
        "customer_id": cid,
        "ts": ts,
        "type": "support",
        "ticket_id": ticket_id,
        "action": action,
    }


def _rating(rng: random.Random, cid: str, ts: datetime, ticket_id: str) -> PlannedEvent:
    surveys = list(SURVEY_WEIGHTS)
    survey = rng.choices(surveys, weights=[SURVEY_WEIGHTS[s] for s in surveys])[0]
    event = _support(cid, ts, ticket_id, "rated")
    event.update(survey=survey, score=_low_skewed_score(rng, survey))
    return event


def _purchase(
    rng: random.Random,
    cid: str,
    ts: datetime,
    order_id: str,
    until: datetime,
    *,
    cancellable: bool = True,
) -> list[PlannedEvent]:
    """One order: usually placed, sometimes cancelled, now and then refunded later.

    A refund is its own order event with the refunded sum as a positive amount and the
    original ``order_id``; it is left out when it would fall at or after ``until``.
    """
    amount = _amount(rng)
    items = rng.randint(1, 5)
    roll = rng.random()
    if cancellable and roll < CANCEL_RATE:
        return [_order(cid, ts, order_id, amount, "cancelled", items)]
    events = [_order(cid, ts, order_id, amount, "placed", items)]
    if CANCEL_RATE <= roll < CANCEL_RATE + REFUND_RATE:
        refund_at = ts + _days(rng, 1, 14)
        if refund_at < until:
            share = rng.choice((1.0, 1.0, 0.5))
            events.append(_order(cid, refund_at, order_id, round(amount * share, 2), "refunded"))
    return events


def _purchases(
    rng: random.Random, cid: str, times: Iterable[datetime], until: datetime
) -> list[PlannedEvent]:
    events: list[PlannedEvent] = []
    for n, ts in enumerate(times, 1):
        events.extend(_purchase(rng, cid, ts, f"{cid}-order-{n}", until))
    return events


def _logins(rng: random.Random, cid: str, times: Iterable[datetime]) -> list[PlannedEvent]:
    return [_login(rng, cid, ts) for ts in times]


def _ticket(
    rng: random.Random, cid: str, ticket_id: str, opened: datetime, until: datetime
) -> list[PlannedEvent]:
    """A ticket's life: opened, an agent replies within hours, resolved, maybe reopened once,
    and often a survey at the end. Steps at or after ``until`` have not happened yet."""
    steps: list[tuple[datetime, str]] = [(opened, "opened")]
    at = opened
    rounds = 2 if rng.random() < REOPEN_RATE else 1
    for round_no in range(rounds):
        if round_no:
            at += _hours(rng, 12, 96)
            steps.append((at, "reopened"))
        at += _hours(rng, 2, 30)
        steps.append((at, "agent_replied"))
        at += _hours(rng, 1, 72)
        steps.append((at, "resolved"))
    events = [_support(cid, ts, ticket_id, action) for ts, action in steps if ts < until]
    if rng.random() < RATED_RATE:
        rated_at = at + _hours(rng, 0.5, 24)
        if rated_at < until:
            events.append(_rating(rng, cid, rated_at, ticket_id))
    return events


def _plan_loyal(rng: random.Random, cid: str, start: datetime, now: datetime) -> list[PlannedEvent]:
    """Orders every 5-15 days right up to now, and a login every few days."""
    first = _fraction_of(rng, start, now, 0.0, 0.1)
    orders = _regular_times(rng, first, now, 5, 15)
    logins = _random_times(rng, first, now, 2.5)
    return _purchases(rng, cid, orders, now) + _logins(rng, cid, logins)


def _plan_declining(
    rng: random.Random, cid: str, start: datetime, now: datetime
) -> list[PlannedEvent]:
    """Frequent at first; every gap is longer than the last, and all activity (refunds too)
    stops 30-60 days before now, so the customer is visibly drifting towards churn."""
    first = _fraction_of(rng, start, now, 0.0, 0.1)
    silent_from = now - _days(rng, QUIET_DAYS, QUIET_DAYS_MAX)
    if silent_from <= first:
        return _purchases(rng, cid, [first], first + timedelta(seconds=1))
    events: list[PlannedEvent] = []
    gap = rng.uniform(4, 9)
    at, n = first, 1
    while at < silent_from:
        events.extend(_purchase(rng, cid, at, f"{cid}-order-{n}", silent_from))
        following = min(at + timedelta(days=gap), silent_from)
        events.extend(_logins(rng, cid, _random_times(rng, at, following, gap / 2)))
        at, n = at + timedelta(days=gap), n + 1
        gap *= rng.uniform(1.25, 1.7)
    return events


def _plan_one_off(
    rng: random.Random, cid: str, start: datetime, now: datetime
) -> list[PlannedEvent]:
    """A single placed order (refunded now and then), perhaps a login or two in the days
    after it, then nothing."""
    ordered = _fraction_of(rng, start, now, 0.05, 0.95)
    after = sorted(ordered + _days(rng, 0.01, 5) for _ in range(rng.randint(0, 2)))
    logins = [at for at in after if at < now]
    order = _purchase(rng, cid, ordered, f"{cid}-order-1", now, cancellable=False)
    return order + _logins(rng, cid, logins)


def _plan_support_heavy(
    rng: random.Random, cid: str, start: datetime, now: datetime
) -> list[PlannedEvent]:
    """Still buying, but a ticket every week or two and low survey scores: an at-risk case."""
    first = _fraction_of(rng, start, now, 0.0, 0.1)
    events = _purchases(rng, cid, _regular_times(rng, first, now, 7, 25), now)
    events += _logins(rng, cid, _random_times(rng, first, now, 6))
    for n, opened in enumerate(_random_times(rng, first, now, 10), 1):
        events += _ticket(rng, cid, f"{cid}-ticket-{n}", opened, now)
    return events


_PLANNERS: dict[Profile, Planner] = {
    "loyal": _plan_loyal,
    "declining": _plan_declining,
    "one_off": _plan_one_off,
    "support_heavy": _plan_support_heavy,
}


def _finish(planned: Iterable[PlannedEvent], *, prefix: str, first_id: int) -> list[PlannedEvent]:
    """Order by event time, number the events and write ``ts`` as ISO 8601 UTC."""
    ordered = sorted(planned, key=lambda event: event["ts"])
    return [
        {"event_id": f"{prefix}-{n}", **event, "ts": _iso(event["ts"])}
        for n, event in enumerate(ordered, first_id)
    ]


def plan_history(
    rng: random.Random, customers: int, now: datetime, days: int = 180
) -> list[PlannedEvent]:
    """A backfill of ``days`` days before ``now`` for the demo population, oldest first.

    Event ids are ``demo-<n>`` in time order, so the same seed and size give the same ids;
    re-sending a history after a restart is then dropped by dedupe instead of counted twice.
    Declining customers need ``days`` above 60 to show their decline in full.
    """
    _require_aware(now)
    if days < 1:
        raise ValueError("days must be at least 1")
    start = now - timedelta(days=days)
    planned: list[PlannedEvent] = []
    for profile, ids in customers_by_profile(customers).items():
        for cid in ids:
            planned.extend(_PLANNERS[profile](rng, cid, start, now))
    return _finish(planned, prefix="demo", first_id=1)


_OPENS = frozenset({"opened", "reopened"})


def track_open_tickets(
    open_tickets: Mapping[str, Sequence[str]], events: Iterable[Mapping[str, Any]]
) -> dict[str, tuple[str, ...]]:
    """Open tickets per customer after ``events`` (in order), so live traffic can reply to
    and resolve tickets that really are open instead of inventing ticket ids."""
    state = {cid: dict.fromkeys(tickets) for cid, tickets in open_tickets.items()}
    for event in events:
        if event.get("type") != "support":
            continue
        tickets = state.setdefault(event["customer_id"], {})
        if event["action"] in _OPENS:
            tickets[event["ticket_id"]] = None
        elif event["action"] == "resolved":
            tickets.pop(event["ticket_id"], None)
    return {cid: tuple(tickets) for cid, tickets in state.items() if tickets}


class _Ids:
    """Sequential event ids ``<prefix>-<n>``: deterministic and never reused in a plan."""

    def __init__(self, prefix: str, first: int) -> None:
        self._prefix = prefix
        self._numbers = itertools.count(first)

    def take(self) -> str:
        return f"{self._prefix}-{next(self._numbers)}"


def _live_support(
    rng: random.Random, cid: str, now: datetime, ids: _Ids, open_tickets: Sequence[str]
) -> list[PlannedEvent]:
    """Work on one of the customer's open tickets, or open a new one."""
    if open_tickets and rng.random() < 0.7:
        ticket_id = rng.choice(open_tickets)
        if rng.random() < 0.5:
            return [{"event_id": ids.take(), **_support(cid, now, ticket_id, "agent_replied")}]
        events = [{"event_id": ids.take(), **_support(cid, now, ticket_id, "resolved")}]
        if rng.random() < RATED_RATE:
            events.append({"event_id": ids.take(), **_rating(rng, cid, now, ticket_id)})
        return events
    event_id = ids.take()
    return [{"event_id": event_id, **_support(cid, now, f"ticket-{event_id}", "opened")}]


def _live_order(rng: random.Random, cid: str, now: datetime, ids: _Ids) -> PlannedEvent:
    event_id = ids.take()
    status = "cancelled" if rng.random() < CANCEL_RATE else "placed"
    order = _order(cid, now, f"order-{event_id}", _amount(rng), status, rng.randint(1, 5))
    return {"event_id": event_id, **order}


def _live_visit(
    rng: random.Random,
    profile: Profile,
    cid: str,
    now: datetime,
    ids: _Ids,
    open_tickets: Sequence[str],
) -> list[PlannedEvent]:
    """What one customer does right now: usually a login, then maybe an order or a ticket."""
    wants_login = rng.random() < 0.85
    wants_order = rng.random() < LIVE_ORDER_CHANCE[profile]
    wants_support = profile == "support_heavy" and rng.random() < 0.6
    events: list[PlannedEvent] = []
    if wants_login or not (wants_order or wants_support):
        events.append({"event_id": ids.take(), **_login(rng, cid, now)})
    if wants_order:
        events.append(_live_order(rng, cid, now, ids))
    if wants_support:
        events.extend(_live_support(rng, cid, now, ids, open_tickets))
    return events


def plan_live(
    rng: random.Random,
    customers_by_profile: Mapping[Profile, Sequence[str]],
    now: datetime,
    *,
    first_id: int = 1,
    id_prefix: str = "demo-live",
    visits: int = 1,
    open_tickets: Mapping[str, Sequence[str]] | None = None,
) -> list[PlannedEvent]:
    """The next ``visits`` customer visits, all at ``now``.

    Visitors are drawn by :data:`LIVE_WEIGHTS`: loyal customers most, declining ones almost
    never. Event ids run ``<id_prefix>-<first_id>`` upwards; the next call should start at
    ``first_id + len(result)``. ``open_tickets`` (see :func:`track_open_tickets`) lets
    support-heavy customers follow up on real tickets.
    """
    _require_aware(now)
    if visits < 1:
        raise ValueError("visits must be at least 1")
    population = [(cid, profile) for profile, ids in customers_by_profile.items() for cid in ids]
    if not population:
        raise ValueError("no customers to plan for")
    weights = [LIVE_WEIGHTS[profile] for _, profile in population]
    ids = _Ids(id_prefix, first_id)
    tickets = track_open_tickets(open_tickets or {}, ())
    planned: list[PlannedEvent] = []
    for _ in range(visits):
        cid, profile = rng.choices(population, weights=weights)[0]
        visit = _live_visit(rng, profile, cid, now, ids, tickets.get(cid, ()))
        tickets = track_open_tickets(tickets, visit)
        planned.extend(visit)
    return [{**event, "ts": _iso(event["ts"])} for event in planned]


def malformed_order(rng: random.Random, customer_id: str, number: int) -> bytes:
    """An order cut off mid-way, as a crashing app might leave it.

    A strict prefix of a JSON object is never valid JSON, so this always takes the
    dead-letter path while its key still names a real customer.
    """
    body = json.dumps(
        {
            "event_id": f"demo-malformed-{number}",
            "customer_id": customer_id,
            "type": "order",
            "amount": _amount(rng),
        }
    )
    return body[: len(body) - rng.randint(2, 12)].encode()


def live_stream(
    rng: random.Random,
    by_profile: Mapping[Profile, Sequence[str]],
    clock: Callable[[], datetime],
    *,
    id_prefix: str,
    open_tickets: Mapping[str, Sequence[str]],
) -> Iterator[PlannedEvent]:
    """Endless live events, one visit at a time, each stamped when it is planned."""
    next_id = 1
    tickets = open_tickets
    while True:
        visit = plan_live(
            rng, by_profile, clock(), first_id=next_id, id_prefix=id_prefix, open_tickets=tickets
        )
        next_id += len(visit)
        tickets = track_open_tickets(tickets, visit)
        yield from visit
