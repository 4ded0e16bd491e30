"""Which subscriber gets which alert (filters), when a digest is due, and what it says."""

from __future__ import annotations

import json
from datetime import UTC, datetime, time

import pytest

from processors.alerts import Alert
from processors.notify_config import DigestSchedule, NotifyConfigError, parse_config
from processors.notify_messages import (
    Digest,
    digest_email,
    digest_webhook_body,
    ranked,
    slack_digest,
)

AT = datetime(2026, 3, 1, 9, 30, tzinfo=UTC)


def alert(cid: str, score: float, band: str, at_risk: float | None, **extra: object) -> Alert:
    fields: dict[str, object] = {
        "reasons": ("silence",),
        "risk_score": score,
        "band": band,
        "stakes": {"currency": "EUR", "cltv_at_risk": at_risk},
        "evidence": (
            {"reason": "silence", "text": "No activity for 40 days.", "next_step": "Call."},
        ),
    }
    fields.update(extra)
    return Alert("at_risk", cid, AT, "2026-03-01", **fields)  # type: ignore[arg-type]


def subscriber(**filters: object) -> object:
    sub = {"name": "s", "type": "slack", "url": "https://h", **filters}
    return parse_config({"subscribers": [sub]}, {}).subscribers[0]


def test_every_filter_must_hold() -> None:
    low = alert("a", 0.3, "low", 10.0)
    high_hv = alert("b", 0.9, "high", 500.0, high_value=True, reasons=("silence", "low_csat"))
    medium = alert("c", 0.6, "medium", 50.0, reasons=("refunds",))
    everything = [low, high_hv, medium]

    def kept(**filters: object) -> list[str]:
        sub = subscriber(**filters)
        return [a.customer_id for a in everything if sub.wants(a)]  # type: ignore[attr-defined]

    assert kept() == ["a", "b", "c"]
    assert kept(bands=["high", "medium"]) == ["b", "c"]
    assert kept(min_risk=0.6) == ["b", "c"]
    assert kept(high_value=True) == ["b"]
    assert kept(reasons=["low_csat", "refunds"]) == ["b", "c"]
    assert kept(kinds=["churned"]) == []
    assert kept(bands=["medium", "high"], reasons=["silence"]) == ["b"]


def test_attributes_route_by_the_customers_latest_values() -> None:
    de_app = alert("a", 0.5, "medium", 1.0, attributes={"country": "DE", "channel": "app"})
    fr_web = alert("b", 0.5, "medium", 1.0, attributes={"country": "FR", "channel": "web"})
    unknown = alert("c", 0.5, "medium", 1.0)
    everything = [de_app, fr_web, unknown]

    def kept(**filters: object) -> list[str]:
        sub = subscriber(**filters)
        return [a.customer_id for a in everything if sub.wants(a)]  # type: ignore[attr-defined]

    assert kept(attributes={"country": ["de", "AT"]}) == ["a"]  # any case, as events
    assert kept(attributes={"country": ["DE", "FR"], "channel": ["web"]}) == ["b"]
    assert kept(attributes={"shop": ["eu"]}) == []  # a customer without the attribute
    # what an alert carries survives its JSON
    assert Alert.decode(de_app.encode()).attributes == {"country": "DE", "channel": "app"}


@pytest.mark.parametrize(
    ("filters", "message"),
    [
        ({"bands": ["severe"]}, "bands"),
        ({"reasons": ["silense"]}, "unknown reasons"),
        ({"min_risk": 1.5}, "min_risk"),
        ({"reasons": []}, "empty list"),
        ({"attributes": {"region": ["EU"]}}, "unknown attributes"),
        ({"attributes": {"country": []}}, "empty list"),
        ({"digest": {"timezone": "Mars/Olympus"}}, "IANA time zone"),
        ({"digest": {"every": "hour"}}, "every"),
    ],
)
def test_bad_filters_are_named(filters: dict[str, object], message: str) -> None:
    with pytest.raises(NotifyConfigError, match=message):
        subscriber(**filters)


def test_a_daily_digest_is_due_at_its_local_time() -> None:
    berlin = DigestSchedule(every="day", at=time(8, 0), timezone="Europe/Berlin")
    # 09:30 UTC is 10:30 in Berlin in March (UTC+1): today's 08:00 Berlin = 07:00 UTC
    assert berlin.latest(AT) == datetime(2026, 3, 1, 7, 0, tzinfo=UTC)
    # before 08:00 Berlin: yesterday's
    early = datetime(2026, 3, 1, 6, 59, tzinfo=UTC)
    assert berlin.latest(early) == datetime(2026, 2, 28, 7, 0, tzinfo=UTC)
    # after the clocks go forward (29 March 2026), 08:00 Berlin is 06:00 UTC
    assert berlin.latest(datetime(2026, 3, 30, 6, 0, tzinfo=UTC)) == datetime(
        2026, 3, 30, 6, 0, tzinfo=UTC
    )


def test_a_weekly_digest_is_due_on_its_day() -> None:
    weekly = DigestSchedule(every="week", at=time(9, 0), weekday="monday")
    # 1 March 2026 is a Sunday: the last Monday 09:00 was 23 February
    assert weekly.latest(AT) == datetime(2026, 2, 23, 9, 0, tzinfo=UTC)
    assert weekly.latest(datetime(2026, 3, 2, 9, 0, tzinfo=UTC)) == datetime(
        2026, 3, 2, 9, 0, tzinfo=UTC
    )


def test_a_digest_ranks_by_cltv_at_risk_then_risk() -> None:
    order = ranked(
        [
            alert("small", 0.9, "high", 10.0),
            alert("big", 0.5, "medium", 900.0),
            alert("unfitted", 0.95, "high", None),
            alert("tie", 0.6, "medium", 10.0),
        ]
    )
    assert [a.customer_id for a in order] == ["big", "small", "tie", "unfitted"]


def test_a_digest_renders_on_every_channel_with_one_key() -> None:
    alerts = ranked([alert("b<x>", 0.9, "high", 500.0), alert("a", 0.6, "medium", 20.0)])
    digest = Digest("team", AT, "day", alerts)
    assert digest.key == "digest:team:2026-03-01T09:30:00Z"
    assert digest.title == "Daily digest: 2 alerts"
    body = json.loads(digest_webhook_body(digest, "crm"))
    assert body["kind"] == "digest" and body["key"] == digest.key
    assert [a["customer_id"] for a in body["alerts"]] == ["b<x>", "a"]
    slack = slack_digest(digest)
    texts = [b["text"]["text"] for b in slack["blocks"] if b["type"] == "section"]
    assert texts[0].startswith("*1.* At risk: customer `b&lt;x&gt;`")
    assert "_Next step:_ Call." in texts[0]
    config = parse_config(
        {
            "subscribers": [
                {
                    "name": "am",
                    "type": "email",
                    "smtp_host": "h",
                    "from": "r@shop.example",
                    "to": ["am@shop.example"],
                }
            ]
        },
        {},
    )
    mail = digest_email(digest, config.subscribers[0], AT)  # type: ignore[arg-type]
    content = mail.get_content()
    assert mail["Subject"] == "[retention] Daily digest: 2 alerts"
    assert content.index("1. At risk: customer b<x>") < content.index("2. At risk: customer a")
    assert "Next step (silence): Call." in content
