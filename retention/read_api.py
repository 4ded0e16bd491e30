"""The read side of the HTTP server: customers, segments, metrics and cohorts, for other
services (a CRM, an email tool, the shop's back office). Keys need the ``read`` scope
(``admin`` does too); the answers are those of ``retention customer --json``, ``metrics
--json`` and ``cohorts --json``, and segments page by page (:mod:`retention.segments`) or
whole as CSV or JSON lines.
"""

from __future__ import annotations

import csv
import io
import json
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, cast

from aiohttp import web

from contract.events import DIMENSIONS
from processors.segments import COLUMNS, SEGMENTS, Filters, Segment, attribute_filter
from processors.windows import PERIODS, Period
from retention.api_keys import Scope
from retention.config import Settings
from retention.ingest_rules import RequestError
from retention.queries import cohorts_view, customer_view, periods_view
from retention.segments import BadCursor, every_member, page
from store.deliveries import Deliveries
from store.forget import forget_customer
from store.periods import Periods
from store.store import Store

logger = logging.getLogger(__name__)

Authorize = Callable[[web.Request, Scope], Awaitable[str]]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
EXPORT_FORMATS = ("csv", "jsonl")


def _json(status: int, body: Any, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        status=status,
        text=json.dumps(body),
        content_type="application/json",
        charset="utf-8",
        headers=headers,
    )


def _moment(name: str, text: str | None) -> int | None:
    if not text:
        return None
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise RequestError(400, "malformed", f"{name}: an ISO 8601 time is expected") from None
    if moment.tzinfo is None:
        raise RequestError(400, "malformed", f"{name}: a time with its offset is expected")
    return int(moment.timestamp() * 1000)


def filters_of(query: Any) -> tuple[Segment, Filters]:
    """The segment and filters a query string asks for; 400 on anything else."""
    segment = query.get("segment", "")
    if segment not in SEGMENTS:
        raise RequestError(400, "malformed", f"segment: one of {', '.join(SEGMENTS)}")
    bands = None
    if query.get("band"):
        bands = frozenset(query["band"].split(","))
        if not bands <= {"low", "medium", "high"}:
            raise RequestError(400, "malformed", "band: low, medium or high, comma-separated")
    min_cltv = None
    if query.get("min_cltv"):
        try:
            min_cltv = float(query["min_cltv"])
        except ValueError:
            raise RequestError(400, "malformed", "min_cltv: a number") from None
        if min_cltv != min_cltv or abs(min_cltv) > 1e15:
            raise RequestError(400, "malformed", "min_cltv: a number")
    return cast(Segment, segment), Filters(
        bands=bands,
        min_cltv=min_cltv,
        active_before_ms=_moment("active_before", query.get("active_before")),
        active_after_ms=_moment("active_after", query.get("active_after")),
        attributes=attribute_filter({name: query.get(name) for name in DIMENSIONS}),
    )


def _period(query: Any) -> Period:
    period = query.get("period", "month")
    if period not in PERIODS:
        raise RequestError(400, "malformed", f"period: one of {', '.join(PERIODS)}")
    return cast(Period, period)


class ReadApi:
    """The handlers; ``authorize`` checks the key (the ingest server's)."""

    def __init__(self, settings: Settings, store: Store, authorize: Authorize) -> None:
        self.settings = settings
        self.store = store
        self.periods = Periods(store.redis, settings.key_prefix)
        self.authorize = authorize

    def routes(self, app: web.Application) -> None:
        app.router.add_get("/v1/customers", self.guarded("read", self.customers))
        app.router.add_get("/v1/customers/{id}", self.guarded("read", self.customer))
        app.router.add_delete("/v1/customers/{id}", self.guarded("admin", self.erase))
        app.router.add_get("/v1/export", self.guarded("read", self.export))
        app.router.add_get("/v1/metrics", self.guarded("read", self.metrics))
        app.router.add_get("/v1/cohorts", self.guarded("read", self.cohorts))

    def guarded(self, scope: Scope, handler: Handler) -> Handler:
        async def handle(request: web.Request) -> web.StreamResponse:
            try:
                await self.authorize(request, scope)
                return await handler(request)
            except RequestError as exc:
                # a Retry-After (keys unreadable, a rate limit) goes out with the refusal
                return _json(exc.status, exc.body(), exc.headers or None)
            except Exception:
                logger.exception("read request failed", extra={"path": request.path})
                return _json(500, {"error": "internal_error", "detail": "see the server log"})

        return handle

    async def customer(self, request: web.Request) -> web.Response:
        found = await customer_view(self.store, self.settings, request.match_info["id"])
        if found is None:
            return _json(404, {"error": "not_found", "detail": "no such customer"})
        return _json(200, found)

    async def erase(self, request: web.Request) -> web.Response:
        """Erase the customer for good (``retention forget``): admin keys only."""
        now_ms = int(datetime.now(UTC).timestamp() * 1000)
        deliveries = Deliveries(self.store.redis, self.settings.key_prefix)
        cid = request.match_info["id"]
        erased = await forget_customer(self.store, deliveries, cid, now_ms)
        body = {
            "customer_id": cid,
            "stored": erased.stored,
            "alerts_logged": erased.alerts_logged,
            "notifier_records": erased.notifier_records,
        }
        return _json(200, body)

    async def customers(self, request: web.Request) -> web.Response:
        segment, filters = filters_of(request.query)
        try:
            limit = int(request.query.get("limit", "100"))
        except ValueError:
            raise RequestError(400, "malformed", "limit: a whole number") from None
        if not 1 <= limit <= 1000:
            raise RequestError(400, "malformed", "limit: 1 to 1000")
        try:
            found = await page(
                self.store,
                segment,
                filters,
                self.settings.reporting_currency,
                request.query.get("cursor"),
                limit,
            )
        except BadCursor as exc:
            raise RequestError(400, "malformed", str(exc)) from None
        return _json(
            200, {"segment": segment, "customers": found.rows, "next_cursor": found.cursor}
        )

    async def export(self, request: web.Request) -> web.StreamResponse:
        """Every member of a segment in one response, streamed: CSV or JSON lines."""
        segment, filters = filters_of(request.query)
        fmt = request.query.get("format", "jsonl")
        if fmt not in EXPORT_FORMATS:
            raise RequestError(400, "malformed", "format: csv or jsonl")
        response = web.StreamResponse(
            headers={
                "Content-Type": "text/csv; charset=utf-8"
                if fmt == "csv"
                else "application/x-ndjson",
                "Content-Disposition": f'attachment; filename="{segment}.{fmt}"',
            }
        )
        await response.prepare(request)
        rows = every_member(self.store, segment, filters, self.settings.reporting_currency)
        if fmt == "csv":
            await response.write(csv_line(COLUMNS))
        async for item in rows:
            line = csv_line([item[c] for c in COLUMNS]) if fmt == "csv" else jsonl_line(item)
            await response.write(line)
        await response.write_eof()
        return response

    async def metrics(self, request: web.Request) -> web.Response:
        period = _period(request.query)
        churn = self.settings.churn_after_days
        rows, active = await periods_view(self.periods, period, churn)
        body = {"period": period, "churn_after_days": churn, "periods": rows}
        return _json(200, {**body, "active_customers": active})

    async def cohorts(self, request: web.Request) -> web.Response:
        period = _period(request.query)
        return _json(200, {"period": period, "cohorts": await cohorts_view(self.periods, period)})


def csv_line(values: Any) -> bytes:
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerow(["" if v is None else v for v in values])
    return out.getvalue().encode()


def jsonl_line(item: dict[str, Any]) -> bytes:
    return (json.dumps(item) + "\n").encode()
