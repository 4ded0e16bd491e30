"""The fit grid on a real Redis: the batch script keeps it in step with every customer's
orders per day, shard by shard, and the refit and high-value threshold read from it (and
from a sample of customers) agree with those computed from every customer's history."""

from __future__ import annotations

import logging
import math
import random
from collections import Counter
from datetime import UTC, date, datetime, timedelta
from typing import Any, cast

import numpy as np
import pytest
from redis.asyncio import Redis

from processors.alive_models import ModelName
from processors.fit_grid import cltv_quantile
from processors.forecast import ModelOptions, fit_histories
from processors.gamma_gamma import expected_spend
from store.evaluations import update_high_value_threshold
from store.models import GRID, fit_report, read_histories, read_sample, refit, stored_fit
from store.store import Store, orders_by_day
from tests.eventgen import random_events, with_duplicates
from tests.integration.customer_fields import stored_fields
from tests.integration.test_store import apply_in_random_batches, records_for

KINDS = ("order", "login", "support")
T0 = datetime(2024, 1, 1, tzinfo=UTC)
AS_OF = (T0 + timedelta(days=300)).date()  # after every order


def orders(rng: random.Random, customers: int) -> list[dict[str, Any]]:
    """Buyers who differ in rate and spend: same-day repeats, refunds, cancellations, and
    events out of time order (late ones earlier than a customer's first); retried
    deliveries repeat some events."""
    events: list[dict[str, Any]] = []
    for c in range(customers):
        cid = f"g{c:04d}"
        start = rng.randrange(0, 120)
        typical = rng.lognormvariate(3.0, 0.7)
        life = rng.choice([1, 10, 40, 80, 160])  # some drop out early, some stay
        for n in range(rng.choice([1, 1, 1, 1, 2, 2, 3, 5, 8, 13])):
            day = start + rng.choice([0, 0, rng.randrange(0, life), rng.randrange(0, life), -5])
            status = rng.choices(["placed", "refunded", "cancelled"], [10, 1, 1])[0]
            at = T0 + timedelta(days=max(day, 0), hours=rng.randrange(0, 24))
            amount = round(typical * rng.uniform(0.5, 1.5), 2)
            events.append(
                {"event_id": f"{cid}-{n}", "customer_id": cid, "type": "order",
                 "ts": at.isoformat(), "amount": amount, "status": status}
            )  # fmt: skip
    rng.shuffle(events)
    return with_duplicates(rng, events, share=0.1)


def logins_only(rng: random.Random, customers: int) -> list[dict[str, Any]]:
    """Customers who log in and never order."""
    return [
        {"event_id": f"l{c:03d}-{n}", "customer_id": f"l{c:03d}", "type": "login",
         "ts": (T0 + timedelta(days=rng.randrange(200), hours=n)).isoformat(), "channel": "web"}
        for c in range(customers)
        for n in range(rng.randint(1, 4))
    ]  # fmt: skip


async def expected_cells(store: Store) -> list[Counter[str]]:
    """Each shard's cells, computed from its customers' placed orders per day (the day
    fields of the customer's state)."""
    layout = await store.layout()
    want: list[Counter[str]] = [Counter() for _ in layout.prefixes]
    for customer_id in await store.customer_ids():
        shard = layout.shard_of(customer_id)
        days = list(orders_by_day(await stored_fields(store, customer_id)))
        if days:
            want[shard][f"{min(days)}:{max(days)}:{len(days)}"] += 1
    return want


async def stored_cells(store: Store) -> list[Counter[str]]:
    return [
        Counter({str(cell): int(n) for cell, n in (await store.redis.hgetall(home + GRID)).items()})
        for home in (await store.layout()).prefixes
    ]


@pytest.mark.parametrize("shards", [1, 4])
async def test_the_grid_follows_every_customers_order_days(
    redis: Redis, rng: random.Random, shards: int
) -> None:
    store = Store(redis, f"fg{rng.randrange(1 << 30)}:", KINDS, shards=shards, writer=True)
    events = with_duplicates(rng, random_events(rng, customers=80, count=2500), share=0.1)
    events += orders(rng, 60) + logins_only(rng, 5)
    await apply_in_random_batches(store, records_for(events, partitions=3), rng)
    got = await stored_cells(store)
    assert got == await expected_cells(store)
    assert all(n > 0 for shard in got for n in shard.values())  # emptied cells go
    buyers = sum(sum(shard.values()) for shard in got)
    assert 0 < buyers < await store.customer_count()  # login-only customers have no cell


