"""Synthetic event streams for tests, and the batch reference they are checked against."""

from __future__ import annotations

import random
from collections.abc import Iterable
from typing import Any

from contract.events import Event, build_event
from processors.currency import Rates
from processors.state import CustomerState, apply_event
from retention.config import Settings

BASE_TS = 1_700_000_000  # 2023-11-14


def random_events(rng: random.Random, customers: int, count: int) -> list[dict[str, Any]]:
    """A mix of every event type and action, with times out of order within a customer."""
    out: list[dict[str, Any]] = []
    for n in range(count):
        cid = f"cust-{rng.randrange(customers):04d}"
        ts = BASE_TS + rng.randrange(0, 200 * 86400)
        roll = rng.random()
        event: dict[str, Any] = {"event_id": f"ev-{n}", "customer_id": cid, "ts": ts}
        if roll < 0.45:
            status = rng.choices(["placed", "refunded", "cancelled"], [8, 1, 1])[0]
            amount = round(rng.uniform(1, 300), 2)
            event |= {"type": "order", "amount": amount, "status": status}
            event |= _attributes(rng)
        elif roll < 0.75:
            event |= {"type": "login", "channel": rng.choice(["web", "app"])}
            if rng.random() < 0.3:
                event["country"] = rng.choice(COUNTRIES)
        else:
            ticket = f"t-{rng.randrange(3)}"
            action = rng.choice(["opened", "agent_replied", "resolved", "reopened", "rated"])
            event |= {"type": "support", "ticket_id": ticket, "action": action}
            if action == "rated":
                survey = rng.choice(["csat", "nps", "ces"])
                high = {"csat": 5, "nps": 10, "ces": 7}[survey]
                event |= {"survey": survey, "score": rng.randint(0 if survey == "nps" else 1, high)}
        if rng.random() < 0.5:
            event["ts"] = _iso(ts)
        out.append(event)
    return out


#: Countries as apps send them, in either case (the contract keeps them in upper case).
COUNTRIES = ["DE", "FR", "us", "JP"]


def _attributes(rng: random.Random) -> dict[str, str]:
    """Customer attributes an order may carry: often a country, sometimes a channel or a
    shop, and they change over a customer's life."""
    out = {}
    if rng.random() < 0.6:
        out["country"] = rng.choice(COUNTRIES)
    if rng.random() < 0.4:
        out["channel"] = rng.choice(["web", "app", "marketplace"])
    if rng.random() < 0.3:
        out["shop"] = rng.choice(["eu-store", "us-store"])
    return out


def _iso(ts: int) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")


def with_duplicates(
    rng: random.Random, events: list[dict[str, Any]], share: float
) -> list[dict[str, Any]]:
    """Insert exact repeats of earlier events a little later in the stream."""
    out: list[dict[str, Any]] = []
    for event in events:
        out.append(event)
        if rng.random() < share:
            out.insert(max(0, len(out) - rng.randrange(1, 20)), dict(event))
    return out


def worker_rates(settings: Settings) -> Rates:
    """The conversion a worker with these settings applies, for folds compared with it."""
    return Rates(settings.reporting_currency, settings.default_currency, settings.rates_file)


def fold(
    events: Iterable[dict[str, Any] | Event],
    kinds: frozenset[str] = frozenset({"order", "login"}),
    rates: Rates | None = None,
) -> dict[str, CustomerState]:
    """The batch reference: apply events in the given order, each event once (an event is
    its type, customer and event id, the store's dedupe scope)."""
    seen: set[tuple[str, str, str]] = set()
    states: dict[str, CustomerState] = {}
    for raw in events:
        event = raw if not isinstance(raw, dict) else build_event(raw)
        identity = (event.type, event.customer_id, event.event_id)
        if identity in seen:
            continue
        seen.add(identity)
        state = states.get(event.customer_id) or CustomerState(event.customer_id)
        states[event.customer_id] = apply_event(state, event, kinds, rates)
    return states
