"""What ``retention up --demo`` sends its alerts to, so that a newcomer sees them without
configuring anything: a local receiver for webhooks and Slack-shaped messages and a local
SMTP server, each message written to ``<folder>/<subscriber>.jsonl`` and summed up in the
log; and the notifications file that points the demo's subscribers at them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
from datetime import UTC, datetime
from email import message_from_bytes, policy
from pathlib import Path
from typing import Any

import yaml
from aiohttp import web

logger = logging.getLogger(__name__)


def notifications_file(folder: Path, http_port: int, smtp_port: int, digest_at: datetime) -> Path:
    """The demo's subscribers: a CRM webhook (every alert), a success team on Slack (at risk,
    escalations, churn), account managers by email (risk of 50% or more), support leads on a
    webhook (reasons from support only), a market team on a webhook (customers buying in
    Germany, Austria or Switzerland) and a daily digest on Slack, first due at
    ``digest_at``."""
    base = f"http://127.0.0.1:{http_port}"
    due = digest_at.astimezone(UTC).strftime("%H:%M:%S")
    config: dict[str, Any] = {
        "cooldown": "1h",
        "retry": {"attempts": 3, "base_delay": 0.5, "max_delay": 5, "timeout": 5},
        "subscribers": [
            {
                "name": "crm",
                "type": "webhook",
                "allow_http": True,  # the inbox listens on loopback
                "url": f"{base}/hook/crm",
                "secret": secrets.token_hex(16),
            },
            {
                "name": "success-team",
                "type": "slack",
                "allow_http": True,
                "url": f"{base}/slack/success-team",
                "kinds": ["at_risk", "risk_escalated", "churned"],
            },
            {
                "name": "account-managers",
                "type": "email",
                "smtp_host": "127.0.0.1",
                "smtp_port": smtp_port,
                "from": "retention@demo.example",
                "to": ["am@demo.example"],
                "kinds": ["at_risk", "risk_escalated"],
                "min_risk": 0.5,
            },
            {
                "name": "support-leads",
                "type": "webhook",
                "allow_http": True,
                "url": f"{base}/hook/support-leads",
                "secret": secrets.token_hex(16),
                "reasons": ["ticket_unresolved", "low_csat", "nps_detractor"],
            },
            {
                "name": "dach-market",
                "type": "webhook",
                "allow_http": True,
                "url": f"{base}/hook/dach-market",
                "secret": secrets.token_hex(16),
                "kinds": ["at_risk", "risk_escalated", "churned"],
                "attributes": {"country": ["DE", "AT", "CH"]},
            },
            {
                "name": "morning-digest",
                "type": "slack",
                "allow_http": True,
                "url": f"{base}/slack/morning-digest",
                "kinds": ["at_risk", "risk_escalated"],
                "digest": {"every": "day", "at": due, "timezone": "UTC"},
            },
        ],
    }
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "notifications.yml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    path.chmod(0o600)  # it holds the webhooks' secrets
    return path


class Inbox:
    """Writes every message it receives to its subscriber's file, one JSON line each."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)

    def keep(self, subscriber: str, message: dict[str, Any]) -> None:
        name = "".join(c for c in subscriber if c.isalnum() or c in "-_.") or "unnamed"
        with (self.folder / f"{name}.jsonl").open("a") as out:
            out.write(json.dumps(message, sort_keys=True) + "\n")
        logger.info("demo inbox received", extra={"subscriber": name, "summary": _line(message)})

    async def http(self, request: web.Request) -> web.Response:
        body = await request.read()
        try:
            message = json.loads(body)
        except ValueError:
            message = {"unreadable": body.decode(errors="replace")[:2000]}
        self.keep(request.match_info["name"], message)
        return web.Response(text="ok")

    async def handle_DATA(self, server: object, session: object, envelope: Any) -> str:
        mail = message_from_bytes(envelope.content, policy=policy.default)
        body = mail.get_body(preferencelist=("plain",))
        self.keep(
            "account-managers",
            {
                "subject": str(mail["Subject"]),
                "to": list(envelope.rcpt_tos),
                "message_id": str(mail["Message-ID"]),
                "body": "" if body is None else body.get_content(),
            },
        )
        return "250 kept in the demo inbox"


def _line(message: dict[str, Any]) -> str:
    for field in ("subject", "text"):
        if isinstance(message.get(field), str):
            return str(message[field])[:200]
    return f"{message.get('kind')}: customer {message.get('customer_id')}"


async def serve(folder: Path, http_port: int, smtp_port: int, stop: asyncio.Event) -> None:
    """Receive on 127.0.0.1 until ``stop`` is set."""
    from aiosmtpd.controller import Controller

    inbox = Inbox(folder)
    app = web.Application()
    app.router.add_post("/hook/{name}", inbox.http)
    app.router.add_post("/slack/{name}", inbox.http)
    runner = web.AppRunner(app, shutdown_timeout=1)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", http_port).start()
    smtp = Controller(inbox, hostname="127.0.0.1", port=smtp_port)
    smtp.start()
    logger.info("demo inbox listening", extra={"folder": str(folder), "http": http_port})
    try:
        await stop.wait()
    finally:
        with contextlib.suppress(Exception):
            smtp.stop()
        await runner.cleanup()
