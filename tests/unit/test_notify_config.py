"""The notifications file, and the pure pieces of delivery: signature, status, backoff."""

from __future__ import annotations

import hashlib
import hmac
import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from processors.alerts import ALERT_KINDS, Alert
from processors.notify import (
    EmailSubscriber,
    NotifyConfigError,
    RetryPolicy,
    SlackSubscriber,
    WebhookSubscriber,
    classify_status,
    email_message,
    load_config,
    parse_config,
    parse_duration,
    retry_delay,
    sign,
    slack_message,
    verify,
    webhook_body,
)

FULL = """
cooldown: 12h
cooldowns:
  milestone: 0
  at_risk: 3600
retry: {attempts: 3, base_delay: 0.5, max_delay: 10s, timeout: 5}
subscribers:
  - name: crm
    type: webhook
    url: https://crm.example.com/hooks/retention
    secret_env: CRM_SECRET
    kinds: [at_risk, churned]
    headers: {X-Tenant: shop-1}
  - name: success-team
    type: slack
    url: http://127.0.0.1:9/slack
  - name: managers
    type: email
    smtp_host: smtp.example.com
    smtp_port: 587
    starttls: true
    username: retention
    password_env: SMTP_PASSWORD
    from: retention@example.com
    to: [am@example.com, lead@example.com]
"""

ENV = {"CRM_SECRET": "s3cret", "SMTP_PASSWORD": "pw"}


def alert(kind: str = "at_risk", **kw: object) -> Alert:
    base: dict[str, object] = {
        "kind": kind,
        "customer_id": "c-42",
        "at": datetime(2026, 3, 1, 12, 0, tzinfo=UTC),
        "occasion": "2026-03-01",
        "reasons": ("silent_for_60_days", "frequency_drop"),
        "risk_score": 0.8125,
        "high_value": True,
    }
    return Alert(**{**base, **kw})  # type: ignore[arg-type]


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "notifications.yml"
    path.write_text(text)
    return path


def test_full_file_parses_with_secrets_from_the_environment(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, FULL), environ=ENV)
    crm, slack, mail = config.subscribers
    assert isinstance(crm, WebhookSubscriber)
    assert crm.secret.get_secret_value() == "s3cret"
    assert "s3cret" not in repr(crm)
    assert crm.kinds == frozenset({"at_risk", "churned"})
    assert crm.headers == {"X-Tenant": "shop-1"}
    assert isinstance(slack, SlackSubscriber) and slack.kinds is None
    assert isinstance(mail, EmailSubscriber)
    assert mail.sender == "retention@example.com"
    assert mail.to == ("am@example.com", "lead@example.com")
    assert mail.password is not None and mail.password.get_secret_value() == "pw"
    assert mail.starttls and mail.smtp_port == 587
    assert config.retry == RetryPolicy(attempts=3, base_delay=0.5, max_delay=10, timeout=5)
    assert config.cooldown_for("at_risk") == 3600
    assert config.cooldown_for("milestone") == 0
    assert config.cooldown_for("churned") == 12 * 3600


def test_defaults_and_a_bare_list_of_subscribers() -> None:
    config = parse_config(
        [{"name": "hook", "type": "webhook", "url": "http://h/x", "secret": "k"}], environ={}
    )
    assert config.cooldown_for("at_risk") == 86400
    assert config.retry.attempts == 5
    assert config.subscribers[0].kinds is None


@pytest.mark.parametrize("kind", ALERT_KINDS)
def test_kind_filter(kind: str) -> None:
    config = parse_config(
        [
            {"name": "all", "type": "slack", "url": "http://h/s"},
            {"name": "risk", "type": "slack", "url": "http://h/s", "kinds": ["at_risk"]},
        ]
    )
    everyone, risk_only = config.subscribers
    assert everyone.wants(alert(kind))
    assert risk_only.wants(alert(kind)) == (kind == "at_risk")


