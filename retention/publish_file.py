"""``retention produce FILE``: publish a JSONL file of events, line by line."""

from __future__ import annotations

import asyncio
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from contract.events import MAX_EVENT_BYTES, Rejection, parse_event
from streams.producer import EventProducer
from streams.topics import dead_letter_headers

#: The source label of rejections that never reached a source topic.
PRODUCE_SOURCE = "produce"
#: A bad line longer than this goes to the dead-letter topic cut to this length (a header
#: gives its full size), so that a huge line cannot exceed the broker's message limit.
DLQ_MAX_BYTES = 2 * MAX_EVENT_BYTES


@dataclass
class ProduceResult:
    sent: int = 0
    bad: list[tuple[int, Rejection]] = field(default_factory=list)

    def reasons(self) -> Counter[str]:
        return Counter(r.reason for _, r in self.bad)


def file_dead_letter_headers(
    path: Path, line_no: int, rejection: Rejection
) -> list[tuple[str, bytes]]:
    return dead_letter_headers(rejection, PRODUCE_SOURCE, file=path, line=line_no)


def dead_letter_value(line: bytes, headers: list[tuple[str, bytes]]) -> bytes:
    """The line as it is, or its head when it is longer than :data:`DLQ_MAX_BYTES`."""
    if len(line) <= DLQ_MAX_BYTES:
        return line
    headers.append(("x-truncated-from", str(len(line)).encode()))
    return line[:DLQ_MAX_BYTES]


class Progress:
    """A one-line progress bar on a terminal; silent when stderr is not one."""

    def __init__(self, total_bytes: int) -> None:
        self.total = max(1, total_bytes)
        self.enabled = sys.stderr.isatty()
        self.last = 0.0

    def update(self, done_bytes: int, sent: int, bad: int, final: bool = False) -> None:
        now = time.monotonic()
        if not self.enabled or (not final and now - self.last < 0.2):
            return
        self.last = now
        share = min(1.0, done_bytes / self.total)
        bar = "#" * int(share * 30)
        end = "\n" if final else ""
        sys.stderr.write(f"\r[{bar:<30}] {share:6.1%}  sent {sent}  bad {bad}{end}")
        sys.stderr.flush()


async def publish_file(
    path: Path,
    producer: EventProducer,
    on_bad: Callable[[int, Rejection], None] | None = None,
) -> ProduceResult:
    """Send every valid line to its topic and every bad one to the dead-letter topic."""
    result = ProduceResult()
    progress = Progress(path.stat().st_size)
    pending: list[asyncio.Future[object]] = []
    done_bytes = 0
    with path.open("rb") as handle:
        for line_no, raw in enumerate(handle, start=1):
            done_bytes += len(raw)
            line = raw.strip()
            if not line:
                continue
            # checked as the worker will check it, ahead of the wall clock by at most the
            # producer's margin
            parsed = parse_event(line, latest_ms=producer.latest_ms())
            if isinstance(parsed, Rejection):
                result.bad.append((line_no, parsed))
                if on_bad is not None:
                    on_bad(line_no, parsed)
                headers = file_dead_letter_headers(path, line_no, parsed)
                value = dead_letter_value(line, headers)
                dlq = producer.topics.dlq
                pending.append(await producer.send_raw(dlq, value, None, headers))
            else:
                pending.append(await producer.send(parsed))
                result.sent += 1
            if len(pending) >= 5000:
                await asyncio.gather(*pending)
                pending.clear()
            progress.update(done_bytes, result.sent, len(result.bad))
    await asyncio.gather(*pending)
    progress.update(done_bytes, result.sent, len(result.bad), final=True)
    return result