@pytest.mark.parametrize("model", ["mbgnbd", "bgnbd"])
async def test_refit_from_the_grid_equals_the_per_customer_refit(
    redis: Redis, model: ModelName
) -> None:
    rng = random.Random(5)
    store = Store(redis, f"fgfit{rng.randrange(1 << 30)}:", ("order",), shards=4, writer=True)
    await apply_in_random_batches(store, records_for(orders(rng, 300), partitions=2), rng)
    options = ModelOptions(model, 12, 0.01)

    fit = await refit(store, AS_OF, options)
    histories = await read_histories(store, AS_OF)
    reference = fit_histories(histories, AS_OF, options)
    assert fit is not None and reference.spend is not None
    # the same rows, the same search: the same parameters
    for name, want in reference.params.as_dict().items():
        assert fit.params.as_dict()[name] == pytest.approx(want, rel=1e-9, abs=0), name
    assert fit.customers == reference.customers == len(histories)
    # the sample holds every customer of a small store (in another order: the correlation
    # is a sum taken in another order)
    assert fit.spend is not None
    assert fit.spend.params == reference.spend.params
    assert fit.spend.customers == reference.spend.customers
    assert fit.spend.correlation == pytest.approx(reference.spend.correlation, rel=1e-9)
    assert fit.log_likelihood == pytest.approx(reference.log_likelihood, rel=1e-12)
    assert await stored_fit(store) == fit
    report = await fit_report(store)
    assert report is not None
    assert report["source"] == "grid" and report["left_out"] == 0
    assert report["customers"] == fit.customers and report["sampled"] == 300
    assert report["sampled_buyers"] == len(histories)
    assert 0 < report["cells"] < fit.customers
    assert report["seconds"] >= report["read_seconds"] >= 0 and report["fit_seconds"] >= 0

    threshold = await update_high_value_threshold(store, 0.8)
    assert threshold is not None
    assert threshold == cltv_quantile(fit, histories, 0.8)

    # a day later the refit starts from the stored fit, and lands where a cold fit lands:
    # the same likelihood; parameters as close as so few buyers pin them down
    assert report["start"] == "cold"
    later = AS_OF + timedelta(days=1)
    warm = await refit(store, later, options)
    cold = fit_histories(await read_histories(store, later), later, options)
    assert warm is not None and warm.params != fit.params
    assert warm.log_likelihood is not None and cold.log_likelihood is not None
    assert warm.log_likelihood >= cold.log_likelihood - 1e-10 * abs(cold.log_likelihood)
    if model == "mbgnbd":  # the BG/NBD search does not converge on these buyers (it warns)
        assert warm.log_likelihood == pytest.approx(cold.log_likelihood, rel=1e-10)
        for name, want in cold.params.as_dict().items():
            assert warm.params.as_dict()[name] == pytest.approx(want, rel=1e-3), name
    report = await fit_report(store)
    assert report is not None and report["start"] == "warm"


