"""Evaluation apart from ingestion (``RETENTION_EVALUATION=separate``): the worker only
ingests, and a ``retention evaluator`` process evaluates and publishes the alerts."""

from __future__ import annotations

import json
import signal
from datetime import UTC, datetime, timedelta
from pathlib import Path

from retention import runtime
from retention.config import Settings
from store.evaluations import due_backlog, stored_evaluations
from store.store import Store
from streams.producer import EventProducer
from streams.topics import Topics
from tests.integration.conftest import Workers, read_topic, wait_until


async def test_a_separate_evaluator_evaluates_what_the_worker_leaves(
    settings: Settings, store: Store, producer: EventProducer, tmp_path: Path
) -> None:
    apart = settings.model_copy(
        update={"evaluation": "separate", "evaluate_every_seconds": 0.2, "refit_every_seconds": 0.5}
    )
    now = datetime.now(UTC)
    # churned half a day ago (W = 90 days): an alert is due as soon as it is evaluated
    for n, days_ago in enumerate((200, 150, 90.5)):
        ts = (now - timedelta(days=days_ago)).isoformat()
        await producer.send(
            {"event_id": f"lapsed-{n}", "customer_id": "lapsed", "ts": ts, "type": "order", "amount": 40}
        )  # fmt: skip
    await producer.flush()
    workers = Workers(apart, tmp_path)
    env = runtime.settings_env(apart, RETENTION_DATA_DIR=str(tmp_path))
    argv = runtime.retention_argv("evaluator", "--log-level", "info")
    evaluator: runtime.Process | None = None

    def logs() -> str:
        text = workers.logs()
        if evaluator is not None:
            text += f"\n--- evaluator\n{evaluator.log_path.read_text(errors='replace')[-3000:]}"
        return text

    try:
        workers.start()

        async def refitted_on_the_customer() -> bool:
            raw = await store.redis.get(store.key("fit"))
            return raw is not None and json.loads(raw)["customers"] == 1

        # the leader's refit has seen the customer: the events are applied and the worker's
        # timers have run for several evaluation intervals since
        await wait_until(refitted_on_the_customer, 20, "the worker's refit", logs)
        now_ms = int(datetime.now(UTC).timestamp() * 1000)
        assert (await due_backlog(store, now_ms))[0] == 1, "the worker took the customer"
        assert await stored_evaluations(store, ["lapsed"]) == {}

        evaluator = runtime.spawn("evaluator", argv, tmp_path, env)

        async def churned() -> bool:
            found = await stored_evaluations(store, ["lapsed"])
            return found.get("lapsed", {}).get("st") == "churned"

        await wait_until(churned, 20, "the evaluator to evaluate the customer", logs)
        assert settings.kafka_bootstrap
        messages = await read_topic(
            settings.kafka_bootstrap,
            Topics.from_settings(settings).alerts,
            lambda got: any(json.loads(m.value)["kind"] == "churned" for m in got),
            timeout=10,
        )
        alerts = [json.loads(m.value) for m in messages]
        assert [a["customer_id"] for a in alerts if a["kind"] == "churned"] == ["lapsed"]

        evaluator.proc.send_signal(signal.SIGTERM)
        assert evaluator.proc.wait(10) == 0, logs()
        stopped = [
            json.loads(line)
            for line in evaluator.log_path.read_text().splitlines()
            if '"evaluator stopped"' in line
        ]
        assert len(stopped) == 1 and stopped[0]["evaluated"] >= 1 and stopped[0]["errors"] == 0
    finally:
        if evaluator is not None:
            evaluator.stop()
        workers.stop_all()
