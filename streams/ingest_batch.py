"""One batch of source messages: decode it, dead-letter what is refused, store the rest.

No message can stop the agent: whatever fails between decoding a message and building its
record sends that message to the dead-letter topic as ``internal_error``. A message the
store already holds is not dead-lettered twice. A batch the store refuses because it does
not follow the partition's stored offset (the store went back in time) is read again from
where the store is (``Ingest.rewind``; the seek itself is ``streams/positioning.py``'s).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from redis.exceptions import RedisError

from contract.events import Rejection, parse_event
from processors.currency import Rates, UnknownCurrency
from store.record import PARTITION, TOPIC
from store.store import BatchResult, Store, accepted_record, rejected_record
from streams.offsets import TP
from streams.topics import Topics, dead_letter_headers
from streams.worker_metrics import WorkerMetrics
from streams.worker_settings import WorkerSettings

logger = logging.getLogger(__name__)

MAX_BACKOFF_SECONDS = 5.0
#: A gap seen this many times at the same offsets after seeking back is a real hole in
#: the log (compaction, transaction markers), not lost state: it is stepped over.
GAP_REPEATS_TO_SKIP = 3


@dataclass
class WorkerCounters:
    """This process's own counts; the store holds the cluster-wide ones."""

    batches: int = 0
    applied: int = 0
    duplicates: int = 0
    redelivered: int = 0
    rejected: int = 0
    internal_errors: int = 0
    redis_errors: int = 0
    rewinds: int = 0
    timer_errors: int = 0
    first_event_at: float | None = None
    last_applied_at: float | None = None
    started_at: float = field(default_factory=time.time)


def dlq_headers(message: Any, rejection: Rejection) -> list[tuple[str, bytes]]:
    return dead_letter_headers(
        rejection, message.topic, partition=message.partition, offset=message.offset
    )


def _stamp_ms(message: Any) -> int | None:
    # Kafka's record timestamp, in milliseconds as the broker keeps it
    stamp = getattr(message, "timestamp", None)
    return None if stamp is None else int(stamp)


def _tp(message: Any) -> TP:
    return (message.topic, message.partition)


@dataclass(frozen=True)
class DecodedBatch:
    records: list[list[str]]
    dead_letters: list[Any]
    messages: list[Any]


Seek = Callable[[TP, int], Awaitable[None]]


