"""The sharded store: on one Redis with several shards, and on a real three-node Redis
Cluster, where the pipeline, recovery and backtest tests run again unchanged."""

from __future__ import annotations

import random
from typing import Any

import pytest
from redis.asyncio import Redis

from store.shards import LayoutMismatch
from store.store import Store
from tests.eventgen import fold, random_events, with_duplicates
from tests.integration.cluster import (  # noqa: F401  (fixtures: the cluster in place of the single Redis)
    redis_on_the_cluster,
    stack_on_the_cluster,
)
from tests.integration.test_backtest import (
    test_synthetic_jsonl_weekly_with_late_events_and_duplicates as test_backtest_on_the_cluster,
)
from tests.integration.test_periods import assert_kept_windows_follow_late_events
from tests.integration.test_pipeline import (
    test_known_mix_gives_exact_state_and_dead_letters as test_pipeline_on_the_cluster,
)
from tests.integration.test_recovery import (
    test_sigkill_mid_stream_then_restart_loses_and_doubles_nothing as test_kill_on_the_cluster,
)
from tests.integration.test_recovery import (
    test_two_workers_share_partitions_and_survive_losing_one as test_two_workers_on_the_cluster,
)
from tests.integration.test_store import apply_in_random_batches, records_for

__all__ = [
    "test_backtest_on_the_cluster",
    "test_kill_on_the_cluster",
    "test_pipeline_on_the_cluster",
    "test_two_workers_on_the_cluster",
]

KINDS = ("order", "login", "support")


async def assert_fold(store: Store, events: list[dict[str, Any]]) -> None:
    expected = fold(events, frozenset(KINDS))
    assert await store.customer_ids() == sorted(expected)
    for customer_id, state in expected.items():
        assert await store.read_customer(customer_id) == state, customer_id
    stats = await store.stats()
    assert sum(stats.accepted.values()) == len(
        {(e["type"], e["customer_id"], e["event_id"]) for e in events}
    )


@pytest.mark.parametrize("shards", [1, 5])
async def test_cluster_shards_equal_the_fold(redis: Redis, rng: random.Random, shards: int) -> None:
    store = Store(redis, f"cs{rng.randrange(1 << 30)}:", KINDS, shards=shards, writer=True)
    layout = await store.layout()
    assert layout.tagged and layout.count == shards
    events = with_duplicates(rng, random_events(rng, customers=60, count=3000), share=0.1)
    await apply_in_random_batches(store, records_for(events, partitions=3), rng)
    await assert_fold(store, events)


async def test_a_batch_cut_between_shards_is_finished_exactly_once(
    redis: Redis, rng: random.Random
) -> None:
    """The worker stops after some shards applied their part: the redelivered batch
    completes the others and changes nothing in those already done."""
    store = Store(redis, f"cut{rng.randrange(1 << 30)}:", KINDS, shards=6, writer=True)
    events = with_duplicates(rng, random_events(rng, customers=80, count=2000), share=0.05)
    records = records_for(events, partitions=2)
    script = store._script
    calls = 0

    async def stops_after_two(**kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls > 2:
            raise ConnectionError("the worker stopped here")
        return await script(**kwargs)

    store._script = stops_after_two  # type: ignore[assignment]
    with pytest.raises(ConnectionError):
        await store.apply_batch(records[:1000])
    store._script = script
    # where reading resumes: the lowest offset over the shards, before the cut batch
    assert await store.applied_offsets() == {}
    again = await store.apply_batch(records[:1000])
    assert again.redelivered > 0
    await store.apply_batch(records[1000:])
    await assert_fold(store, events)


async def test_shard_count_is_recorded_and_a_different_one_refused(
    redis: Redis, rng: random.Random
) -> None:
    prefix = f"rec{rng.randrange(1 << 30)}:"
    first = await Store(redis, prefix, shards=None, writer=True).layout()
    assert first.count == 12  # a new store on a cluster
    assert (await Store(redis, prefix).layout()).count == 12  # readers find it
    with pytest.raises(LayoutMismatch, match="12 shard"):
        await Store(redis, prefix, shards=4, writer=True).layout()


async def test_a_rebuild_can_change_the_shard_count(redis: Redis, rng: random.Random) -> None:
    prefix = f"re{rng.randrange(1 << 30)}:"
    events = random_events(rng, customers=30, count=500)
    records = records_for(events, partitions=2)
    old = Store(redis, prefix, KINDS, shards=3, writer=True)
    await old.apply_batch(records)
    assert await old.wipe(shards=5) > 0
    assert await old.customer_count() == 0
    # workers started afterwards without a count find the new one, and replay into it
    new = Store(redis, prefix, KINDS, writer=True)
    assert (await new.layout()).count == 5
    await new.apply_batch(records)
    await assert_fold(new, events)


async def test_kept_window_unions_follow_late_events_in_cluster_shards(
    redis: Redis, rng: random.Random
) -> None:
    store = Store(redis, f"kw{rng.randrange(1 << 30)}:", KINDS, shards=3, writer=True)
    await assert_kept_windows_follow_late_events(
        store, random_events(rng, customers=60, count=1000), rng
    )
