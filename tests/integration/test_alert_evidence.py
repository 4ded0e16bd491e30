"""Alerts a success manager can act on, end to end: a worker raises them from real events,
the notifier delivers them to a real webhook, a Slack-shaped endpoint and an SMTP server.

- every at-risk alert carries each reason's numbers, sentence and next step, and the
  stakes, on every channel;
- a customer already at risk who gets a new reason raises one escalation;
- a subscriber filtering on the high band receives only high-band alerts;
- a daily digest arrives once, ranked by CLTV at risk;
- nothing arrives twice;
- ``at-risk --json``, ``customer --json`` and the alert agree on CLTV, CLTV at risk and band.
"""

from __future__ import annotations

import asyncio
import functools
import random
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import yaml

from contract.events import build_event
from retention import queries
from retention.config import Settings
from retention.dispatch import run_notifier
from store.models import stored_fit
from store.store import Store
from streams.producer import EventProducer
from tests.integration.conftest import Workers, wait_until
from tests.integration.receivers import SECRET, Inbox, Receiver

NOW = datetime.now(UTC).replace(microsecond=0)
DAY = timedelta(days=1)

#: one reason is enough to be at risk; 0.6 and up is the high band
RISK_FILE = {
    "threshold": 0.3,
    "bands": {"medium": 0.3, "high": 0.6},
    "playbook": {"refunds": "Check the refunded parcels with the carrier."},
}


def order(cid: str, n: int, when: datetime, amount: float, status: str = "placed") -> dict:
    return {
        "event_id": f"{cid}-o{n}",
        "customer_id": cid,
        "ts": when.isoformat(),
        "type": "order",
        "amount": amount,
        "status": status,
    }


def support(cid: str, n: int, when: datetime, action: str, **extra: Any) -> dict:
    return {
        "event_id": f"{cid}-s{n}",
        "customer_id": cid,
        "ts": when.isoformat(),
        "type": "support",
        "ticket_id": f"{cid}-t",
        "action": action,
        **extra,
    }


def background() -> list[dict]:
    """Sixty buyers over the last year, each ordering at its own random pace and spend until
    it drops out: data of the kind the purchase and spend models are made for."""
    rng = random.Random(11)
    events = []
    for c in range(60):
        cid = f"bg-{c:02d}"
        pace, spend = rng.uniform(6, 60), rng.uniform(15, 120)
        day, stays = rng.uniform(0, 120), rng.uniform(60, 400)
        n = 0
        while day < min(stays, 360):
            events.append(
                order(cid, n, NOW - (360 - day) * DAY, round(spend * rng.uniform(0.6, 1.4), 2))
            )
            day += rng.expovariate(1 / pace)
            n += 1
    return events


def regular(cid: str, last_days_ago: float, gap: float = 11, count: int = 6) -> list[dict]:
    return [
        order(cid, n, NOW - (last_days_ago + gap * (count - 1 - n)) * DAY, 40 + 5 * n)
        for n in range(count)
    ]


def targets() -> list[dict]:
    events = regular("quiet", last_days_ago=53)  # silence
    events += regular("unhappy", last_days_ago=4)
    events.append(support("unhappy", 1, NOW - DAY, "rated", survey="csat", score=1))
    events += regular("detractor", last_days_ago=3)
    events.append(support("detractor", 1, NOW - DAY, "rated", survey="nps", score=2))
    events += regular("returns", last_days_ago=2, count=3)
    events += [order("returns", 10 + n, NOW - (2 + n) * DAY, 45, "refunded") for n in range(2)]
    events += regular("waiting", last_days_ago=5)
    events.append(support("waiting", 1, NOW - 60 * 3600 * timedelta(seconds=1), "opened"))
    # three reasons at once: the high band
    events += regular("angry", last_days_ago=6)
    events += [
        support("angry", 1, NOW - 70 * timedelta(hours=1), "opened"),
        support("angry", 2, NOW - DAY, "rated", survey="csat", score=1),
        support("angry", 3, NOW - DAY, "rated", survey="nps", score=0),
    ]
    return events


REASON_OF = {
    "quiet": "silence",
    "unhappy": "low_csat",
    "detractor": "nps_detractor",
    "returns": "refunds",
    "waiting": "ticket_unresolved",
}


async def send(producer: EventProducer, events: list[dict]) -> None:
    for raw in events:
        await producer.send(build_event(raw))
    await producer.flush()


def alerts_at(receiver: Receiver, name: str) -> list[dict]:
    return [r.json() for r in receiver.to(name)]


def at_risk_alerts(receiver: Receiver, name: str, cid: str) -> list[dict]:
    got = alerts_at(receiver, name)
    return [a for a in got if a["kind"] == "at_risk" and a["customer_id"] == cid]


