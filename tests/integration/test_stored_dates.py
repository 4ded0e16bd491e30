"""Readers over a store that an older version filled with out-of-range dates.

An older version accepted any event time, so a store may hold period keys numbered for
9999-12-31 or 0001-01-01 and a ``meta`` span reaching that far. The keys are written here
directly, as that version wrote them. ``metrics``, ``cohorts``, the exporter's scrape and
the closing of periods must go on: one warning per read, the dates out of range skipped,
and the closing bounded.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from redis.asyncio import Redis

from contract.events import build_event
from processors.windows import PERIOD_LETTERS, PERIODS, Period, epoch_day, period_start
from retention.config import Settings
from retention.exporter import RetentionCollector
from store.periods import MAX_CLOSED_PER_CALL, VALID_UNTIL, Periods
from store.store import Store, accepted_record
from tests.integration.conftest import Stack, settings_env

FAR_FUTURE = datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC)
FAR_PAST = datetime(1, 1, 1, tzinfo=UTC)
#: Epoch-day numbers of the periods holding those two times: what the older version wrote.
OUT_OF_RANGE_DAYS = {
    period: (epoch_day(period_start(FAR_PAST, period)), epoch_day(period_start(FAR_FUTURE, period)))
    for period in PERIODS
}


def ms(ts: datetime) -> int:
    return (ts - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(milliseconds=1)


async def seed(redis: Redis, prefix: str, now: datetime, rng: random.Random) -> datetime:
    """Real orders over the last 40 days, then what the older version left; returns the
    first real event time."""
    store = Store(redis, prefix, ("order", "login"), offsets_scope="k")
    records = []
    first = now
    for n in range(60):
        ts = now - timedelta(days=rng.randrange(40), hours=1)
        first = min(first, ts)
        event = build_event(
            {
                "type": "order",
                "customer_id": f"c{n % 12}",
                "event_id": f"e{n}",
                "ts": ts.timestamp(),
                "amount": 10,
            }
        )
        records.append(accepted_record(event, "orders", 0, n))
    await store.apply_batch(records)

    async with redis.pipeline(transaction=False) as pipe:
        for period, days in OUT_OF_RANGE_DAYS.items():
            p = PERIOD_LETTERS[period]
            for day in days:
                for kind in ("act", "coh", "buy", "rep"):
                    pipe.setbit(f"{prefix}{kind}:{p}:{day}", 3, 1)
                pipe.hset(f"{prefix}sales:{p}:{day}", mapping={"o": 1, "pm": 10**7, "rm": 0})
        pipe.hset(f"{prefix}meta", mapping={"first": ms(FAR_PAST), "last": ms(FAR_FUTURE)})
        pipe.hset(f"{prefix}newest:k", mapping={"orders|0": ms(FAR_FUTURE)})
        await pipe.execute()
    return first


@pytest.fixture
def prefix(rng: random.Random) -> str:
    return f"old{rng.randrange(1 << 30)}:"


def cli(stack: Stack, prefix: str, *args: str) -> subprocess.CompletedProcess[str]:
    settings = Settings(kafka_bootstrap=stack.bootstrap, redis_url=stack.redis_url)
    return subprocess.run(
        [sys.executable, "-m", "retention.cli", *args, "--key-prefix", prefix],
        capture_output=True,
        text=True,
        timeout=120,
        env=settings_env(settings),
    )


def warnings_of(stderr: str) -> list[dict[str, Any]]:
    lines = [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]
    return [line for line in lines if line["level"] == "warning"]


@pytest.mark.parametrize("period", ["day", "week", "month"])
async def test_metrics_skip_out_of_range_dates_with_one_warning(
    stack: Stack, redis: Redis, prefix: str, rng: random.Random, period: Period
) -> None:
    now = datetime.now(UTC)
    first = await seed(redis, prefix, now, rng)
    proc = cli(stack, prefix, "metrics", "--period", period, "--json")
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(proc.stdout)["periods"]
    # from the period of the first real order (the span falls back to the period keys in
    # range) through the period holding now: nothing of year 1 or 9999
    assert rows[0]["period"] == period_start(first, period).date().isoformat()
    assert rows[-1]["period"] == period_start(now, period).date().isoformat()
    assert sum(r["orders"] for r in rows) == 60
    warned = warnings_of(proc.stderr)
    assert len(warned) == 1, proc.stderr
    assert "out of range" in warned[0]["msg"]


async def test_cohorts_skip_out_of_range_dates(
    stack: Stack, redis: Redis, prefix: str, rng: random.Random
) -> None:
    now = datetime.now(UTC)
    first = await seed(redis, prefix, now, rng)
    proc = cli(stack, prefix, "cohorts", "--period", "week", "--json")
    assert proc.returncode == 0, proc.stderr
    cohorts = json.loads(proc.stdout)["cohorts"]
    assert cohorts and min(cohorts) == period_start(first, "week").date().isoformat()
    assert max(cohorts) <= now.date().isoformat()
    assert sum(c["size"] for c in cohorts.values()) == 12
    assert len(warnings_of(proc.stderr)) == 1, proc.stderr


async def test_exporter_scrape_skips_out_of_range_dates(
    stack: Stack, redis: Redis, prefix: str, rng: random.Random
) -> None:
    now = datetime.now(UTC)
    first = await seed(redis, prefix, now, rng)
    # the clock of this tracker is the watermark, which the far-future partition must not move
    settings = Settings(redis_url=stack.redis_url, key_prefix=prefix, clock="watermark")
    collector = RetentionCollector(settings)
    try:
        registry = CollectorRegistry()
        registry.register(collector)
        get = registry.get_sample_value
        assert get("retention_exporter_redis_up") == 1
        assert get("retention_tracked_customers") == 12
        # the last event time stored is out of range: its age is unknown, not negative
        assert get("retention_last_event_age_seconds") is None
        # the month of the first real order surely has a cohort (this month may not)
        month = {"period": "month", "cohort": first.strftime("%Y-%m"), "offset": "0"}
        assert get("retention_cohort_active_customers", month) is not None
    finally:
        collector.close()


async def test_closing_is_bounded_and_stays_in_range(
    redis: Redis, prefix: str, rng: random.Random
) -> None:
    now = datetime.now(UTC)
    first = await seed(redis, prefix, now, rng)
    periods = Periods(redis, prefix)
    # a clock far out, as a watermark of the older data would give
    started = time.monotonic()
    compacted = await periods.close("day", clock=FAR_FUTURE)
    took = time.monotonic() - started
    assert len(compacted) == MAX_CLOSED_PER_CALL
    assert compacted[0] == period_start(first, "day")
    assert all(start < VALID_UNTIL for start in compacted)
    assert took < 10, took
    # the next call goes on where the last one stopped, and compacts nothing twice
    again = await periods.close("day", clock=FAR_FUTURE)
    assert len(again) == MAX_CLOSED_PER_CALL
    assert again[0] == compacted[-1] + timedelta(days=1)


async def test_watermark_skips_out_of_range_times(redis: Redis, prefix: str) -> None:
    periods = Periods(redis, prefix)
    await redis.hset(f"{prefix}newest:k", mapping={"orders|0": ms(FAR_FUTURE), "orders|1": 5000})
    # the far-future partition counts as one without data: the watermark waits for it
    assert await periods.watermark("k", {"orders": 2}) is None
    assert await periods.watermark("k", {"orders": 1}) == datetime.fromtimestamp(5, UTC)