@pytest.mark.parametrize(
    ("subscriber", "message"),
    [
        # the secret variable is named but not set
        (
            {"name": "h", "type": "webhook", "url": "http://h", "secret_env": "NOPE"},
            "environment variable NOPE is not set",
        ),
        # a webhook must be signed
        ({"name": "h", "type": "webhook", "url": "http://h"}, "a webhook is signed"),
        # both forms of the secret
        (
            {"name": "h", "type": "webhook", "url": "http://h", "secret": "a", "secret_env": "S"},
            "either secret or secret_env",
        ),
        ({"name": "h", "type": "webhook", "url": "ftp://h", "secret": "a"}, "not an http(s) URL"),
        (
            {
                "name": "h",
                "type": "webhook",
                "url": "http://h",
                "secret": "a",
                "headers": {"idempotency-key": "x"},
            },
            "set by the notifier",
        ),
        ({"name": "s", "type": "pager", "url": "http://h"}, "does not match any of the expected"),
        ({"name": "s", "type": "slack", "url": "http://h", "kinds": ["angry"]}, "kinds"),
        ({"name": "s", "type": "slack", "url": "http://h", "kinds": []}, "empty kinds list"),
        ({"name": "s", "type": "slack", "url": "http://h", "channel": "#x"}, "channel"),
        ({"name": "has space", "type": "slack", "url": "http://h"}, "name"),
        (
            {"name": "m", "type": "email", "smtp_host": "h", "from": "nobody", "to": ["a@b"]},
            "not an email address",
        ),
        ({"name": "m", "type": "email", "smtp_host": "h", "from": "a@b", "to": []}, "to"),
        (
            {
                "name": "m",
                "type": "email",
                "smtp_host": "h",
                "from": "a@b",
                "to": ["c@d"],
                "username": "u",
            },
            "username and password_env go together",
        ),
        (
            {
                "name": "m",
                "type": "email",
                "smtp_host": "h",
                "from": "a@b",
                "to": ["c@d"],
                "password": "inline",
            },
            "password_env",
        ),
    ],
)
def test_bad_subscribers_are_named_in_the_error(
    subscriber: dict[str, object], message: str
) -> None:
    with pytest.raises(NotifyConfigError, match="invalid notifications config") as info:
        parse_config({"subscribers": [subscriber]}, environ={"S": "x"}, source="n.yml")
    assert message in str(info.value)
    assert str(info.value).startswith("n.yml: ")


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"subscribers": []}, "no subscribers"),
        ("just text", "expected a mapping"),
        (None, "expected a mapping"),
        (
            [{"name": "a", "type": "slack", "url": "http://h"}] * 2,
            "names must be unique; repeated: ['a']",
        ),
        (
            {"subscribers": [{"name": "a", "type": "slack", "url": "http://h"}], "cooldown": "1y"},
            "not a duration",
        ),
        (
            {
                "subscribers": [{"name": "a", "type": "slack", "url": "http://h"}],
                "cooldowns": {"bored": 5},
            },
            "cooldowns.bored",
        ),
        (
            {"subscribers": [{"name": "a", "type": "slack", "url": "http://h"}], "retry": {"x": 1}},
            "retry.x",
        ),
    ],
)
def test_bad_files_are_explained(data: object, message: str) -> None:
    with pytest.raises(NotifyConfigError) as info:
        parse_config(data, environ={})
    assert message in str(info.value)


def test_file_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(NotifyConfigError, match="cannot read"):
        load_config(tmp_path / "missing.yml")
    path = write(tmp_path, "subscribers: [unclosed\n")
    with pytest.raises(NotifyConfigError, match=f"{path}: not valid YAML"):
        load_config(path)


@pytest.mark.parametrize(
    ("value", "seconds"),
    [(90, 90.0), (0.5, 0.5), ("45", 45.0), ("30m", 1800.0), ("24h", 86400.0), ("7d", 604800.0)],
)
def test_durations(value: object, seconds: float) -> None:
    assert parse_duration(value) == seconds


