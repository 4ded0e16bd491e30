"""A read refused because keys cannot be checked says when to come back, on the API and on
the pages alike."""

from __future__ import annotations

from aiohttp import web
from aiohttp.test_utils import make_mocked_request
from redis.asyncio import Redis

from retention.config import Settings
from retention.ingest_rules import RequestError
from retention.read_api import ReadApi
from retention.web import WebView
from store.store import Store


async def unavailable(request: web.Request, scope: str) -> str:
    raise RequestError(503, "unavailable", "keys cannot be checked now", {"Retry-After": "4"})


async def never(request: web.Request) -> web.Response:
    raise AssertionError("a refused request reached its handler")


async def test_a_refusal_carries_its_retry_after() -> None:
    # nothing is read: the client is never connected
    store = Store(Redis(port=1), "unused:")
    settings = Settings()
    api = ReadApi(settings, store, unavailable).guarded("read", never)
    answer = await api(make_mocked_request("GET", "/v1/metrics"))
    assert (answer.status, answer.headers["Retry-After"]) == (503, "4")
    page = WebView(settings, store, unavailable).guarded(never)
    answer = await page(make_mocked_request("GET", "/"))
    assert (answer.status, answer.headers["Retry-After"]) == (503, "4")
