"""Fault drill: a webhook subscriber down for two minutes, then back.

For the first minute it answers 503, for the second nothing listens on its port (connections
are refused); alerts keep coming all along. Afterwards every alert must have reached it
exactly once, counted by ``Idempotency-Key`` at the receiver, and a second subscriber must
not have noticed. This drill takes about two and a half minutes by design.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pytest
import yaml
from aiohttp import web
from redis.asyncio import Redis

from processors.webhook_signature import is_valid_request
from retention.config import Settings
from retention.dispatch import alerts_topic, ensure_alerts_topic, publish_alerts, run_notifier
from store.deliveries import Deliveries
from tests.integration.conftest import wait_until
from tests.integration.test_notify import SECRET, free_port, make_alert

logger = logging.getLogger(__name__)

OUTAGE_SECONDS = 120.0
PUBLISH_EVERY_SECONDS = 2.0


@dataclass
class Endpoint:
    """A webhook receiver on a fixed port that can answer 503 or stop listening."""

    port: int = field(default_factory=free_port)
    mode: Literal["up", "503", "down"] = "up"
    #: Idempotency-Key -> monotonic times of the requests answered 200
    delivered: dict[str, list[float]] = field(default_factory=dict)
    refused_503: int = 0
    bad_signatures: int = 0
    runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    async def hook(self, request: web.Request) -> web.Response:
        body = await request.read()
        if not is_valid_request(SECRET, request.headers, body):
            self.bad_signatures += 1
            return web.Response(status=401)
        if self.mode == "503":
            self.refused_503 += 1
            return web.Response(status=503, text="down for maintenance")
        key = request.headers["Idempotency-Key"]
        self.delivered.setdefault(key, []).append(time.monotonic())
        return web.Response(status=200)

    async def listen(self) -> None:
        app = web.Application()
        app.router.add_post("/hook", self.hook)
        self.runner = web.AppRunner(app, shutdown_timeout=1)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()
        self.mode = "up"

    async def go_away(self) -> None:
        """Close the port and every open connection: new ones are refused."""
        self.mode = "down"
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None


@pytest.mark.timeout(420)
async def test_a_webhook_down_for_two_minutes_gets_every_alert_exactly_once(
    redis: Redis, settings: Settings, tmp_path: Path, record_property: object
) -> None:
    assert settings.kafka_bootstrap
    crm, ops = Endpoint(), Endpoint()
    await crm.listen()
    await ops.listen()
    # retries for about three minutes, at most 5 s apart: longer than the outage
    retry = {"attempts": 40, "base_delay": 0.5, "max_delay": 5, "timeout": 2}
    path = tmp_path / "notifications.yml"
    path.write_text(
        yaml.safe_dump(
            {
                "cooldown": 0,
                "retry": retry,
                "subscribers": [
                    {
                        "name": n,
                        "type": "webhook",
                        "url": e.url,
                        "secret": SECRET,
                        "allow_http": True,
                    }
                    for n, e in (("crm", crm), ("ops", ops))
                ],
            }
        )
    )
    topic = alerts_topic(settings)
    await ensure_alerts_topic(settings.kafka_bootstrap, topic, settings.partitions)
    published: dict[str, float] = {}

    async def publish(prefix: str, count: int, every: float = 0.0) -> None:
        for i in range(count):
            alert = make_alert(f"{prefix}-{i}", occasion=prefix)
            published[alert.key] = time.monotonic()
            await publish_alerts(settings.kafka_bootstrap or "", topic, [alert])
            if every:
                await asyncio.sleep(every)

    def has_all(endpoint: Endpoint) -> bool:
        return set(published) <= set(endpoint.delivered)

    async def both_have_all() -> bool:
        return has_all(crm) and has_all(ops)

    stop = asyncio.Event()
    notifier = asyncio.create_task(run_notifier(settings, path, stop))
    try:
        await publish("before", 10)
        await wait_until(both_have_all, 60, "the alerts before the outage")

        outage_started = time.monotonic()
        crm.mode = "503"
        during = asyncio.create_task(
            publish("during", int(OUTAGE_SECONDS / PUBLISH_EVERY_SECONDS), PUBLISH_EVERY_SECONDS)
        )
        await asyncio.sleep(OUTAGE_SECONDS / 2)
        await crm.go_away()
        await asyncio.sleep(OUTAGE_SECONDS / 2)
        await during
        await crm.listen()
        back_at = time.monotonic()
        outage = back_at - outage_started

        async def crm_caught_up() -> bool:
            return has_all(crm)

        await wait_until(crm_caught_up, 60, "the subscriber to catch up after the outage")
        recovered_in = time.monotonic() - back_at

        await publish("after", 10)
        await wait_until(both_have_all, 60, "the alerts after the outage")
    finally:
        stop.set()
        await asyncio.wait_for(notifier, 30)
        for endpoint in (crm, ops):
            await endpoint.go_away()

    counts = Counter({key: len(times) for key, times in crm.delivered.items()})
    duplicates = sum(n - 1 for n in counts.values())
    ops_lag = max(min(ops.delivered[k]) - t for k, t in published.items())
    during_keys = [k for k in published if ":during-" in k]
    figures = {
        "alerts_sent": len(published),
        "alerts_during_outage": len(during_keys),
        "outage_seconds": round(outage, 1),
        "answered_503": crm.refused_503,
        "delivered": len(counts),
        "duplicates": duplicates,
        "lost": len(set(published) - set(counts)),
        "recovered_in_seconds": round(recovered_in, 1),
        "other_subscriber_max_lag_seconds": round(ops_lag, 2),
        "dead_letters": len(await Deliveries(redis, settings.key_prefix).dead_letters()),
    }
    logger.warning("webhook outage drill: %s", figures)
    record_property("webhook_outage_drill", figures)  # type: ignore[operator]
    print(f"\nwebhook outage drill: {figures}")

    assert counts == Counter(dict.fromkeys(published, 1)), figures
    assert Counter({k: len(v) for k, v in ops.delivered.items()}) == counts, figures
    assert figures["dead_letters"] == 0 and crm.bad_signatures == 0, figures
    assert crm.refused_503 > 0 and outage >= OUTAGE_SECONDS, figures
    # retries are at most 5 s apart, so the first one after the return succeeds, and the
    # backlog drains at once
    assert recovered_in < 15, figures
    assert ops_lag < 5, figures
    stats = await Deliveries(redis, settings.key_prefix).stats()
    assert stats == {"sent|webhook": 2 * len(published)}, figures
