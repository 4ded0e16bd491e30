"""`retention up --demo --notifications`: at-risk customers with reasons, signed webhooks."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

from aiohttp import web

from processors.webhook_signature import is_valid_request

SECRET = b"demo-secret"


async def test_demo_shows_declining_customers_at_risk_and_notifies_a_webhook(
    tmp_path: Path,
) -> None:
    received: list[dict[str, Any]] = []
    forged: list[bytes] = []

    async def hook(request: web.Request) -> web.Response:
        body = await request.read()
        if not is_valid_request(SECRET, request.headers, body):
            forged.append(body)
            return web.Response(status=401)
        received.append(json.loads(body))
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/hook", hook)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    config = tmp_path / "notifications.yml"
    config.write_text(
        "subscribers:\n  - name: crm\n    type: webhook\n"
        f"    url: http://127.0.0.1:{port}/hook\n    allow_http: true\n"
        "    secret_env: DEMO_HOOK_SECRET\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("KAFKA_BOOTSTRAP", "REDIS_URL")}
    env["DEMO_HOOK_SECRET"] = SECRET.decode()
    data = tmp_path / "data"
    up = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "retention.cli", "up", "--demo", "--data-dir", str(data),
        "--notifications", str(config),
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL, env=env,
    )  # fmt: skip
    try:
        at_risk: list[dict[str, Any]] = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            listing = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "retention.cli", "at-risk", "--json", "--limit", "100",
                "--data-dir", str(data), stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.DEVNULL, env=env,
            )  # fmt: skip
            out, _ = await listing.communicate()
            if listing.returncode == 0:
                at_risk = json.loads(out)
            declining = [r for r in at_risk if r["customer_id"].startswith("demo-declining-")]
            if declining and any(a["kind"] == "at_risk" for a in received):
                break
            await asyncio.sleep(1)
        assert declining, f"no declining customer at risk: {at_risk}"
        assert all(
            "silence" in r["risk_reasons"] or "frequency_drop" in r["risk_reasons"]
            for r in declining
        )
        kinds = {a["kind"] for a in received}
        assert "at_risk" in kinds, f"webhook got {kinds}"
        assert not forged
        assert all(a["key"].startswith(f"{a['kind']}:{a['customer_id']}:") for a in received)
    finally:
        up.send_signal(signal.SIGINT)
        await asyncio.wait_for(up.wait(), 60)
        await runner.cleanup()
    assert up.returncode == 0


async def test_the_demo_alone_shows_evidence_routing_digest_and_outcomes(tmp_path: Path) -> None:
    """`up --demo` with nothing else: its subscribers' messages land in the demo inbox, with
    each reason's sentence and next step, the stakes, a filtered subscriber, an email, a
    digest; and `retention alerts --outcomes` reports on them."""
    env = {k: v for k, v in os.environ.items() if k not in ("KAFKA_BOOTSTRAP", "REDIS_URL")}
    env["RETENTION_DEMO_DIGEST_AFTER_SECONDS"] = "25"
    data = tmp_path / "data"
    inbox = data / "demo-inbox"
    up = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "retention.cli", "up", "--demo", "--data-dir", str(data),
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL, env=env,
    )  # fmt: skip

    def read(name: str) -> list[dict[str, Any]]:
        path = inbox / f"{name}.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []

    try:
        wanted = ("crm", "success-team", "account-managers", "support-leads", "morning-digest",
                  "dach-market")  # fmt: skip
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not all(read(n) for n in wanted):
            await asyncio.sleep(1)
        missing = [n for n in wanted if not read(n)]
        assert not missing, f"nothing reached {missing}"
        at_risk = [a for a in read("crm") if a["kind"] == "at_risk"]
        assert at_risk and all(a["version"] == 2 and a["evidence"] for a in at_risk)
        assert all(e["text"] and e["next_step"] for a in at_risk for e in a["evidence"])
        assert all(a["stakes"]["currency"] == "USD" for a in at_risk)
        support = {"ticket_unresolved", "low_csat", "nps_detractor"}
        assert all(support & set(a["reasons"]) for a in read("support-leads"))
        # routed by the customer's latest country, which every alert carries
        assert all(a["attributes"]["country"] in ("DE", "AT", "CH") for a in read("dach-market"))
        assert {a["attributes"]["country"] for a in at_risk} - {"DE", "AT", "CH"}
        slack = read("success-team")
        assert any("Next step" in str(m["blocks"]) for m in slack)
        mails = read("account-managers")
        assert all("Next step:" in m["body"] for m in mails)
        [digest] = read("morning-digest")
        assert digest["text"].startswith("Daily digest: ")
        report = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "retention.cli", "alerts", "--outcomes", "--json",
            "--data-dir", str(data), stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL, env=env,
        )  # fmt: skip
        out, _ = await report.communicate()
        rows = json.loads(out)["outcomes"]
        assert any(r["kind"] == "at_risk" and r["alerts"] for r in rows), rows
    finally:
        up.send_signal(signal.SIGINT)
        await asyncio.wait_for(up.wait(), 60)
