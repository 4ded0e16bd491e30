"""Open Redis from a URL, whether one server or a Redis Cluster stands behind it.

Every part of the tracker opens Redis here. The node behind the URL says whether it is a
cluster node (``INFO cluster``: ``cluster_enabled:1``); if so the cluster client is
returned, which learns the other nodes from it and sends each command to the node owning
its key's slot. No setting chooses the client: pointing ``REDIS_URL`` at any node of a
cluster is enough.
"""

from __future__ import annotations

from typing import Any, cast

import redis
from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import ResponseError

#: How long the probe waits to connect when the caller gives no timeout of its own.
PROBE_CONNECT_TIMEOUT = 5.0


def is_cluster_node(url: str, **options: Any) -> bool:
    """Whether the node at ``url`` runs in cluster mode.

    Asked once, with a short-lived synchronous connection, so that constructors and other
    synchronous setup can open Redis too. A node that cannot be reached raises
    ``redis.exceptions.ConnectionError``: guessing would leave a worker with the wrong
    client for good. A node that refuses ``INFO`` (an ACL without it) is taken for a
    single server, the only kind that can work without it.
    """
    options.setdefault("socket_connect_timeout", PROBE_CONNECT_TIMEOUT)
    probe = redis.Redis.from_url(url, **options)
    try:
        info = probe.info("cluster")
    except ResponseError:
        return False
    finally:
        probe.close()
    return str(info.get("cluster_enabled", "0")) == "1"


def connect(url: str, **options: Any) -> Redis:
    """An asyncio client for ``url``: redis-py's cluster client on a cluster node.

    ``options`` (``decode_responses``, ``socket_timeout``, TLS settings, ...) go to either
    client unchanged; credentials and ``rediss://`` come from the URL as usual.

    The cluster client is typed as the plain one: it offers the same commands for keys
    and scripts, routed by their first key, so code written against ``Redis`` runs on it
    as long as each call's keys share one hash slot.
    """
    if is_cluster_node(url, **options):
        return cast(Redis, RedisCluster.from_url(url, **options))
    return Redis.from_url(url, **options)


def connect_bounded(url: str, max_connections: int, wait: float, **options: Any) -> Redis:
    """:func:`connect` with at most ``max_connections`` connections (per node on a cluster).

    On one Redis a command that finds them all busy waits up to ``wait`` seconds for one;
    redis-py's cluster client cannot wait, so there such a command fails at once.
    """
    if is_cluster_node(url, **options):
        return cast(Redis, RedisCluster.from_url(url, max_connections=max_connections, **options))
    pool = BlockingConnectionPool.from_url(
        url, max_connections=max_connections, timeout=wait, **options
    )
    return Redis.from_pool(pool)


async def memory_info(client: Redis, every_node: bool = False) -> dict[str, dict[str, Any]]:
    """``INFO memory`` per node, keyed by its address: the one node of a single Redis, or
    every primary of a cluster (a plain ``INFO`` would ask one node only), replicas too
    with ``every_node``."""
    if isinstance(client, RedisCluster):
        nodes = RedisCluster.ALL_NODES if every_node else RedisCluster.PRIMARIES
        replies = await client.info("memory", target_nodes=nodes)
        return {str(node): info for node, info in cast(dict[str, Any], replies).items()}
    where = client.connection_pool.connection_kwargs
    node = where.get("path") or f"{where.get('host')}:{where.get('port')}"
    return {str(node): await client.info("memory")}


async def eviction_policies(client: Redis) -> dict[str, str]:
    """``maxmemory-policy`` of every node that holds data."""
    return {
        node: str(info.get("maxmemory_policy", "noeviction"))
        for node, info in (await memory_info(client)).items()
    }
