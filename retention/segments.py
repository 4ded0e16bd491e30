"""Every member of a segment, page by page, at any store size (``GET /v1/customers`` and
``retention export``).

A page walks the store's customers with SCAN, shard after shard, reading each step's
customers (state and last evaluation, one script call) and keeping the segment's members
(:mod:`processors.segments`). Each page does a bounded amount of work whatever the store's
size: at most ``MAX_STEPS`` SCAN steps of ``limit`` keys. So a page may hold fewer members
than ``limit`` (a sparse segment), even none, with a cursor to go on; and at most twice
``limit``, since a step's members are never split. The walk is over when the cursor is
null. SCAN returns every customer stored for the whole walk at least once; one may come
twice when Redis resizes its table meanwhile, so a client keys rows by ``customer_id``.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from processors.segments import Filters, Segment, member, row
from store.evaluations import evaluation_fields
from store.store import Store

#: SCAN steps a page may take at the most
MAX_STEPS = 10
MAX_LIMIT = 1000


class BadCursor(ValueError):
    """A cursor this server did not give out."""


def encode_cursor(shard: int, scan: int) -> str:
    return base64.urlsafe_b64encode(json.dumps([shard, scan]).encode()).decode().rstrip("=")


def decode_cursor(text: str | None) -> tuple[int, int]:
    if not text:
        return 0, 0
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        shard, scan = json.loads(raw)
    except (binascii.Error, ValueError, TypeError) as exc:
        raise BadCursor("the cursor is not one this server gave out") from exc
    if not (isinstance(shard, int) and isinstance(scan, int) and shard >= 0 and scan >= 0):
        raise BadCursor("the cursor is not one this server gave out")
    return shard, scan


@dataclass(frozen=True, slots=True)
class Page:
    rows: list[dict[str, Any]]
    #: where the next page starts; None when every customer has been walked
    cursor: str | None


async def page(
    store: Store,
    segment: Segment,
    filters: Filters,
    currency: str,
    cursor: str | None = None,
    limit: int = 100,
) -> Page:
    """One page of ``segment``'s members from ``cursor`` (None: the start)."""
    limit = max(1, min(limit, MAX_LIMIT))
    shard, scan = decode_cursor(cursor)
    homes = (await store.layout()).prefixes
    rows: list[dict[str, Any]] = []
    steps = 0
    while shard < len(homes) and len(rows) < limit and steps < MAX_STEPS:
        scan, ids = await store.scan_customers(homes[shard], scan, limit)
        steps += 1
        for state, fields in await store.read_customers_with_fields(ids):
            evaluation = evaluation_fields(fields.get("ev"))
            if member(segment, state, evaluation, filters):
                rows.append(row(state, evaluation, currency))
        if scan == 0:
            shard += 1
    more = shard < len(homes)
    return Page(rows, encode_cursor(shard, scan) if more else None)


async def every_member(
    store: Store, segment: Segment, filters: Filters, currency: str, limit: int = 500
) -> AsyncIterator[dict[str, Any]]:
    """Every member of the segment, page after page, each once."""
    seen: set[str] = set()
    cursor: str | None = None
    while True:
        found = await page(store, segment, filters, currency, cursor, limit)
        for item in found.rows:
            if item["customer_id"] not in seen:
                seen.add(item["customer_id"])
                yield item
        if found.cursor is None:
            return
        cursor = found.cursor
