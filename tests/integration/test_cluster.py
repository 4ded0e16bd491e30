"""Opening Redis from a URL: the cluster client on a Redis Cluster node, the plain one else."""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path

import pytest
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster

from retention import runtime
from retention.local_cluster import NODES, cluster_binaries, start_cluster
from retention.worker import UnsafeRedis, check_eviction_policy
from store.connect import connect
from store.store import Store
from tests.integration.conftest import Stack

# The key set of one tag: the script is given one key and builds the others from its tag,
# which keeps them all in the slot the cluster client routed the call to.
TAGGED_SCRIPT = """
local tag = string.match(KEYS[1], '^(.-})')
redis.call('HSET', tag .. ':state', 'n', ARGV[1])
redis.call('SADD', tag .. ':seen', ARGV[1])
redis.call('INCRBY', KEYS[1], ARGV[1])
return {redis.call('GET', KEYS[1]), redis.call('SCARD', tag .. ':seen')}
"""


async def test_cluster_url_gives_the_cluster_client(redis_cluster: str) -> None:
    client = connect(redis_cluster, decode_responses=True)
    try:
        assert isinstance(client, RedisCluster)
        assert await client.ping()
        await client.initialize()
        assert len(client.get_primaries()) == NODES
    finally:
        await client.aclose()


async def test_single_redis_url_gives_the_plain_client(stack: Stack) -> None:
    client = connect(stack.redis_url, decode_responses=True)
    try:
        assert type(client) is Redis
        assert await client.ping()
    finally:
        await client.aclose()


async def test_script_on_a_hash_tagged_key_set_runs_on_every_node(redis_cluster: str) -> None:
    client = connect(redis_cluster, decode_responses=True)
    assert isinstance(client, RedisCluster)
    run = uuid.uuid4().hex[:8]
    tags = [f"{{{run}s{n}}}" for n in range(12)]
    try:
        script = client.register_script(TAGGED_SCRIPT)
        for amount, total, seen in ((2, "2", 1), (3, "5", 2)):
            replies = [await script(keys=[f"{tag}:total"], args=[amount]) for tag in tags]
            assert replies == [[total, seen]] * len(tags)
        owners = {client.get_node_from_key(f"{tag}:total").name for tag in tags}
        assert len(owners) == NODES, f"the tags should spread over all nodes, got {owners}"
        for tag in tags:
            assert await client.hget(f"{tag}:state", "n") == "3"
            found = sorted([k async for k in client.scan_iter(match=f"{tag}:*")])
            assert found == [f"{tag}:{name}" for name in ("seen", "state", "total")]
    finally:
        keys = [k async for k in client.scan_iter(match=f"{{{run}s*")]
        if keys:
            await client.unlink(*keys)
        await client.aclose()


def test_missing_binaries_fail_with_install_hint(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(shutil, "which", lambda name, *a, **kw: None)
    with pytest.raises(runtime.MissingBinary, match=r"apt-get install redis-server"):
        cluster_binaries()
    with pytest.raises(runtime.MissingBinary, match=r"apt-get install redis-server"):
        start_cluster(tmp_path)


@pytest.mark.parametrize("where", ["single", "cluster"])
async def test_a_worker_refuses_redis_that_evicts_on_any_node(
    stack: Stack, redis_cluster: str, where: str
) -> None:
    url = stack.redis_url if where == "single" else redis_cluster
    client = connect(url, decode_responses=True)
    try:
        await check_eviction_policy(url)  # noeviction everywhere: accepted
        # one node evicting is enough to refuse: on a cluster, the last primary
        if isinstance(client, RedisCluster):
            await client.initialize()
            node = client.get_primaries()[-1]
            target = Redis(host=node.host, port=node.port, decode_responses=True)
        else:
            target = Redis.from_url(url, decode_responses=True)
        await target.config_set("maxmemory-policy", "allkeys-lru")
        try:
            with pytest.raises(UnsafeRedis, match="allkeys-lru"):
                await check_eviction_policy(url)
        finally:
            await target.config_set("maxmemory-policy", "noeviction")
            await target.aclose()
    finally:
        await client.aclose()


async def test_memory_is_read_from_the_single_redis(stack: Stack) -> None:
    """The exporter's memory figures: the node's used memory and its maxmemory limit."""
    client = connect(stack.redis_url, decode_responses=True)
    before = (await client.config_get("maxmemory"))["maxmemory"]
    try:
        await client.config_set("maxmemory", str(64 << 30))  # far above what the tests use
        found = await Store(client, f"mem{uuid.uuid4().hex[:8]}:").memory()
        ((node, (used, limit)),) = found.items()
        where = client.connection_pool.connection_kwargs
        assert node == f"{where['host']}:{where['port']}"
        assert limit == 64 << 30
        assert 0.5 < used / int((await client.info("memory"))["used_memory"]) < 2
    finally:
        await client.config_set("maxmemory", before)
        await client.aclose()


async def test_memory_is_read_from_every_cluster_node(redis_cluster: str) -> None:
    client = connect(redis_cluster, decode_responses=True)
    try:
        await client.initialize()
        found = await Store(client, f"mem{uuid.uuid4().hex[:8]}:").memory()
        assert set(found) == {node.name for node in client.get_nodes()}
        assert len(found) == NODES
        assert all(used > 0 and limit >= 0 for used, limit in found.values())
    finally:
        await client.aclose()
