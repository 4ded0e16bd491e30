"""The Redis ACL user of docs/security.md, as given there: a worker and the exporter's read run as it
(on a Redis Cluster too: test_redis_acl_cluster.py)."""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from redis.asyncio import Redis

from retention.config import Settings
from retention.snapshot import read_snapshot
from store.connect import connect
from store.shards import is_cluster
from store.store import Store
from streams.producer import EventProducer
from tests.integration.conftest import Stack, Workers, wait_until

ROOT = Path(__file__).resolve().parents[2]
ACL_LINE = re.compile(r"^\s*user tracker on (.+)$", re.MULTILINE)


def readme_acl_rules(password: str, prefix: str) -> list[str]:
    """The rules of the documented ``tracker`` user, with this test's password and keys."""
    (line,) = ACL_LINE.findall((ROOT / "docs" / "security.md").read_text())
    rules = line.split()
    assert "~rt:*" in rules and any(rule.startswith(">") for rule in rules), rules
    return [
        f">{password}" if rule.startswith(">") else f"~{prefix}*" if rule == "~rt:*" else rule
        for rule in rules
    ]


def as_user(url: str, user: str, password: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(netloc=f"{user}:{password}@{parts.hostname}:{parts.port}"))


async def test_the_readme_acl_user_runs_a_worker_and_the_exporter(
    stack: Stack, settings: Settings, redis: Redis, producer: EventProducer, tmp_path: Path
) -> None:
    user, password = f"acl-{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
    rules = readme_acl_rules(password, settings.key_prefix)
    # on every node of a cluster: each keeps its own users
    every_node = {"target_nodes": "all"} if is_cluster(redis) else {}
    await redis.execute_command("ACL SETUSER", user, "reset", "on", *rules, **every_node)
    limited = settings.model_copy(update={"redis_url": as_user(stack.redis_url, user, password)})
    workers = Workers(limited, tmp_path)
    client = connect(limited.redis_url or "", decode_responses=True)
    try:
        now = datetime.now(UTC)
        for n in range(20):
            when = (now - timedelta(days=n % 9, hours=1)).timestamp()
            await producer.send(
                {"type": "order", "customer_id": f"acl-{n % 7}", "event_id": f"o{n}",
                 "ts": when, "amount": 5 + n}
            )  # fmt: skip
            await producer.send(
                {"type": "login", "customer_id": f"acl-{n % 7}", "event_id": f"l{n}", "ts": when}
            )
        await producer.flush()
        workers.start()
        store = Store(redis, settings.key_prefix, settings.activity_kinds)

        async def applied() -> bool:
            return sum((await store.stats()).accepted.values()) >= 40

        await wait_until(applied, 45, "the events to be applied as the ACL user", workers.logs)

        async def evaluated() -> bool:
            # the exporter's read, as the ACL user
            snap = await read_snapshot(limited, client, None, datetime.now(UTC))
            assert snap.tracked_customers == 7
            assert snap.redis_memory and all(used > 0 for used, _ in snap.redis_memory.values())
            return sum(snap.lifecycle.values()) == 7

        await wait_until(evaluated, 30, "the customers to be evaluated", workers.logs)
        assert "NOPERM" not in workers.logs()
    finally:
        workers.stop_all()
        await client.aclose()
        await redis.execute_command("ACL DELUSER", user, **every_node)
