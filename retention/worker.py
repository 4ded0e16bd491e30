"""Run one Faust worker against configured services."""

from __future__ import annotations

import asyncio
import logging

import faust

from retention.config import Settings
from retention.exporter import start_worker_metrics
from retention.logs import log_config
from store.connect import connect, eviction_policies
from store.store import Store
from streams import agents
from streams.app import create_app
from streams.topics import Topics, cluster_id, ensure_topics

logger = logging.getLogger(__name__)


class UnsafeRedis(RuntimeError):
    """Redis would evict keys under memory pressure, and so forget events it counted."""


async def check_eviction_policy(redis_url: str) -> None:
    """Refuse an evicting Redis: evicted dedupe ids and offsets would count events twice.

    With ``noeviction`` a full Redis refuses the batch script whole; the worker waits and
    retries, and nothing is counted twice or lost.
    """
    redis = connect(redis_url, decode_responses=True)
    try:
        policies = await eviction_policies(redis)
    finally:
        await redis.aclose()
    evicting = {node: policy for node, policy in policies.items() if policy != "noeviction"}
    if evicting:
        where = ", ".join(f"{node}: {policy}" for node, policy in sorted(evicting.items()))
        raise UnsafeRedis(
            f"Redis maxmemory-policy is not noeviction ({where}): the tracker needs "
            "noeviction on every node, or evicted keys would make it count events twice "
            "(`CONFIG SET maxmemory-policy noeviction`)"
        )


async def check_store(settings: Settings) -> None:
    """Refuse a store of another format or shard count before joining the group
    (:class:`store.shards.LayoutMismatch`), and record them in a new store."""
    assert settings.redis_url is not None
    redis = connect(settings.redis_url, decode_responses=True)
    try:
        await Store(redis, settings.key_prefix, shards=settings.shards, writer=True).layout()
    finally:
        await redis.aclose()


async def prepare_services(settings: Settings) -> str:
    assert settings.kafka_bootstrap is not None
    assert settings.redis_url is not None
    await check_eviction_policy(settings.redis_url)
    await check_store(settings)
    await ensure_topics(
        settings.kafka_bootstrap,
        Topics.from_settings(settings),
        settings.partitions,
        settings.kafka_security(),
    )
    return await cluster_id(settings.kafka_bootstrap, settings.kafka_security())


def new_event_loop(settings: Settings) -> asyncio.AbstractEventLoop:
    """A fresh loop of the configured kind for Faust's worker, which manages its own."""
    if settings.event_loop == "uvloop":
        import uvloop

        loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
    else:
        loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    return loop


def run(settings: Settings, loglevel: str = "warn") -> None:
    """Block until the worker is stopped (SIGINT/SIGTERM)."""
    cluster = asyncio.run(prepare_services(settings))
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    new_event_loop(settings)
    app = create_app(settings, settings.kafka_security())
    agents.register(
        app, settings, cluster, start_worker_metrics(settings), settings.kafka_security()
    )
    worker = faust.Worker(
        app,
        loglevel=loglevel,
        logging_config=log_config(loglevel.upper().replace("WARN", "WARNING")),
        quiet=True,
        redirect_stdouts=False,
    )
    logger.info("worker starting", extra={"cluster_id": cluster, "group": app.conf.id})
    worker.execute_from_commandline()
