"""Redis side of the tracker: one atomic Lua call per batch, and the readers.

Key layout under the configured prefix ``P``:

- ``P c:<customer>``       hash, the customer's counters and times (field names below)
- ``P od:<customer>``      hash, placed orders per day (day number since the epoch → count)
- ``P tk:<customer>``      hash, ticket state (``<ticket>|o|r|s|t``: opened, first reply,
                            open flag, status time)
- ``P ids``, ``P ids:next`` dense customer numbers, for per-period bitmaps
- ``P seen:<bucket>``      sets of event ids, each expiring after the dedupe horizon
- ``P offsets:<cluster>``  hash ``topic|partition`` → last applied offset, written in the
                            same script as the state, so a redelivery is recognised exactly
- ``P act:<p>:<day>``       bitmap of customers active in a period (p = d|w|m, day = the
                            period's first day, counted from 1970-01-01)
- ``P coh:<p>:<day>``       bitmap of customers whose first activity lies in that period
- ``P sales:<p>:<day>``     hash: placed orders ``o``, placed ``pm`` and refunded ``rm`` micros
- ``P buy:<p>:<day>``, ``P rep:<p>:<day>`` bitmaps of buyers and of repeat buyers
- ``P meta``               hash: ``first`` and ``last`` event time (ms)
- ``P newest:<cluster>``   hash ``topic|partition`` → newest event time applied (ms)
- ``P stats``              hash of counters: ``accepted|topic``, ``duplicate|topic``,
                            ``rejected|topic|reason``
- ``P workers``            hash worker id → JSON heartbeat
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from importlib.resources import files
from typing import Any, cast

from redis.asyncio import Redis

from processors.state import CustomerState, Score, TicketState
from processors.windows import period_days
from streams.events import Event, LoginEvent, OrderEvent, RejectReason

FIELDS_PER_RECORD = 14
#: Upper bounds (seconds) of the first-response histogram; apply_batch.lua uses the same.
RESPONSE_BOUNDS = (300, 900, 1800, 3600, 7200, 14400, 28800, 86400, 172800)
DEDUPE_BUCKETS = 8
_KIND_LETTERS = {"order": "o", "login": "l", "support": "s"}
_SCRIPT = files("processors").joinpath("apply_batch.lua").read_text()


def accepted_record(event: Event, topic: str, partition: int, offset: int) -> list[str]:
    """Flatten an accepted event into the script's 14 fields."""
    head = [_KIND_LETTERS[event.type], topic, str(partition), str(offset)]
    ts_ms = event.ts_ms
    body = [event.event_id, event.customer_id, str(ts_ms), *map(str, period_days(ts_ms))]
    if isinstance(event, OrderEvent):
        return [*head, *body, event.status, str(event.amount_micros), "", ""]
    if isinstance(event, LoginEvent):
        return [*head, *body, "", "", "", ""]
    survey = event.survey or ""
    score = "" if event.score is None else str(event.score)
    return [*head, *body, event.action, event.ticket_id, survey, score]


def rejected_record(topic: str, partition: int, offset: int, reason: RejectReason) -> list[str]:
    return ["x", topic, str(partition), str(offset), "", "", "", "", "", "", reason, "", "", ""]


@dataclass(frozen=True, slots=True)
class BatchResult:
    applied: int
    duplicates: int
    redelivered: int
    rejected: int


@dataclass(frozen=True, slots=True)
class Stats:
    accepted: dict[str, int]
    duplicates: dict[str, int]
    rejected: dict[tuple[str, str], int]

    def seen(self, topic: str) -> int:
        """Messages of a topic that the store has taken account of, whatever their fate."""
        rejected = sum(n for (t, _), n in self.rejected.items() if t == topic)
        return self.accepted.get(topic, 0) + self.duplicates.get(topic, 0) + rejected


