"""``retention export``: every member of a segment to a file or standard output, as CSV,
JSON lines or Parquet, streamed page by page (:mod:`retention.segments`), so memory stays
bounded whatever the segment's size: Parquet is written a row group at a time.
"""

from __future__ import annotations

import contextlib
import csv
import json
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import IO, Any, Literal

from processors.segments import COLUMNS, Filters, Segment
from retention.segments import every_member
from store.store import Store

Format = Literal["csv", "jsonl", "parquet"]
FORMATS: tuple[Format, ...] = ("csv", "jsonl", "parquet")
ROW_GROUP = 10_000


class Counter:
    """Rows written so far, on one line of a terminal; silent when stderr is not one."""

    def __init__(self) -> None:
        self.enabled = sys.stderr.isatty()
        self.rows = 0
        self.started = time.monotonic()
        self.last = 0.0

    def add(self, final: bool = False) -> None:
        if not final:
            self.rows += 1
        now = time.monotonic()
        if not self.enabled or (not final and now - self.last < 0.2):
            return
        self.last = now
        rate = self.rows / max(1e-6, now - self.started)
        end = "\n" if final else ""
        sys.stderr.write(f"\rexported {self.rows:,} customers  ({rate:,.0f}/s){end}")
        sys.stderr.flush()


@contextlib.contextmanager
def _opened(out: Path | None, binary: bool) -> Iterator[IO[Any]]:
    if out is None:
        yield sys.stdout.buffer if binary else sys.stdout
        return
    with out.open("wb" if binary else "w", newline="" if not binary else None) as handle:
        yield handle


def _schema() -> Any:
    import pyarrow as pa

    types = {
        "risk_score": pa.float64(),
        "high_value": pa.bool_(),
        "cltv": pa.float64(),
        "cltv_at_risk": pa.float64(),
        "orders": pa.int64(),
        "revenue": pa.float64(),
        "aov": pa.float64(),
        "open_tickets": pa.int64(),
    }
    return pa.schema([(c, types.get(c, pa.string())) for c in COLUMNS])


async def _parquet(rows: AsyncIterator[dict[str, Any]], out: Path | None, counter: Counter) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = _schema()
    with _opened(out, binary=True) as handle:
        writer = pq.ParquetWriter(handle, schema)
        try:
            batch: list[dict[str, Any]] = []
            async for item in rows:
                batch.append(item)
                counter.add()
                if len(batch) >= ROW_GROUP:
                    writer.write_table(pa.Table.from_pylist(batch, schema=schema))
                    batch = []
            if batch or counter.rows == 0:
                writer.write_table(pa.Table.from_pylist(batch, schema=schema))
        finally:
            writer.close()


async def export(
    store: Store,
    segment: Segment,
    filters: Filters,
    currency: str,
    fmt: Format,
    out: Path | None,
) -> int:
    """Write every member; returns how many."""
    counter = Counter()
    rows = every_member(store, segment, filters, currency)
    if fmt == "parquet":
        await _parquet(rows, out, counter)
    else:
        with _opened(out, binary=False) as handle:
            if fmt == "csv":
                writer = csv.writer(handle, lineterminator="\n")
                writer.writerow(COLUMNS)
            async for item in rows:
                if fmt == "csv":
                    writer.writerow(["" if item[c] is None else item[c] for c in COLUMNS])
                else:
                    handle.write(json.dumps(item) + "\n")
                counter.add()
    counter.add(final=True)
    return counter.rows
