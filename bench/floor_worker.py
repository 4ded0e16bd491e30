"""The throughput floor: the worker's Faust app with an agent that only counts.

With ``BENCH_FLOOR_READ=batch`` it reads the way the worker does instead: the consumer
hands each fetch over as one batch (``streams/batch_reader.py``) to a sink that only
counts and acks. The first is what Faust's streams can do; the second what the worker's
way of reading can.

Started by ``bench/throughput.py`` with the same environment as ``retention worker``, plus
``BENCH_EXPECTED_EVENTS``, ``BENCH_REPORT_FILE`` (and optionally ``BENCH_LOG_LEVEL``). It
appends two JSON lines to the report file: one when the first batch arrives and one when the
count reaches the expected number. Its log goes where a worker's goes.
"""

from __future__ import annotations

import json
import logging
import os
import time
from typing import Any, cast

import faust

from retention.config import Settings
from retention.logs import log_config
from retention.worker import new_event_loop
from streams.app import create_app
from streams.batch_reader import BatchConsumer
from streams.topics import Topics

logger = logging.getLogger(__name__)

EXPECTED_ENV = "BENCH_EXPECTED_EVENTS"
REPORT_FILE_ENV = "BENCH_REPORT_FILE"
LOG_LEVEL_ENV = "BENCH_LOG_LEVEL"
READ_ENV = "BENCH_FLOOR_READ"
#: how long a batch of Faust's stream waits to fill (a backlog fills it at once)
BATCH_WITHIN_SECONDS = 0.02


def report(kind: str, **fields: Any) -> None:
    """One JSON line: wall-clock time for the parent, CPU time to tell how busy this was.

    A file of its own, not stdout: the parent reads it while the log gets everything else.
    """
    line = {"bench": kind, "at": time.time(), "cpu": time.process_time(), **fields}
    with open(os.environ[REPORT_FILE_ENV], "a") as out:
        out.write(json.dumps(line) + "\n")


def register_counter(app: faust.App, settings: Settings, expected: int) -> None:
    """Batch like the ingest agent, ack every event, and do nothing else."""
    sources = Topics.from_settings(settings).sources
    source = app.topic(*sources, key_serializer="raw", value_serializer="raw")

    @app.agent(source, name="count")
    async def count(stream: faust.StreamT[Any]) -> None:
        # noack_take yields events (not values) and is declared on Stream only.
        events_of = cast("faust.Stream[Any]", stream)
        seen = 0
        batches = events_of.noack_take(settings.batch_size, within=BATCH_WITHIN_SECONDS)
        async for events in batches:
            if seen == 0:
                report("first")
            seen += len(events)
            for event in events:
                await events_of.ack(event)
            if seen >= expected and seen - len(events) < expected:
                report("done", count=seen)


class CountingSink:
    """Counts each batch and acks it at once: the worker's reading with no work."""

    def __init__(
        self, consumer: BatchConsumer, topics: frozenset[str], batch_size: int, expected: int
    ) -> None:
        self.consumer = consumer
        self.topics = topics
        self.batch_size = batch_size
        self.expected = expected
        self.seen = 0

    async def take(self, records: list[Any]) -> None:
        if self.seen == 0:
            report("first")
        self.seen += len(records)
        self.consumer.ack_records(records)
        if self.seen >= self.expected and self.seen - len(records) < self.expected:
            report("done", count=self.seen)

    async def settle(self) -> None:
        return None


def register_batch_counter(app: faust.App, settings: Settings, expected: int) -> None:
    sources = Topics.from_settings(settings).sources
    app.topics.add(app.topic(*sources, key_serializer="raw", value_serializer="raw"))
    consumer = app.consumer
    assert isinstance(consumer, BatchConsumer)
    consumer.sink = CountingSink(consumer, frozenset(sources), settings.batch_size, expected)


def main() -> None:
    expected = int(os.environ[EXPECTED_ENV])
    level = os.environ.get(LOG_LEVEL_ENV, "warn")
    settings = Settings()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    # the same kind of event loop as retention worker, from the same setting
    new_event_loop(settings)
    app = create_app(settings)
    if os.environ.get(READ_ENV) == "batch":
        register_batch_counter(app, settings, expected)
    else:
        register_counter(app, settings, expected)
    worker = faust.Worker(
        app,
        loglevel=level,
        logging_config=log_config(level.upper().replace("WARN", "WARNING")),
        quiet=True,
        redirect_stdouts=False,
    )
    logger.info("floor worker starting", extra={"expected": expected})
    worker.execute_from_commandline()


if __name__ == "__main__":
    main()
