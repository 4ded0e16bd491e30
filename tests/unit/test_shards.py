"""Where customers' keys live, and which worker evaluates which shard."""

from __future__ import annotations

import random

import pytest
from redis.crc import REDIS_CLUSTER_HASH_SLOTS, key_slot

from store.shards import ShardLayout, shard_of
from streams.timers import owned_shards


def test_one_untagged_shard_is_the_layout_without_shards() -> None:
    layout = ShardLayout.of("rt:", 1)
    assert layout.prefixes == ("rt:",)
    assert layout.prefix_of("anyone") == "rt:"
    assert layout.homes() == ("rt:",)


@pytest.mark.parametrize("count", [2, 3, 12, 16, 100])
def test_each_shard_falls_in_its_own_share_of_the_slots(count: int) -> None:
    layout = ShardLayout.of("rt:", count)
    for shard, prefix in enumerate(layout.prefixes):
        slot = key_slot(f"{prefix}c:someone".encode())
        assert shard * REDIS_CLUSTER_HASH_SLOTS // count <= slot
        assert slot < (shard + 1) * REDIS_CLUSTER_HASH_SLOTS // count
        # every key of the shard shares the slot
        assert key_slot(f"{prefix}act:d:20000".encode()) == slot
    assert layout.homes() == ("rt:", *layout.prefixes)


def test_one_shard_on_a_cluster_is_still_tagged() -> None:
    layout = ShardLayout.of("rt:", 1, cluster=True)
    assert layout.prefixes[0].startswith("rt:{")


def test_customers_spread_evenly_and_stay_put() -> None:
    rng = random.Random(5)
    ids = [f"c-{rng.randrange(10**9)}" for _ in range(40_000)]
    counts = [0] * 8
    for customer in ids:
        counts[shard_of(customer, 8)] += 1
    assert max(counts) < 1.05 * 40_000 / 8 and min(counts) > 0.95 * 40_000 / 8
    assert [shard_of(c, 8) for c in ids[:50]] == [shard_of(c, 8) for c in ids[:50]]


def test_bad_layouts_are_refused() -> None:
    with pytest.raises(ValueError, match="braces"):
        ShardLayout.of("rt{x}:", 4)
    with pytest.raises(ValueError, match="between"):
        ShardLayout.of("rt:", 0)


def test_shards_follow_the_partitions_of_the_orders_topic() -> None:
    both = [("orders", 0), ("orders", 1), ("orders", 2), ("orders", 3)]
    assert owned_shards(both, "orders", 4, 12) == list(range(12))
    first = [("orders", 0), ("orders", 2), ("logins", 1)]
    second = [("orders", 1), ("orders", 3), ("logins", 0)]
    mine, theirs = (owned_shards(a, "orders", 4, 12) for a in (first, second))
    assert mine == [0, 2, 4, 6, 8, 10] and theirs == [1, 3, 5, 7, 9, 11]
    # one shard: the worker holding partition 0 evaluates it
    assert owned_shards(first, "orders", 4, 1) == [0]
    assert owned_shards(second, "orders", 4, 1) == []
    assert owned_shards([("logins", 0)], "orders", 4, 4) == []
