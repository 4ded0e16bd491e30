"""Read the source topics a fetch at a time, not a message at a time.

Faust hands every message to its streams one by one: two new tasks and several turns of
the event loop per message (``Service.wait_first``, the topic's queue, the stream's
buffer, an ack), which cost more than all the worker does with the message. The worker
stores whole batches anyway, so its consumer hands the records of each fetch from the
source topics to a ``BatchSink`` as one batch, and the sink acks a batch's offsets once
the batch is stored (``ack_records``).

Faust still runs the rest: the group membership and assignments, the seeks
(``streams/positioning.py``), flow control around rebalances, and committing acked
offsets to Kafka (a hint: the store's offsets are the truth). A consumer with no sink
(the Faust floor of ``bench/``) reads the way Faust does.

This leans on the bookkeeping of Faust 0.15's consumer (read offsets, gaps, the acked
offsets its commits are worked out from), which is why ``pyproject.toml`` keeps Faust
below 0.16; ``tests/unit/test_batch_reader.py`` runs that bookkeeping itself.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from typing import Any, Protocol

from faust.transport.drivers.aiokafka import Consumer as FaustConsumer
from faust.types.tuples import ack_lock

logger = logging.getLogger(__name__)


class BatchSink(Protocol):
    """Where the consumer hands each fetch's records of the topics it names."""

    topics: frozenset[str]
    batch_size: int

    async def take(self, records: list[Any]) -> None:
        """Take one batch of records (aiokafka ``ConsumerRecord``s, in offset order per
        partition). May return before the batch is stored: ``settle`` waits for that."""

    async def settle(self) -> None:
        """Return once every batch taken so far is stored (or has failed)."""


class BatchConsumer(FaustConsumer):
    """Faust's aiokafka consumer, with the records of a sink's topics read in batches."""

    sink: BatchSink | None = None

    async def _drain_messages(self, fetcher: Any) -> None:  # pragma: no cover - live only
        if self.sink is None:
            await super()._drain_messages(fetcher)
            return
        try:
            await self._drain_batches(fetcher, self.sink)
        except self.consumer_stopped_errors:
            if self.transport.app.should_stop:
                return
            raise
        except asyncio.CancelledError:
            if self.transport.app.should_stop:
                return
            raise

    async def _drain_batches(self, fetcher: Any, sink: BatchSink) -> None:
        consumer_stopped = self._stopped.is_set
        fetcher_stopped = fetcher._stopped.is_set
        while not (consumer_stopped() or fetcher_stopped()):
            records, active = await self._wait_next_records(1.0)
            if records is None or self.should_stop:
                continue
            if not self.flow_active:
                # a rebalance began while fetching: Faust seeks back to the committed
                # offsets (to the store's, once positioning is installed) and reads again
                try:
                    await self.perform_seek()
                except Exception as exc:
                    logger.warning("seek while the flow is stopped failed: %r", exc)
                continue
            batch, others = await self._take_new(records, active, sink.topics)
            for start in range(0, len(batch), sink.batch_size):
                await sink.take(batch[start : start + sink.batch_size])
            for tp, record in others:
                await self.callback(self._to_message(tp, record))
            # give timers a turn between fetches, however fast records arrive
            await asyncio.sleep(0)

    async def _take_new(
        self, records: Any, active: Any, topics: frozenset[str]
    ) -> tuple[list[Any], list[tuple[Any, Any]]]:
        """The records not read before, in fetch order, for the sink and for the rest.

        As Faust's own loop does: a partition that is neither active nor buffered is
        skipped, a record below the partition's read offset is dropped, and a jump in
        offsets is recorded as a gap, so that acked offsets commit past it.
        """
        batch: list[Any] = []
        others: list[tuple[Any, Any]] = []
        read_offset = self._read_offset
        buffered = self._buffered_partitions
        # what a stream marks per event: Faust's livelock check reads a partition whose
        # stream has not marked it for a while, under lag, as stuck
        inbound = self.app.monitor.stream_inbound_time
        now = time.monotonic()
        for tp, tp_records in records.items():
            if active is not None and tp not in active and tp not in buffered:
                continue
            inbound[tp] = now
            last = read_offset[tp]
            into = batch if tp.topic in topics else None
            for record in tp_records:
                offset = record.offset
                if last is not None and offset < last:
                    continue
                if last is not None and offset > last + 1:
                    # the offsets missing in between (both ends included)
                    await self._add_gap(tp, last + 1, offset - 1)
                last = offset
                if into is not None:
                    into.append(record)
                else:
                    others.append((tp, record))
            read_offset[tp] = last
        return batch, others

    def ack_records(self, records: Sequence[Any]) -> int:
        """Mark records as done, as ``Consumer.ack`` does for one Faust message; returns
        how many were new. Their offsets commit with Faust's next commit."""
        new = 0
        with ack_lock:
            for record in records:
                tp = self._new_topicpartition(record.topic, record.partition)
                offset = record.offset
                committed = self._committed_offset[tp]
                if committed is not None and offset < committed:
                    continue
                index = self._acked_index[tp]
                if offset in index:
                    continue
                index.add(offset)
                self._acked[tp].append(offset)
                new += 1
            self._n_acked += new
        return new

    async def wait_empty(self) -> None:
        """Before partitions are revoked: the batch being stored lands and is acked. As
        Faust's own wait for unacked messages, it gives up once the consumer stops (a
        batch held up by a Redis outage must not hold up a shutdown; the store's offsets
        say where the next worker starts)."""
        if self.sink is not None:
            settling = asyncio.ensure_future(self.sink.settle())
            while not settling.done() and not self.should_stop:
                await asyncio.wait({settling}, timeout=1.0)
            if not settling.done():
                settling.cancel()
        await super().wait_empty()