async def test_a_sample_gives_the_threshold_and_spend_within_sampling_error(
    redis: Redis,
) -> None:
    rng = random.Random(9)
    store = Store(redis, f"fgs{rng.randrange(1 << 30)}:", ("order",), shards=4, writer=True)
    await apply_in_random_batches(store, records_for(orders(rng, 2000), partitions=2), rng)
    everyone = await read_histories(store, AS_OF)
    full = fit_histories(everyone, AS_OF, ModelOptions())
    size = 600
    fit = await refit(store, AS_OF, ModelOptions(), sample=size)
    assert fit is not None and fit.spend is not None and full.spend is not None
    assert fit.params == full.params  # P(alive) is exact whatever the sample
    report = await fit_report(store)
    assert report is not None and report["sampled"] == size
    sampled, _ = await read_sample(store, AS_OF, size)
    assert len({h.customer_id for h in sampled}) == len(sampled) == report["sampled_buyers"]
    assert fit.spend.customers == sum(1 for h in sampled if h.x > 0 and h.spend > 0)

    # the spend the model expects per purchase of the repeat buyers (what their CLTV uses)
    # moves with the sample, within a few standard errors of a mean over that many repeat
    # buyers. Not the population mean p v / (q - 1) (a buyer without repeat purchases):
    # when a sample's buyers vary little from purchase to purchase, the likelihood keeps
    # rising as p grows, the search stops far out (p ~ 1e4 to 1e15), and the population
    # mean then rests on q alone, which some 260 buyers leave loose (36 to 371 over runs of
    # this test, against 41 from everyone)
    buyers = [h for h in everyone if h.x > 0 and h.spend > 0]
    xs = np.array([h.x for h in buyers], dtype=np.float64)
    repeat = np.array([h.spend for h in buyers], dtype=np.float64)
    from_sample = float(np.mean(expected_spend(fit.spend.params, xs, repeat)))
    from_everyone = float(np.mean(expected_spend(full.spend.params, xs, repeat)))
    standard_error = repeat.std() / math.sqrt(fit.spend.customers)
    assert abs(from_sample - from_everyone) < 4 * standard_error + 0.1 * repeat.mean()
    assert fit.spend.params.q > 1  # a finite population mean

    # the threshold's rank among every buyer's CLTV lies within four standard errors of
    # the quantile asked for (docs/metrics.md)
    quantile = 0.8
    threshold = await update_high_value_threshold(store, quantile, sample=size)
    assert threshold is not None
    values = np.array([cast(float, cltv_quantile(fit, [h], 0.5)) for h in everyone])
    rank = float(np.mean(values < threshold))
    spread = 4 * math.sqrt(quantile * (1 - quantile) / len(sampled))
    assert abs(rank - quantile) < spread
    # from the sample, not every buyer (whose quantile it may still equal: many buyers
    # share a CLTV)
    assert len(sampled) < len(everyone)
    assert threshold == cltv_quantile(fit, sampled, quantile)


async def test_buyers_with_orders_after_the_as_of_day_are_left_out_and_counted(
    redis: Redis,
) -> None:
    rng = random.Random(8)
    store = Store(redis, f"fgl{rng.randrange(1 << 30)}:", ("order",), shards=4, writer=True)
    await apply_in_random_batches(store, records_for(orders(rng, 200), partitions=2), rng)
    as_of = (T0 + timedelta(days=90)).date()
    limit = (as_of - date(1970, 1, 1)).days
    spans = [
        (int(first), int(last), n)
        for shard in await stored_cells(store)
        for cell, n in shard.items()
        for first, last, _ in [cell.split(":")]
    ]
    later = sum(n for first, last, n in spans if first <= limit < last)
    before = sum(n for _, last, n in spans if last <= limit)
    assert later > 0 and before > 0
    fit = await refit(store, as_of)
    assert fit is not None and fit.customers == before
    report = await fit_report(store)
    assert report is not None and report["left_out"] == later


async def test_a_store_without_a_grid_is_refitted_from_every_customer(
    redis: Redis, caplog: pytest.LogCaptureFixture
) -> None:
    rng = random.Random(3)
    store = Store(redis, f"fgo{rng.randrange(1 << 30)}:", ("order",), shards=4, writer=True)
    await apply_in_random_batches(store, records_for(orders(rng, 150), partitions=2), rng)
    options = ModelOptions("mbgnbd", 12, 0.01)
    from_grid = await refit(store, AS_OF, options)
    for home in (await store.layout()).prefixes:
        await redis.delete(home + GRID)  # as a store filled before the grid existed
    with caplog.at_level(logging.WARNING, logger="store.models"):
        fallback = await refit(store, AS_OF, options)
    assert "retention rebuild fills the grid" in caplog.text
    assert fallback is not None and from_grid is not None
    assert fallback.params == from_grid.params
    assert fallback.spend is not None and from_grid.spend is not None
    assert fallback.spend.params == from_grid.spend.params
    report = await fit_report(store)
    assert report is not None and report["source"] == "customers"


async def test_no_buyers_no_fit(redis: Redis, rng: random.Random) -> None:
    store = Store(redis, f"fgn{rng.randrange(1 << 30)}:", KINDS, shards=4, writer=True)
    events = [e for e in random_events(rng, customers=20, count=200) if e["type"] == "login"]
    await apply_in_random_batches(store, records_for(events, partitions=2), rng)
    assert await store.customer_count() > 0
    assert await refit(store, AS_OF) is None
    assert await stored_fit(store) is None
