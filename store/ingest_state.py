"""What the HTTP ingest keeps in Redis: the write keys' records and the request counters.

The keys are ``keys`` and ``ingest:stats`` of :mod:`store.layout`. A write key itself is
never stored, only its record (a digest and a creation time, made by
:mod:`retention.api_keys`). The client is expected to decode responses (text replies).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import cast

from redis.asyncio import Redis

from store.layout import Keys


class IngestState:
    """The ingest's Redis reads and writes."""

    def __init__(self, redis: Redis, prefix: str) -> None:
        self.redis = redis
        keys = Keys(prefix)
        self.keys_key = keys.key("keys")
        self.stats_key = keys.key("ingest", "stats")

    async def add_key(self, name: str, record: Mapping[str, object]) -> bool:
        """Store a write key's record under ``name`` unless the name is taken; whether it
        was stored."""
        return bool(await self.redis.hsetnx(self.keys_key, name, json.dumps(record)))

    async def remove_key(self, name: str) -> bool:
        """Delete the record named ``name``; whether there was one."""
        return bool(await self.redis.hdel(self.keys_key, name))

    async def key_records(self) -> dict[str, dict[str, object]]:
        """Every write key's record by name, in one read. A value that is not such a
        record (not JSON, or without a ``sha256`` text) is left out: it is never taken
        for a credential."""
        raw = cast(dict[str, str], await self.redis.hgetall(self.keys_key))
        out: dict[str, dict[str, object]] = {}
        for name, value in raw.items():
            try:
                record = json.loads(value)
            except ValueError:
                continue
            if isinstance(record, dict) and isinstance(record.get("sha256"), str):
                out[name] = record
        return out

    async def add_counts(self, counts: Mapping[str, int]) -> None:
        """Add ``counts`` to the ingest counters, in one round trip."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for field_name, n in counts.items():
                pipe.hincrby(self.stats_key, field_name, n)
            await pipe.execute()