class Ingest:
    """What the agent does with each batch; kept out of the agent body to stay testable."""

    def __init__(
        self,
        settings: WorkerSettings,
        topics: Topics,
        store: Store,
        dlq: Any,
        metrics: WorkerMetrics | None = None,
    ) -> None:
        self.metrics = metrics
        self.settings = settings
        self.topics = topics
        self.store = store
        self.dlq = dlq
        self.counters = WorkerCounters()
        #: records in the last batch decoded: a full batch means a backlog is being read
        self.last_batch_size = 0
        self.rates = Rates(
            settings.reporting_currency, settings.default_currency, settings.rates_file
        )
        #: per partition, the last offset this worker knows the store holds
        self.applied_upto: dict[TP, int] = {}
        #: per partition, the lowest offset the broker still holds (or a gap stepped over)
        self.floors: dict[TP, int] = {}
        self._gaps_seen: dict[TP, tuple[int, int, int]] = {}
        self.seek: Seek | None = None
        self.earliest: Callable[[Sequence[TP]], Awaitable[dict[TP, int]]] | None = None

    def positioned(self, positions: dict[TP, int], earliest: dict[TP, int]) -> None:
        """Partitions (re)assigned and sought: ``positions`` is where each is read from."""
        for tp, position in positions.items():
            self.applied_upto[tp] = position - 1
            self.floors[tp] = earliest.get(tp, 0)
            self._gaps_seen.pop(tp, None)

    async def _dead_letter(self, message: Any, rejection: Rejection) -> Any:
        if self.metrics is not None:
            self.metrics.rejected(message.topic, rejection.reason)
        return await self.dlq.send(
            key=message.key, value=message.value, headers=dlq_headers(message, rejection)
        )

    def caught_up(self) -> bool:
        """Whether the last fetch held less than a full batch: the worker reads as fast as
        events arrive, with no backlog waiting behind it."""
        return self.last_batch_size < self.settings.batch_size

    def latest_ms(self) -> int | None:
        """The latest event time accepted now: the wall clock plus the allowed margin, live;
        none in a backtest, whose history judges its own times."""
        if self.settings.clock != "wall":
            return None
        return int((time.time() + self.settings.max_future_seconds) * 1000)

    def _record(self, message: Any, latest_ms: int | None) -> tuple[list[str], Rejection | None]:
        topic_type = self.topics.event_type_of(message.topic)
        parsed = parse_event(
            message.value or b"", topic_type=topic_type, key=message.key, latest_ms=latest_ms
        )
        stamp = _stamp_ms(message)
        if isinstance(parsed, Rejection):
            record = rejected_record(
                message.topic, message.partition, message.offset, parsed.reason, stamp
            )
            return record, parsed
        try:
            record = accepted_record(
                parsed, message.topic, message.partition, message.offset, stamp, self.rates
            )
        except UnknownCurrency as exc:
            rejection = Rejection("unknown_currency", str(exc))
            return rejected_record(
                message.topic, message.partition, message.offset, rejection.reason, stamp
            ), rejection
        return record, None

    async def decode(self, batch: Sequence[Any]) -> DecodedBatch:
        """Validate a batch of Kafka records (``topic``, ``partition``, ``offset``, ``key``,
        ``value``, ``timestamp`` in ms) and start sending its rejects to the dead-letter
        topic."""
        records: list[list[str]] = []
        pending = []
        messages = []
        latest_ms = self.latest_ms()
        self.last_batch_size = len(batch)
        # after a seek back, a batch may hold an offset twice (buffered before the seek,
        # then read again): it is one message, taken once
        taken: set[tuple[str, int, int]] = set()
        for message in batch:
            where = (message.topic, message.partition, message.offset)
            if where in taken:
                continue
            taken.add(where)
            try:
                record, rejection = self._record(message, latest_ms)
            except Exception as exc:  # whatever the bytes, the batch goes on
                self.counters.internal_errors += 1
                if self.metrics is not None:
                    self.metrics.internal_error()
                logger.exception(
                    "message failed before the store", extra={"offset": message.offset}
                )
                rejection = Rejection("internal_error", f"{type(exc).__name__}: {exc}"[:300])
                record = rejected_record(
                    message.topic, message.partition, message.offset, rejection.reason
                )
            # a message the store already holds was dead-lettered when it was first read
            if rejection is not None and message.offset > self.applied_upto.get(_tp(message), -1):
                pending.append(await self._dead_letter(message, rejection))
            records.append(record)
            messages.append(message)
        return DecodedBatch(records, pending, messages)

    async def store_batch(self, batch: DecodedBatch) -> None:
        # The dead letters must be stored by Kafka before their offsets may be committed.
        if batch.dead_letters:
            await asyncio.gather(*batch.dead_letters)
        result = await self._write(batch.records)
        await self._after(batch, result)

    async def _after(self, batch: DecodedBatch, result: BatchResult) -> None:
        if result.set_aside:
            by_offset = {(*_tp(m), m.offset): m for m in batch.messages}
            detail = (
                "the customer's stored state cannot be read: set aside until "
                "`retention restore-customer` rebuilds it from the topics"
            )
            sent = [
                await self._dead_letter(by_offset[where], Rejection("corrupt_state", detail))
                for where in result.set_aside
            ]
            await asyncio.gather(*sent)
        for message in batch.messages:
            tp = _tp(message)
            if tp not in result.gaps and message.offset > self.applied_upto.get(tp, -1):
                self.applied_upto[tp] = message.offset
                if self.metrics is not None:
                    self.metrics.applied(message.topic)
        for tp, wanted in result.gaps.items():
            refused = min(m.offset for m in batch.messages if _tp(m) == tp and m.offset > wanted)
            await self.rewind(tp, wanted, refused)

    async def rewind(self, tp: TP, wanted: int, refused: int | None = None) -> None:
        """Read ``tp`` again from ``wanted``: the store does not hold what came before."""
        seen = (wanted, refused or -1)
        previous = self._gaps_seen.get(tp)
        repeats = previous[2] + 1 if previous is not None and previous[:2] == seen else 1
        self._gaps_seen[tp] = (*seen, repeats)
        if refused is not None and repeats >= GAP_REPEATS_TO_SKIP:
            logger.warning(
                "offsets missing from the log, stepping over them",
                extra={"partition": f"{tp[0]}|{tp[1]}", "from": wanted, "to": refused},
            )
            self.floors[tp] = refused
        elif self.earliest is not None:
            # the broker may have aged data out since the floor was read
            self.floors[tp] = (await self.earliest([tp])).get(tp, self.floors.get(tp, 0))
        self.counters.rewinds += 1
        # what this worker had reached: evaluations wait until the store holds it again
        reached = max(self.applied_upto.get(tp, -1) + 1, refused or 0)
        if reached > wanted:
            await self.store.expect_replay(tp, reached)
        self.applied_upto[tp] = wanted - 1
        position = max(wanted, self.floors.get(tp, 0))
        logger.warning(
            "store is behind this partition, reading it again",
            extra={"partition": f"{tp[0]}|{tp[1]}", "offset": position},
        )
        if self.seek is not None:
            await self.seek(tp, position)

    async def check_store(self, assigned: Sequence[TP]) -> None:
        """Seek back any partition the store has lost (rollback, failover, flush)."""
        mine = {tp: self.applied_upto[tp] for tp in assigned if tp in self.applied_upto}
        if not mine:
            return
        stored = await self.store.applied_offsets()
        for tp, upto in mine.items():
            held = stored.get(tp, -1)
            if held < upto:
                await self.rewind(tp, held + 1)

    async def _write(self, records: list[list[str]]) -> BatchResult:
        backoff = 0.1
        started = time.monotonic()
        while True:
            try:
                result = await self.store.apply_batch(records, floors=self._floors(records))
                break
            except RedisError as exc:
                # Never ack what is not stored: wait for Redis rather than drop the batch.
                self.counters.redis_errors += 1
                if self.metrics is not None:
                    self.metrics.redis_error()
                logger.warning("redis write failed, retrying", extra={"error": repr(exc)})
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF_SECONDS)
        if self.metrics is not None:
            self.metrics.observe_batch(time.monotonic() - started, len(records))
        c = self.counters
        c.batches += 1
        c.applied += result.applied
        c.duplicates += result.duplicates
        c.redelivered += result.redelivered
        c.rejected += result.rejected
        now = time.time()
        if c.first_event_at is None:
            c.first_event_at = now
        if result.applied:
            c.last_applied_at = now
        return result

    def _floors(self, records: list[list[str]]) -> dict[TP, int]:
        tps = {(r[TOPIC], int(r[PARTITION])) for r in records}
        return {tp: self.floors.get(tp, 0) for tp in tps}