def every_channel_explains(receiver: Receiver, inbox: Inbox) -> None:
    """Each target's at-risk alert carries its reason's numbers, sentence and next step and
    the stakes (webhook body), and says the same in words on Slack and by email."""
    at_risk_for = functools.partial(at_risk_alerts, receiver)
    # evidence, sentence, next step and stakes: webhook body
    for cid, reason in REASON_OF.items():
        [alert] = at_risk_for("crm", cid)
        assert alert["version"] == 2 and alert["band"] in ("medium", "high"), alert
        found = {e["reason"]: e for e in alert["evidence"]}
        assert reason in found, (cid, alert)
        item = found[reason]
        assert item["text"] and item["next_step"] and item["unit"], item
        assert item["observed"] is not None and item["threshold"] is not None
        stakes = alert["stakes"]
        assert stakes["currency"] == "EUR" and stakes["orders"] >= 3
        assert stakes["aov"] > 0 and stakes["last_order_amount"] > 0
        assert stakes["last_order_at"] and stakes["cltv"] is not None
    quiet = {e["reason"]: e for e in at_risk_for("crm", "quiet")[0]["evidence"]}
    assert quiet["silence"]["unit"] == "days" and round(quiet["silence"]["observed"]) == 53
    assert "usually orders every 11 days" in quiet["silence"]["text"]
    returns = {e["reason"]: e for e in at_risk_for("crm", "returns")[0]["evidence"]}
    assert returns["refunds"]["next_step"] == RISK_FILE["playbook"]["refunds"]

    # ... Slack and email say the same in words
    slack = [r.json() for r in receiver.to("team")]
    for cid, reason in REASON_OF.items():
        [alert] = at_risk_for("crm", cid)
        sentence = {e["reason"]: e for e in alert["evidence"]}[reason]["text"]
        [message] = [m for m in slack if m["text"].startswith(f"At risk: customer `{cid}` ")]
        blocks = str(message["blocks"])
        assert "Next step" in blocks and "CLTV at risk" in blocks
        mail = [m for _, _, m in inbox.received if cid in m["Subject"]]
        assert len(mail) == 1
        body = mail[0].get_content()
        assert sentence in body and "Next step:" in body and "EUR" in body


