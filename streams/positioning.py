"""Make Faust's consumer read each source partition from the store's offsets.

``streams/offsets.py`` says where each partition is read from and why the store's offsets,
not Kafka's, are the truth; this module hooks that into the running consumer: on every
assignment, and whenever the ingest rewinds a partition the store has lost.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import faust
from faust.types import TP as FaustTP

from streams.kafka_security import KafkaSecurity
from streams.offsets import TP, store_positions, wait_for_store
from streams.worker_parts import WorkerParts

logger = logging.getLogger(__name__)


def position_partitions(app: faust.App, parts: WorkerParts, security: KafkaSecurity) -> None:
    """Make Faust start each source partition where the store is, not where Kafka says."""
    settings, ingest, sources = parts.settings, parts.ingest, set(parts.topics.sources)
    assert settings.kafka_bootstrap is not None
    bootstrap = settings.kafka_bootstrap
    installed = False

    async def earliest(tps: Sequence[TP]) -> dict[TP, int]:
        found = await app.consumer.earliest_offsets(*(FaustTP(t, p) for t, p in tps))
        return {(tp.topic, tp.partition): int(offset) for tp, offset in found.items()}

    async def seek(tp: TP, offset: int) -> None:
        # seek_wait runs in the consumer's own thread; Faust's plain seek touches the
        # aiokafka consumer from this one and can race its fetcher
        await app.consumer.seek_wait({FaustTP(*tp): offset})

    ingest.seek, ingest.earliest = seek, earliest

    @app.on_partitions_assigned.connect
    async def install(sender: Any, /, *args: Any, **kwargs: Any) -> None:
        # Faust seeks to Kafka's committed offsets once an assignment is ready, and on a
        # few other occasions; every one of them goes through seek_to_committed.
        nonlocal installed
        if installed:
            return
        consumer: Any = app.consumer  # the aiokafka-backed consumer; its type omits seeks
        committed_seek = consumer.seek_to_committed

        async def seek_to_store() -> dict[Any, int]:
            committed = dict(await committed_seek())
            tps = [(tp.topic, tp.partition) for tp in consumer.assignment() if tp.topic in sources]
            if not tps:
                return committed
            floors = await earliest(tps)
            positions = await wait_for_store(
                lambda: store_positions(parts.store, bootstrap, tps, floors, security)
            )
            await consumer.seek_wait({FaustTP(*tp): o for tp, o in positions.items()})
            ingest.positioned(positions, floors)
            moved = {
                f"{t}|{p}": o
                for (t, p), o in positions.items()
                if committed.get(FaustTP(t, p)) not in (None, o)
            }
            if moved:
                logger.info("reading from the store's offsets, not Kafka's", extra={"moved": moved})
            committed.update({FaustTP(*tp): o for tp, o in positions.items()})
            return committed

        consumer.seek_to_committed = seek_to_store
        installed = True
