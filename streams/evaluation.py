"""Evaluating due customers without Faust: the clock and the holds every evaluation obeys,
and the loop of ``retention evaluator``, which evaluates in a process of its own.

A worker evaluates the shards that follow its partitions from a timer, on the core it
ingests with (``streams/timers.py``). With ``RETENTION_EVALUATION=separate`` the workers
leave that to evaluator processes, which run the same rounds (lifecycle, risk, alerts to
``customer-alerts``) on cores of their own. Taking due customers leases them
(``store/take_due.lua``), so any number of evaluators, and workers, may work the same
shards at once: none evaluates a customer another has taken.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaProducer
from redis.exceptions import RedisError

from processors.alerts import Alert
from processors.evaluator import Publish
from processors.lifecycle import lifecycle_policy
from store.evaluations import Evaluator
from store.periods import Periods
from store.store import Store
from streams.kafka_security import PLAINTEXT, KafkaSecurity
from streams.risk_file import load_policy
from streams.topics import Topics
from streams.worker_settings import WorkerSettings

logger = logging.getLogger(__name__)


async def period_clock(settings: WorkerSettings, periods: Periods, scope: str) -> datetime | None:
    """Wall time in live mode; the event-time watermark in backtests (docs/metrics.md, Time)."""
    if settings.clock == "wall":
        return datetime.now(UTC)
    sources = Topics.from_settings(settings).sources
    return await periods.watermark(scope, {topic: settings.partitions for topic in sources})


async def store_held(store: Store, what: str) -> bool:
    """Whether ``what`` waits this round: while a rebuild wipes the store, and while the
    store replays what it had lost (after a rebuild, a rollback or a restore), when
    customers whose newest events are not back yet would look silent and be alerted."""
    if await store.rebuilding():
        return True
    left = await store.replaying()
    if left:
        logger.debug(
            f"{what} waits for the replay",
            extra={"partitions": len(left), "example": "|".join(map(str, next(iter(left))))},
        )
    return bool(left)


def build_evaluator(settings: WorkerSettings, store: Store, publish: Publish) -> Evaluator:
    """The evaluator of the settings' churn window, risk file and currency."""
    policy = load_policy(settings.risk_file)
    return Evaluator(
        store,
        policy,
        lifecycle_policy(settings.churn_after_days, policy.timers),
        publish,
        currency=settings.reporting_currency,
        link_base=settings.web_base_url,
    )


def shard_share(count: int, index: int, of: int) -> list[int]:
    """The shards evaluator ``index`` of ``of`` takes: those whose number, modulo ``of``,
    is ``index``. Evaluators started together (``retention up --evaluators N``) split the
    shards this way, so they do not queue on the same ones; an evaluator with more
    companions than there are shards has none."""
    if of < 1 or not 0 <= index < of:
        raise ValueError(f"evaluator {index} of {of}: the index runs from 0 to {of} - 1")
    return [shard for shard in range(count) if shard % of == index]


async def drain(
    evaluator: Evaluator,
    clock: datetime,
    batch: int,
    shards: Sequence[int],
    keep_going: Callable[[], bool] = lambda: True,
) -> int:
    """Evaluate the due customers of ``shards`` as of ``clock``, ``batch`` per shard at a
    time, until none is left or ``keep_going`` says stop (it is asked before each step);
    returns how many were evaluated."""
    total = 0
    while shards and keep_going():
        done = await evaluator.run_once(clock, batch, shards)
        total += done
        if done < batch:
            break
        await asyncio.sleep(0)
    return total


class AlertPublisher:
    """Sends alerts to the alerts topic, keyed by customer id so that one customer's alerts
    stay in order, and waits until the broker has stored them (as the worker's timer does)."""

    def __init__(self, bootstrap: str, topic: str, security: KafkaSecurity = PLAINTEXT) -> None:
        self.topic = topic
        self._producer = AIOKafkaProducer(
            bootstrap_servers=bootstrap, acks="all", linger_ms=5, **security.client_kwargs()
        )

    async def start(self) -> None:
        await self._producer.start()

    async def stop(self) -> None:
        await self._producer.stop()

    async def __call__(self, alerts: Sequence[Alert]) -> None:
        sent = [
            await self._producer.send(self.topic, value=a.encode(), key=a.customer_id.encode())
            for a in alerts
        ]
        await asyncio.gather(*sent)


@dataclass
class EvaluatorCounts:
    """What one evaluator process has done since it started (logged when it stops)."""

    rounds: int = 0
    evaluated: int = 0
    errors: int = 0


class EvaluatorLoop:
    """Rounds of evaluation, ``evaluate_every_seconds`` apart, until told to stop.

    Each round waits out the store's holds, takes the clock as the workers take it, and
    evaluates the due customers of its share of the shards until none is left. A round
    that fails (Redis away, a Kafka timeout while publishing alerts, a risk file broken by
    an edit) is logged and counted, and the next one comes as usual. Before each step of a
    round and after each round that did not fail, ``alive_file`` (if any) is touched, for
    a container's health check.
    """

    def __init__(
        self,
        settings: WorkerSettings,
        store: Store,
        periods: Periods,
        evaluator: Evaluator,
        scope: str,
        share: tuple[int, int] = (0, 1),
        alive_file: Path | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.periods = periods
        self.evaluator = evaluator
        self.scope = scope
        self.share = share
        self.alive_file = alive_file
        self.counts = EvaluatorCounts()
        self.stop = asyncio.Event()

    async def round(self) -> int:
        """One round; how many customers it evaluated."""
        if await store_held(self.store, "evaluation"):
            return 0
        clock = await period_clock(self.settings, self.periods, self.scope)
        if clock is None:
            return 0
        layout = await self.store.layout()
        shards = shard_share(layout.count, *self.share)
        return await drain(
            self.evaluator,
            clock,
            self.settings.evaluate_batch,
            shards,
            keep_going=self._next_step,
        )

    async def run(self) -> None:
        """Rounds until :attr:`stop` is set; a round under way finishes its step first."""
        while not self.stop.is_set():
            started = time.monotonic()
            try:
                done = await self.round()
            except asyncio.CancelledError:
                raise
            except RedisError as exc:
                self.counts.errors += 1
                logger.warning("evaluating customers failed", extra={"error": repr(exc)})
            except Exception:
                self.counts.errors += 1
                logger.exception("evaluating customers failed")
            else:
                self.counts.rounds += 1
                self.counts.evaluated += done
                if done:
                    seconds = round(time.monotonic() - started, 3)
                    logger.info(
                        "customers evaluated", extra={"customers": done, "seconds": seconds}
                    )
                self._touch()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stop.wait(), self.settings.evaluate_every_seconds)

    def _next_step(self) -> bool:
        """Whether to take another step of a round: not once stopped. A long round (a
        backlog of a million customers takes minutes) stays alive step by step."""
        if self.stop.is_set():
            return False
        self._touch()
        return True

    def _touch(self) -> None:
        if self.alive_file is None:
            return
        try:
            self.alive_file.touch()
        except OSError as exc:
            logger.warning("the alive file cannot be touched", extra={"error": repr(exc)})

    def summary(self) -> dict[str, Any]:
        counts = self.counts
        return {"rounds": counts.rounds, "evaluated": counts.evaluated, "errors": counts.errors}