@pytest.mark.parametrize("value", [-1, "-1h", "1y", True, None, "h"])
def test_bad_durations(value: object) -> None:
    with pytest.raises(ValueError):
        parse_duration(value)


def test_signature_is_hmac_sha256_of_the_exact_body() -> None:
    body = b'{"customer_id":"c-42","kind":"at_risk"}'
    # computed independently: the sha256 HMAC of these bytes under key "topsecret"
    expected = hmac.new(b"topsecret", body, hashlib.sha256).hexdigest()
    assert sign(body, "topsecret") == f"sha256={expected}"
    assert sign(body, b"topsecret") == f"sha256={expected}"
    assert verify(body, "topsecret", f"sha256={expected}")
    assert not verify(body + b" ", "topsecret", f"sha256={expected}")
    assert not verify(body, "other", f"sha256={expected}")


def test_signature_pinned_value() -> None:
    # RFC 4231 test case 2: key "Jefe", data "what do ya want for nothing?"
    assert sign(b"what do ya want for nothing?", "Jefe") == (
        "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
    )


def test_webhook_body_is_the_alert_plus_subscriber() -> None:
    a = alert()
    body = json.loads(webhook_body(a, "crm"))
    assert body == {**a.as_dict(), "subscriber": "crm"}
    assert Alert.decode(webhook_body(a, "crm")) == a


@pytest.mark.parametrize(
    ("status", "verdict"),
    [
        (200, "delivered"),
        (204, "delivered"),
        (301, "permanent"),  # a POST should not be redirected; fix the URL
        (400, "permanent"),
        (401, "permanent"),
        (404, "permanent"),
        (408, "retry"),  # request timeout
        (429, "retry"),  # rate limited
        (500, "retry"),
        (503, "retry"),
    ],
)
def test_status_classification(status: int, verdict: str) -> None:
    assert classify_status(status) == verdict


def test_backoff_doubles_up_to_the_cap_and_honours_retry_after() -> None:
    policy = RetryPolicy(attempts=6, base_delay=0.5, max_delay=3)
    assert [retry_delay(n, policy) for n in range(1, 6)] == [0.5, 1.0, 2.0, 3.0, 3.0]
    assert retry_delay(1, policy, retry_after=2) == 2.0
    assert retry_delay(1, policy, retry_after=100) == 3.0


def test_slack_message_reads_as_a_sentence() -> None:
    message = slack_message(alert(reasons=("silent <60 days> & more",)))
    assert message["text"] == (
        "At risk: customer c-42 (risk 0.81, high value) - silent <60 days> & more"
    )
    blocks = json.dumps(message["blocks"])
    assert "silent &lt;60 days&gt; &amp; more" in blocks
    assert "*High value*\\nyes" in blocks
    low = slack_message(alert("milestone", reasons=(), risk_score=None, high_value=False))
    assert low["text"] == "Milestone: customer c-42 (risk -) - no reasons given"


def test_email_has_customer_and_reasons_and_a_stable_message_id() -> None:
    config = parse_config(
        [{"name": "m", "type": "email", "smtp_host": "h", "from": "r@x.org", "to": ["a@b.org"]}]
    )
    subscriber = config.subscribers[0]
    assert isinstance(subscriber, EmailSubscriber)
    now = datetime(2026, 3, 1, 13, 0, tzinfo=UTC)
    msg = email_message(alert(), subscriber, now)
    assert msg["Subject"] == "[retention] At risk: customer c-42 [high value]"
    body = msg.get_content()
    assert "Customer:   c-42" in body
    assert "silent_for_60_days" in body and "frequency_drop" in body
    assert msg["Message-ID"] == email_message(alert(), subscriber, now)["Message-ID"]
    assert msg["Message-ID"].endswith("@x.org>")
    assert msg["Idempotency-Key"] == alert().key
