"""The fit grid on a real three-node Redis Cluster: each shard's grid lives in its slot,
and the refit read from the grids equals the per-customer one."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster

from store.connect import connect
from tests.integration.conftest import Stack
from tests.integration.test_fit_grid import (
    test_refit_from_the_grid_equals_the_per_customer_refit as refit_on_the_cluster,
)
from tests.integration.test_fit_grid import (
    test_the_grid_follows_every_customers_order_days as grid_on_the_cluster,
)

test_the_grid_follows_every_customers_order_days_on_the_cluster = grid_on_the_cluster
test_refit_from_the_grid_equals_the_per_customer_refit_on_the_cluster = refit_on_the_cluster


@pytest.fixture
def stack(stack: Stack, redis_cluster: str) -> Stack:
    """The session's broker, with the Redis Cluster in place of the single Redis."""
    return dataclasses.replace(stack, redis_url=redis_cluster)


@pytest.fixture
async def redis(stack: Stack) -> AsyncIterator[Redis]:
    client = connect(stack.redis_url, decode_responses=True)
    assert isinstance(client, RedisCluster)
    yield client
    await client.aclose()
