"""An HTTP receiver for webhook and Slack-shaped subscribers, as a fixture (``receiver``):
it records every request, and checks webhook signatures against :data:`SECRET`."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web

from processors.webhook_signature import is_valid_request

SECRET = "whsec-test-key"


@dataclass
class Request:
    path: str
    headers: dict[str, str]
    body: bytes
    signature_ok: bool | None

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Receiver:
    """Webhook endpoints ``/hook/<name>`` and a Slack-like ``/slack/<name>``.

    ``fail[name]`` lists the statuses to answer first, one per call; then 200. A webhook
    whose signature does not verify under ``SECRET`` gets 401.
    """

    base: str = ""
    requests: list[Request] = field(default_factory=list)
    fail: dict[str, list[int]] = field(default_factory=dict)

    def url(self, kind: str, name: str) -> str:
        return f"{self.base}/{kind}/{name}"

    def to(self, name: str) -> list[Request]:
        return [r for r in self.requests if r.path.rsplit("/", 1)[1] == name]

    async def hook(self, request: web.Request) -> web.Response:
        body = await request.read()
        ok = is_valid_request(SECRET, request.headers, body)
        self.requests.append(Request(request.path, dict(request.headers), body, ok))
        planned = self.fail.get(request.match_info["name"])
        if planned:
            return web.Response(status=planned.pop(0), text="planned failure")
        return web.Response(status=200 if ok else 401)

    async def slack(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.requests.append(Request(request.path, dict(request.headers), body, None))
        return web.Response(text="ok")


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    rec = Receiver()
    app = web.Application()
    app.router.add_post("/hook/{name}", rec.hook)
    app.router.add_post("/slack/{name}", rec.slack)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    rec.base = f"http://{host}:{port}"
    yield rec
    await runner.cleanup()