async def test_alerts_carry_evidence_route_escalate_and_digest_once(
    settings: Settings,
    store: Store,
    producer: EventProducer,
    workers: Workers,
    receiver: Receiver,
    inbox: Inbox,
    tmp_path: Path,
) -> None:
    risk_file = tmp_path / "risk.yml"
    risk_file.write_text(yaml.safe_dump(RISK_FILE))
    settings = settings.model_copy(update={"risk_file": risk_file, "reporting_currency": "EUR"})
    workers.settings = settings
    hook = {"type": "webhook", "secret": SECRET, "allow_http": True}

    def subscribers(digest_at: str) -> dict[str, Any]:
        return {
            "cooldown": 0,
            "retry": {"attempts": 3, "base_delay": 0.05, "max_delay": 0.2, "timeout": 5},
            "subscribers": [
                {"name": "crm", "url": receiver.url("hook", "crm"), **hook},
                {
                    "name": "team",
                    "type": "slack",
                    "url": receiver.url("slack", "team"),
                    "allow_http": True,
                },
                {
                    "name": "managers",
                    "type": "email",
                    "smtp_host": inbox.host,
                    "smtp_port": inbox.port,
                    "from": "retention@shop.example",
                    "to": ["am@shop.example"],
                    "kinds": ["at_risk"],
                },
                {"name": "vip", "url": receiver.url("hook", "vip"), "bands": ["high"], **hook},
                {
                    "name": "morning",
                    "url": receiver.url("hook", "morning"),
                    "kinds": ["at_risk"],
                    "digest": {"every": "day", "at": digest_at, "timezone": "UTC"},
                    **hook,
                },
            ],
        }

    everyone = [*REASON_OF, "angry"]
    stop = asyncio.Event()
    notifier: asyncio.Task[None] | None = None
    try:
        workers.start()
        await send(producer, background())

        async def fitted() -> bool:
            fit = await stored_fit(store)
            return fit is not None and fit.spend is not None

        await wait_until(fitted, 90, "a fitted model", workers.logs)
        await send(producer, targets())

        async def logged() -> bool:
            listed, _ = await queries.alert_outcomes(settings)
            raised = {a["customer_id"] for a in listed if a["kind"] == "at_risk"}
            return set(everyone) <= raised

        await wait_until(logged, 90, "an at-risk alert raised for every target", workers.logs)
        # the notifier starts now and reads the alerts topic from its start; its digest
        # comes due a few seconds later, with every alert kept by then
        digest_at = (datetime.now(UTC) + timedelta(seconds=12)).strftime("%H:%M:%S")
        notifications = tmp_path / "notifications.yml"
        notifications.write_text(yaml.safe_dump(subscribers(digest_at)))
        notifier = asyncio.create_task(
            run_notifier(settings, notifications, stop, digest_check_seconds=0.5)
        )

        at_risk_for = functools.partial(at_risk_alerts, receiver)

        async def all_raised() -> bool:
            return all(at_risk_for("crm", c) for c in everyone) and len(inbox.received) >= len(
                everyone
            )

        await wait_until(all_raised, 90, "an at-risk alert for every target", workers.logs)

        every_channel_explains(receiver, inbox)

        # only the high band reaches the subscriber who asked for it
        vip = alerts_at(receiver, "vip")
        assert vip and {a["band"] for a in vip} == {"high"}
        assert "angry" in {a["customer_id"] for a in vip}

        # one truth: the list, the customer and the alert of the same evaluation agree
        rows = {r["customer_id"]: r for r in await queries.at_risk(settings, 100)}
        for cid in everyone:
            view = await queries.customer(settings, cid)
            assert view is not None
            row = rows[cid]
            [alert] = at_risk_for("crm", cid)
            assert view["band"] == row["band"] == alert["band"], cid
            assert round(view["cltv"], 2) == round(row["cltv"], 2) == alert["stakes"]["cltv"]
            assert (
                round(view["cltv_at_risk"], 2)
                == round(row["cltv_at_risk"], 2)
                == alert["stakes"]["cltv_at_risk"]
            ), cid
            # the alert came from the evaluation both show
            assert view["evaluated_at"] == row["evaluated_at"], cid
            shown = datetime.fromisoformat(view["evaluated_at"])
            assert shown == datetime.fromisoformat(alert["at"]), (cid, alert["at"])

        # escalation: the unhappy customer now has an open ticket too
        await send(producer, [support("unhappy", 2, NOW - 60 * timedelta(hours=1), "opened")])

        def escalations() -> list[dict]:
            return [
                a
                for a in alerts_at(receiver, "crm")
                if a["kind"] == "risk_escalated" and a["customer_id"] == "unhappy"
            ]

        async def escalated() -> bool:
            return bool(escalations())

        await wait_until(escalated, 60, "an escalation", workers.logs)
        [step] = escalations()
        assert step["details"]["from_reasons"] == ["low_csat"]
        assert {e["reason"] for e in step["evidence"]} == {"low_csat", "ticket_unresolved"}

        # the digest: once, every at-risk alert of the day, most CLTV at risk first
        async def digest_sent() -> bool:
            return bool(alerts_at(receiver, "morning"))

        await wait_until(digest_sent, 150, "the daily digest")
        await asyncio.sleep(3)  # several more checks: it must not come again
        [digest] = alerts_at(receiver, "morning")
        assert digest["kind"] == "digest" and digest["every"] == "day"
        listed = [a["customer_id"] for a in digest["alerts"]]
        assert set(everyone) <= set(listed)
        stakes = [a["stakes"].get("cltv_at_risk") or 0.0 for a in digest["alerts"]]
        assert stakes == sorted(stakes, reverse=True)
        assert {a["kind"] for a in digest["alerts"]} == {"at_risk"}

        # did it work: the quiet customer orders again the next day; the others have not
        tomorrow = datetime.combine(NOW.date() + DAY, datetime.min.time(), UTC)
        await send(producer, [order("quiet", 99, tomorrow + timedelta(minutes=1), 30)])

        async def came_back() -> bool:
            listed, _ = await queries.alert_outcomes(settings)
            return any(a["customer_id"] == "quiet" and a["outcome"] == "returned" for a in listed)

        await wait_until(came_back, 30, "the quiet customer's return", workers.logs)
        listed, counted = await queries.alert_outcomes(settings)
        first = {a["customer_id"]: a["outcome"] for a in listed if a["kind"] == "at_risk"}
        assert first["quiet"] == "returned"
        assert {first[c] for c in everyone if c != "quiet"} == {"pending"}
        rows = {(r["kind"], r["band"]): r for r in counted.rows()}
        assert sum(r["returned"] for r in rows.values()) >= 1
        assert rows[("at_risk", "high")]["alerts"] >= 1

        # nothing arrived twice anywhere
        for name in ("crm", "vip", "morning"):
            keys = Counter(r.headers["Idempotency-Key"] for r in receiver.to(name))
            assert keys and max(keys.values()) == 1, (name, keys.most_common(3))
        assert all(r.signature_ok for r in receiver.requests if "/hook/" in r.path)
        subjects = Counter(m["Message-ID"] for _, _, m in inbox.received)
        assert max(subjects.values()) == 1
    finally:
        stop.set()
        if notifier is not None:
            await asyncio.wait_for(notifier, 30)