class Store:
    def __init__(
        self,
        redis: Redis,
        prefix: str,
        activity_kinds: Iterable[str] = ("order", "login"),
        dedupe_horizon_seconds: int = 7 * 86400,
        offsets_scope: str = "default",
    ) -> None:
        self.redis = redis
        self.prefix = prefix
        self.kind_letters = "".join(sorted(_KIND_LETTERS[k] for k in activity_kinds))
        # The horizon is split into buckets so that ids expire a bucket at a time.
        self.bucket_ms = max(1, dedupe_horizon_seconds * 1000 // DEDUPE_BUCKETS)
        self.offsets_scope = offsets_scope
        self._script = redis.register_script(_SCRIPT)

    def key(self, *parts: str) -> str:
        return self.prefix + ":".join(parts)

    async def _hash(self, *parts: str) -> dict[str, str]:
        # the client is made with decode_responses=True, so replies are text
        return cast(dict[str, str], await self.redis.hgetall(self.key(*parts)))

    async def apply_batch(
        self, records: Sequence[Sequence[str]], now_ms: int | None = None
    ) -> BatchResult:
        """Apply consumed messages in one atomic script call."""
        if not records:
            return BatchResult(0, 0, 0, 0)
        now = int(time.time() * 1000) if now_ms is None else now_ms
        args: list[str] = [
            self.prefix,
            self.offsets_scope,
            str(now),
            str(self.bucket_ms),
            str(DEDUPE_BUCKETS),
            self.kind_letters,
        ]
        # one JSON argument: far cheaper for the client to send than 14 arguments a record
        args.append(json.dumps(records))
        applied, duplicates, redelivered, rejected = await self._script(args=args)
        return BatchResult(int(applied), int(duplicates), int(redelivered), int(rejected))

    async def read_customer(self, customer_id: str) -> CustomerState | None:
        found = await self.read_customers([customer_id])
        return found[0] if found else None

    async def read_customers(self, customer_ids: Sequence[str]) -> list[CustomerState]:
        """States of the given customers that exist, in one round trip."""
        # MULTI, so the three hashes of a customer come from one moment
        async with self.redis.pipeline(transaction=True) as pipe:
            for customer_id in customer_ids:
                pipe.hgetall(self.key("c", customer_id))
                pipe.hgetall(self.key("od", customer_id))
                pipe.hgetall(self.key("tk", customer_id))
            replies = await pipe.execute()
        states = []
        for n, customer_id in enumerate(customer_ids):
            fields, days, tickets = replies[3 * n : 3 * n + 3]
            if fields:
                states.append(_state_from_hashes(customer_id, fields, days, tickets))
        return states

    async def customer_count(self) -> int:
        return int(await self.redis.hlen(self.key("ids")))

    async def customer_ids(self) -> list[str]:
        return sorted(cast(list[str], await self.redis.hkeys(self.key("ids"))))

    async def stats(self) -> Stats:
        raw = await self._hash("stats")
        accepted: dict[str, int] = {}
        duplicates: dict[str, int] = {}
        rejected: dict[tuple[str, str], int] = {}
        for name, value in raw.items():
            kind, _, rest = name.partition("|")
            if kind == "accepted":
                accepted[rest] = int(value)
            elif kind == "duplicate":
                duplicates[rest] = int(value)
            elif kind == "rejected":
                topic, _, reason = rest.rpartition("|")
                rejected[(topic, reason)] = int(value)
        return Stats(accepted, duplicates, rejected)

    async def survey_totals(self) -> dict[str, int]:
        """Over customers' latest scores: ``<survey>|sum``, ``<survey>|n``, and
        ``nps|promoters`` / ``nps|detractors``."""
        return {k: int(v) for k, v in (await self._hash("surveys")).items()}

    async def response_histogram(self) -> tuple[list[tuple[float, int]], int, float]:
        """First-response times of all tickets: cumulative (upper bound s, count) buckets
        ending with +Inf, the count, and the sum in seconds."""
        raw = {k: int(v) for k, v in (await self._hash("responses")).items()}
        buckets, running = [], 0
        for bound in (*RESPONSE_BOUNDS, float("inf")):
            running += raw.get("+Inf" if bound == float("inf") else str(int(bound)), 0)
            buckets.append((bound, running))
        return buckets, raw.get("count", 0), raw.get("sum_ms", 0) / 1000

    async def applied_offsets(self) -> dict[tuple[str, int], int]:
        raw = await self._hash("offsets", self.offsets_scope)
        out: dict[tuple[str, int], int] = {}
        for tp, offset in raw.items():
            topic, _, partition = tp.rpartition("|")
            out[(topic, int(partition))] = int(offset)
        return out

    async def heartbeat(self, worker_id: str, info: dict[str, Any]) -> None:
        payload = json.dumps({**info, "at_ms": int(time.time() * 1000)})
        await self.redis.hset(self.key("workers"), worker_id, payload)

    async def forget_worker(self, worker_id: str) -> None:
        await self.redis.hdel(self.key("workers"), worker_id)

    async def workers(self, max_age_seconds: float) -> dict[str, dict[str, Any]]:
        """Workers whose last heartbeat is recent enough to call them alive."""
        now_ms = time.time() * 1000
        alive: dict[str, dict[str, Any]] = {}
        for worker_id, payload in (await self._hash("workers")).items():
            info = json.loads(payload)
            if now_ms - info.get("at_ms", 0) <= max_age_seconds * 1000:
                alive[worker_id] = info
        return alive


def _opt_int(value: str | None) -> int | None:
    return None if value is None else int(value)


def _tickets_from_hash(raw: dict[str, str]) -> dict[str, TicketState]:
    grouped: dict[str, dict[str, str]] = {}
    for name, value in raw.items():
        ticket, _, attr = name.rpartition("|")
        grouped.setdefault(ticket, {})[attr] = value
    return {
        ticket: TicketState(
            opened_ms=_opt_int(attrs.get("o")),
            first_reply_ms=_opt_int(attrs.get("r")),
            is_open=None if "s" not in attrs else attrs["s"] == "1",
            status_ms=_opt_int(attrs.get("t")),
        )
        for ticket, attrs in grouped.items()
    }


def _state_from_hashes(
    customer_id: str, f: dict[str, str], days: dict[str, str], tickets: dict[str, str]
) -> CustomerState:
    def count(name: str) -> int:
        return int(f.get(name, 0))

    scores: dict[str, Score] = {
        survey: Score(int(f[survey]), int(f[survey + "t"]))
        for survey in ("nps", "csat", "ces")
        if survey in f
    }
    return CustomerState(
        customer_id=customer_id,
        first_seen_ms=_opt_int(f.get("fs")),
        first_activity_ms=_opt_int(f.get("fa")),
        last_activity_ms=_opt_int(f.get("la")),
        last_order_ms=_opt_int(f.get("lo")),
        last_login_ms=_opt_int(f.get("ll")),
        orders=count("o"),
        placed_micros=count("pm"),
        refunds=count("rf"),
        refunded_micros=count("rm"),
        cancelled=count("cx"),
        logins=count("lg"),
        tickets_opened=count("to"),
        tickets_resolved=count("tr"),
        open_tickets=count("ot"),
        response_ms_sum=count("rs"),
        responses=count("rn"),
        orders_by_day={int(day): int(n) for day, n in days.items()},
        tickets=_tickets_from_hash(tickets),
        scores=scores,
    )
