"""A real three-node Redis Cluster (retention/local_cluster.py), started when a test asks.

The fixture yields the URL of one node: a cluster client discovers the others from it, as
it would in production.
"""

from __future__ import annotations

import dataclasses
import shutil
from collections.abc import AsyncIterator, Iterator
from typing import TYPE_CHECKING

import pytest
from redis.asyncio import Redis as AsyncRedis
from redis.asyncio.cluster import RedisCluster

from retention import runtime
from retention.local_cluster import start_cluster
from store.connect import connect

if TYPE_CHECKING:
    from tests.integration.conftest import Stack


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """URL of one node of a fresh three-node Redis Cluster, shared by the run."""
    base_dir = tmp_path_factory.mktemp("redis-cluster")
    try:
        group, url = start_cluster(base_dir)
    except runtime.MissingBinary as exc:
        pytest.fail(f"cannot start a Redis Cluster: {exc}", pytrace=False)
    yield url
    group.stop()
    for node_dir in base_dir.iterdir():
        if node_dir.name != "logs":
            shutil.rmtree(node_dir, ignore_errors=True)


# A test module that imports these two runs its tests against the cluster: they take the
# place of the session's `stack` and `redis` for that module only.


@pytest.fixture(name="stack")
def stack_on_the_cluster(stack: Stack, redis_cluster: str) -> Stack:
    """The session's broker, with the Redis Cluster in place of the single Redis."""
    return dataclasses.replace(stack, redis_url=redis_cluster)


@pytest.fixture(name="redis")
async def redis_on_the_cluster(stack: Stack) -> AsyncIterator[AsyncRedis]:
    client = connect(stack.redis_url, decode_responses=True)
    assert isinstance(client, RedisCluster)
    yield client
    await client.aclose()
