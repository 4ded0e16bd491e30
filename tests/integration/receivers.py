"""Receivers for the notifier's channels, as fixtures: an HTTP one for webhook and
Slack-shaped subscribers (``receiver``), which records every request and checks webhook
signatures against :data:`SECRET`, and an SMTP server (``inbox``, aiosmtpd)."""

from __future__ import annotations

import email
import email.policy
import json
import socket
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from email.message import EmailMessage
from typing import Any

import pytest
from aiohttp import web
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult

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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class Inbox:
    host: str = "127.0.0.1"
    port: int = 0
    received: list[tuple[str, list[str], EmailMessage]] = field(default_factory=list)
    #: (user, password) of each login attempt, and whether it was over TLS
    logins: list[tuple[str, str, bool]] = field(default_factory=list)
    raw: list[bytes] = field(default_factory=list)

    async def handle_DATA(self, server: object, session: object, envelope: Any) -> str:
        self.raw.append(envelope.original_content or envelope.content)
        msg = email.message_from_bytes(envelope.content, policy=email.policy.default)
        assert isinstance(msg, EmailMessage)
        self.received.append((envelope.mail_from, list(envelope.rcpt_tos), msg))
        return "250 Message accepted for delivery"

    def authenticate(
        self, server: Any, session: Any, envelope: object, mechanism: str, data: Any
    ) -> AuthResult:
        user, password = data.login.decode(), data.password.decode()
        over_tls = server.transport.get_extra_info("ssl_object") is not None
        self.logins.append((user, password, over_tls))
        return AuthResult(success=(user, password) == ("retention", "pw-123"))


@pytest.fixture
def inbox() -> Iterator[Inbox]:
    box = Inbox(port=free_port())
    controller = Controller(box, hostname=box.host, port=box.port)
    controller.start()
    yield box
    controller.stop()
