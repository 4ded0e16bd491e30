"""The read API against a real worker and the real server: scopes, a customer, every segment
walked in full through small pages, metrics, cohorts and exports, each answer the same as
the command line's and valid against the OpenAPI document."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import random
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from jsonschema import Draft202012Validator
from redis.asyncio import Redis
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from contract.events import build_event
from processors.segments import COLUMNS, SEGMENTS
from retention import queries
from retention.api_keys import KeyStore
from retention.config import Settings
from retention.ingest import IngestServer, loads_document
from store.evaluations import ranked_at_risk, stored_evaluations
from store.ingest_state import IngestState
from store.store import Store
from streams.producer import EventProducer
from tests.integration.conftest import Workers, wait_until

DOC = loads_document()
_REGISTRY = Registry().with_resource(
    "urn:openapi", Resource.from_contents(DOC, default_specification=DRAFT202012)
)
NOW = datetime.now(UTC).replace(microsecond=0)


def documented(path: str, status: int, body: Any) -> None:
    pointer = f"/paths/{path.replace('/', '~1')}/get/responses/{status}"
    schema = {"$ref": f"urn:openapi#{pointer}/content/application~1json/schema"}
    Draft202012Validator(schema, registry=_REGISTRY).validate(body)


def history(customers: int) -> list[dict[str, Any]]:
    """Buyers of every kind: regular, lapsed long ago, quiet lately, newcomers."""
    rng = random.Random(3)
    events = []
    for c in range(customers):
        cid = f"r-{c:03d}"
        last = rng.choice([2, 20, 50, 130, 200])
        count = rng.randint(1, 6)
        for n in range(count):
            when = NOW - timedelta(days=last + 12 * (count - 1 - n))
            events.append(
                {
                    "event_id": f"{cid}-{n}",
                    "customer_id": cid,
                    "ts": when.isoformat(),
                    "type": "order",
                    "amount": rng.randint(10, 90),
                    # a market per customer, and a later move for some
                    "country": "FR" if c % 7 == 0 and n == count - 1 else ("DE", "at")[c % 2],
                }
            )
    return events


async def at_risk_by_country(
    session: aiohttp.ClientSession,
    server: str,
    key: str,
    store: Store,
    states: dict[str, Any],
) -> list[tuple[set[str], set[str], list[Any]]]:
    """Per country filter: the at-risk segment's members the API lists (every page), the
    customers whose latest country passes, and the top three of the filtered ranking."""
    out = []
    for countries in ("de", "AT,FR", "FR"):
        wanted = {c.upper() for c in countries.split(",")}
        listed: set[str] = set()
        cursor: dict[str, str] = {}
        while True:  # every page: a page walks a bounded slice of the store
            status, body = await get(
                session, f"{server}/v1/customers", key, segment="at_risk",
                country=countries, limit=1000, **cursor,
            )  # fmt: skip
            assert status == 200, body
            assert all(r["country"] in wanted for r in body["customers"])
            listed |= {r["customer_id"] for r in body["customers"]}
            if body["next_cursor"] is None:
                break
            cursor = {"cursor": body["next_cursor"]}
        latest = {c for c, st in states.items() if st.attributes["country"].latest in wanted}
        ranked = await ranked_at_risk(
            store, 3, lambda st, w=wanted: st.attributes["country"].latest in w
        )
        out.append((listed, latest, ranked))
    return out


@pytest.fixture
async def keys(settings: Settings, redis: Redis) -> dict[str, str]:
    store = KeyStore(IngestState(redis, settings.key_prefix))
    return {
        "ingest": await store.create("app"),
        "read": await store.create("crm", ["read"]),
        "admin": await store.create("ops", ["admin"]),
    }


@pytest.fixture
async def server(settings: Settings) -> AsyncIterator[str]:
    running = IngestServer(settings.model_copy(update={"ingest_key_cache_seconds": 0}), port=0)
    await running.start()
    yield running.url
    await running.stop()


async def get(
    session: aiohttp.ClientSession, url: str, key: str | None, **params: Any
) -> tuple[int, Any]:
    headers = {} if key is None else {"Authorization": f"Bearer {key}"}
    async with session.get(url, params=params, headers=headers) as resp:
        text = await resp.text()
        try:
            return resp.status, json.loads(text)
        except ValueError:
            return resp.status, text


async def test_reading_customers_segments_metrics_and_exports(
    settings: Settings,
    store: Store,
    producer: EventProducer,
    workers: Workers,
    keys: dict[str, str],
    server: str,
) -> None:
    events = history(120)
    for raw in events:
        await producer.send(build_event(raw))
    await producer.flush()
    workers.start()

    async def evaluated() -> bool:
        ids = await store.customer_ids()
        return len(ids) == 120 and len(await stored_evaluations(store, ids)) == 120

    await wait_until(evaluated, 90, "every customer evaluated", workers.logs)
    ids = await store.customer_ids()
    stored = await stored_evaluations(store, ids)

    async with aiohttp.ClientSession() as session:
        # scopes: no key 401; an ingest key cannot read; a read key cannot write
        assert (await get(session, f"{server}/v1/metrics", None))[0] == 401
        status, body = await get(session, f"{server}/v1/metrics", keys["ingest"])
        assert (status, body["error"]) == (403, "forbidden")
        headers = {"Authorization": f"Bearer {keys['read']}"}
        async with session.post(f"{server}/v1/events", json={}, headers=headers) as resp:
            assert resp.status == 403
        assert (await get(session, f"{server}/v1/metrics", keys["admin"]))[0] == 200
        # the alerts' runbook needs no key, and holds a section for every alert rule
        async with session.get(f"{server}/runbook") as resp:
            assert resp.status == 200
            page = await resp.text()
        rules_file = Path(__file__).parents[2] / "prometheus" / "rules" / "retention.yml"
        rules = yaml.safe_load(rules_file.read_text())
        names = [r["alert"] for g in rules["groups"] for r in g["rules"] if "alert" in r]
        assert names and all(f'id="{name.lower()}"' in page for name in names), names

        # one customer: as the command line shows it
        status, body = await get(session, f"{server}/v1/customers/r-007", keys["read"])
        assert status == 200
        documented("/v1/customers/{id}", 200, body)
        assert body == await queries.customer(settings, "r-007")
        status, body = await get(session, f"{server}/v1/customers/nobody", keys["read"])
        assert (status, body["error"]) == (404, "not_found")

        # every segment, walked through pages of 7: exactly the stored evaluations' members
        for segment in SEGMENTS:
            want = {
                cid
                for cid, ev in stored.items()
                if (ev.get("hv") == "1" if segment == "high_value" else ev["st"] == segment)
            }
            got: dict[str, dict[str, Any]] = {}
            cursor, pages = None, 0
            while True:
                params = {"segment": segment, "limit": 7, **({"cursor": cursor} if cursor else {})}
                status, body = await get(session, f"{server}/v1/customers", keys["read"], **params)
                assert status == 200, body
                documented("/v1/customers", 200, body)
                got.update((r["customer_id"], r) for r in body["customers"])
                pages += 1
                cursor = body["next_cursor"]
                if cursor is None:
                    break
            assert set(got) == want, segment
            assert pages >= 2 or len(want) < 7

        # filters: the band and least CLTV narrow the at-risk list
        status, body = await get(
            session, f"{server}/v1/customers", keys["read"], segment="at_risk", band="high"
        )
        assert status == 200 and all(r["band"] == "high" for r in body["customers"])
        # ... and so does the customers' latest country, in the API and in the ranking,
        # compared while the ranking holds still (a refit queues every at-risk customer
        # for a new evaluation, which may move it)
        states = {st.customer_id: st for st in await store.read_customers(ids)}

        for _ in range(40):
            everyone = await ranked_at_risk(store, 1000)
            found = await at_risk_by_country(session, server, keys["read"], store, states)
            if everyone == await ranked_at_risk(store, 1000):
                break
            await asyncio.sleep(0.25)
        else:
            pytest.fail("the at-risk ranking never held still for a second")
        assert len(everyone) > 6, "too few at risk to tell a filter from none"
        for listed, latest, ranked in found:
            assert listed == {r["customer_id"] for r in everyone} & latest
            # the ranking read down until enough are found: the same order
            assert ranked == [r for r in everyone if r["customer_id"] in latest][:3]
        cutoff = (NOW - timedelta(days=100)).isoformat()
        status, body = await get(
            session,
            f"{server}/v1/customers",
            keys["read"],
            segment="churned",
            active_before=cutoff,
            limit=1000,
        )
        assert status == 200 and body["customers"]
        assert all(r["last_activity_at"] < cutoff for r in body["customers"])
        for bad in ({"segment": "vip"}, {"segment": "new", "band": "huge"}, {"segment": "new",
                    "cursor": "not-a-cursor"}, {"segment": "new", "active_after": "yesterday"}):  # fmt: skip
            status, body = await get(session, f"{server}/v1/customers", keys["read"], **bad)
            assert (status, body["error"]) == (400, "malformed"), bad

        # metrics and cohorts: the command line's --json
        status, body = await get(session, f"{server}/v1/metrics", keys["read"], period="month")
        documented("/v1/metrics", 200, body)
        rows, active = await queries.live_periods(settings, "month", settings.churn_after_days)
        assert body["periods"] == rows and body["active_customers"] == active
        status, body = await get(session, f"{server}/v1/cohorts", keys["read"], period="week")
        documented("/v1/cohorts", 200, body)
        assert body["cohorts"] == await queries.live_cohorts(settings, "week")

        # exports: every member once, as CSV and JSON lines
        churned = {cid for cid, ev in stored.items() if ev["st"] == "churned"}
        status, text = await get(
            session, f"{server}/v1/export", keys["read"], segment="churned", format="csv"
        )
        table = list(csv.DictReader(io.StringIO(text)))
        assert status == 200 and tuple(table[0]) == COLUMNS
        assert sorted(r["customer_id"] for r in table) == sorted(churned)
        status, text = await get(session, f"{server}/v1/export", keys["read"], segment="churned")
        lines = [json.loads(line) for line in text.splitlines()]
        assert sorted(r["customer_id"] for r in lines) == sorted(churned)
