"""The notifier's records on a real three-node Redis Cluster: every transaction it runs
stays in one hash slot, so a delivery is recorded once sent and never sent again."""

from __future__ import annotations

import uuid

import pytest
from redis.asyncio import Redis

from retention.config import Settings
from retention.delivery import Notifier
from store.deliveries import (
    DIGEST_SENT,
    FORMAT_KEY,
    NOTIFY_FORMAT,
    Deliveries,
    NotifyFormatMismatch,
)
from tests.integration.cluster import (  # noqa: F401  (fixtures: the cluster in place of the single Redis)
    redis_on_the_cluster,
    stack_on_the_cluster,
)
from tests.integration.receivers import Receiver
from tests.integration.test_notify import config, make_alert, webhook

#: subscriber names whose keys hash to different slots without a tag
SUBSCRIBERS = ("crm", "success-team", "digest.daily")


async def test_records_dead_letters_and_digests_work_on_a_cluster(redis: Redis) -> None:
    deliveries = Deliveries(redis, f"t{uuid.uuid4().hex[:8]}:")
    for subscriber in SUBSCRIBERS:
        key = f"at_risk:c-{subscriber}:2026-03-01"
        before = await deliveries.seen(subscriber, "at_risk", f"c-{subscriber}", key)
        assert not before.delivered and before.last_at_ms is None
        await deliveries.record(
            subscriber,
            "webhook",
            "at_risk",
            f"c-{subscriber}",
            key,
            delivered_ms=2_000,
            alert_ms=1_000,
            cooldown_ms=60_000,
            horizon_ms=86_400_000,
        )
        after = await deliveries.seen(subscriber, "at_risk", f"c-{subscriber}", key)
        assert after.delivered
        other = await deliveries.seen(subscriber, "at_risk", f"c-{subscriber}", key + ":x")
        assert not other.delivered and other.last_at_ms == 1_000

    await deliveries.push_dead_letter(
        {"reason": "delivery_failed", "subscriber": "crm"}, limit=1, counters=("failed|webhook",)
    )
    await deliveries.push_dead_letter(
        {"reason": "backlog", "subscriber": "crm"}, limit=1, counters=("failed|webhook",)
    )
    assert [d["reason"] for d in await deliveries.dead_letters()] == ["backlog"]

    await deliveries.collect("digest.daily", "at_risk:c-1:o1", b'{"kind":"at_risk"}')
    await deliveries.collect("digest.daily", "churned:c-2:o1", b'{"kind":"churned"}')
    await deliveries.digest_sent("digest.daily", 5_000, ["at_risk:c-1:o1"])
    sent, kept = await deliveries.digest("digest.daily")
    assert sent == 5_000 and list(kept) == ["churned:c-2:o1"]

    assert await deliveries.stats() == {
        "sent|webhook": 3,
        "failed|webhook": 2,
        "dead_trimmed": 1,
    }
    assert DIGEST_SENT not in kept


async def test_a_webhook_alert_on_a_cluster_is_sent_once(
    receiver: Receiver, redis: Redis, settings: Settings
) -> None:
    cfg = config(webhook(receiver, "crm"))
    alert = make_alert()
    async with Notifier(cfg, Deliveries(redis, settings.key_prefix)) as notifier:
        assert await notifier.deliver(alert) == {"crm": "delivered"}
        assert await notifier.deliver(alert) == {"crm": "duplicate"}
    assert len(receiver.to("crm")) == 1


async def test_records_of_the_untagged_layout_move_to_the_tagged_keys_once(redis: Redis) -> None:
    prefix = f"t{uuid.uuid4().hex[:8]}:"
    deliveries = Deliveries(redis, prefix)
    # what the notifier wrote before the keys were tagged (each in its own slot)
    await redis.zadd(f"{prefix}notify:delivered:crm", {"at_risk:c-1:o1": 2_000})
    await redis.set(f"{prefix}notify:last:crm:at_risk:c-1", 1_000, px=60_000)
    await redis.hset(
        f"{prefix}notify:digest:daily",
        mapping={"churned:c-2:o1": '{"kind":"churned"}', DIGEST_SENT: 4_000},
    )
    await redis.hset(f"{prefix}notify:stats", "sent|webhook", 1)

    assert await deliveries.move_untagged() == 3
    assert await deliveries.move_untagged() == 0
    assert (await deliveries.seen("crm", "at_risk", "c-1", "at_risk:c-1:o1")).delivered
    assert (await deliveries.seen("crm", "at_risk", "c-1", "at_risk:c-1:o2")).last_at_ms == 1_000
    assert 0 < await redis.pttl(f"{prefix}notify:last:{{crm}}:at_risk:c-1") <= 60_000
    assert await deliveries.digest("daily") == (4_000, {"churned:c-2:o1": '{"kind":"churned"}'})
    assert await deliveries.stats() == {"sent|webhook": 1}
    for old in ("delivered:crm", "last:crm:at_risk:c-1", "digest:daily"):
        assert not await redis.exists(f"{prefix}notify:{old}")
    # a store where no notifier ever counted anything has nothing to move
    fresh = Deliveries(redis, f"t{uuid.uuid4().hex[:8]}:")
    assert await fresh.move_untagged() == 0
    assert await redis.get(fresh.key(FORMAT_KEY)) == str(NOTIFY_FORMAT)
    # records of a later version are refused, not rewritten
    await redis.set(deliveries.key(FORMAT_KEY), "3")
    with pytest.raises(NotifyFormatMismatch, match="in format 3"):
        await deliveries.move_untagged()
