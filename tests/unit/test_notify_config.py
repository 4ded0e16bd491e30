"""The notifications file, and the pure pieces of delivery: rendering, status, backoff."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from processors.alerts import ALERT_KINDS, Alert
from processors.notify_config import (
    EmailSubscriber,
    NotifyConfigError,
    RetryPolicy,
    SlackSubscriber,
    WebhookSubscriber,
    parse_config,
    parse_duration,
)
from processors.notify_messages import (
    BadAlert,
    classify_status,
    decode_alert,
    email_message,
    header_key,
    header_text,
    retry_delay,
    slack_code,
    slack_message,
    slack_text,
    visible,
    webhook_body,
)
from retention.notify_file import load_config

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
    url: https://127.0.0.1:9/slack
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
    # `starttls: true`, as older files say it
    assert mail.tls == "starttls" and mail.starttls and mail.smtp_port == 587
    assert config.retry == RetryPolicy(attempts=3, base_delay=0.5, max_delay=10, timeout=5)
    assert config.cooldown_for("at_risk") == 3600
    assert config.cooldown_for("milestone") == 0
    assert config.cooldown_for("churned") == 12 * 3600


def test_defaults_and_a_bare_list_of_subscribers() -> None:
    config = parse_config(
        [{"name": "hook", "type": "webhook", "url": "https://h/x", "secret": "k"}], environ={}
    )
    assert config.cooldown_for("at_risk") == 86400
    assert config.retry.attempts == 5
    assert config.subscribers[0].kinds is None


def test_urls_secrets_and_headers_come_from_the_environment_or_files(tmp_path: Path) -> None:
    (tmp_path / "slack-url").write_text("https://hooks.slack.example/T0/B0/xyz\n")
    (tmp_path / "secret").write_text("from-a-file\n")
    (tmp_path / "token").write_text("Bearer t0ken\n")
    config = parse_config(
        [
            {
                "name": "crm",
                "type": "webhook",
                "url_env": "CRM_URL",
                "secret_file": str(tmp_path / "secret"),
                "headers": {
                    "X-Tenant": "shop-1",
                    "Authorization": {"value_file": str(tmp_path / "token")},
                    "X-Api-Key": {"value_env": "CRM_KEY"},
                },
            },
            {"name": "team", "type": "slack", "url_file": str(tmp_path / "slack-url")},
        ],
        environ={"CRM_URL": "https://crm.example/hook", "CRM_KEY": "k3y"},
    )
    crm, team = config.subscribers
    assert isinstance(crm, WebhookSubscriber) and isinstance(team, SlackSubscriber)
    assert crm.url == "https://crm.example/hook"
    assert crm.secret.get_secret_value() == "from-a-file"
    assert crm.headers == {
        "X-Tenant": "shop-1",
        "Authorization": "Bearer t0ken",
        "X-Api-Key": "k3y",
    }
    assert crm.signature == "v2"
    assert team.url == "https://hooks.slack.example/T0/B0/xyz"


@pytest.mark.parametrize(
    ("subscriber", "message"),
    [
        # clear text only by name
        ({"name": "s", "type": "slack", "url": "http://h/s"}, "allow_http: true"),
        ({"name": "h", "type": "webhook", "url": "http://h", "secret": "a"}, "allow_http: true"),
        ({"name": "s", "type": "slack", "url_env": "URL"}, "allow_http: true"),
        # one source for each value
        ({"name": "s", "type": "slack", "url": "https://h", "url_env": "URL"}, "either url"),
        ({"name": "s", "type": "slack", "url_env": "NOPE"}, "NOPE is not set"),
        ({"name": "s", "type": "slack", "url_file": "/nonexistent/url"}, "cannot read"),
        (
            {"name": "h", "type": "webhook", "url": "https://h", "secret_file": "/nonexistent"},
            "secret_file: cannot read",
        ),
        (
            {
                "name": "h",
                "type": "webhook",
                "url": "https://h",
                "secret": "a",
                "headers": {"Authorization": {"value_env": "NOPE"}},
            },
            "headers.Authorization.value_env: environment variable NOPE",
        ),
        (
            {
                "name": "h",
                "type": "webhook",
                "url": "https://h",
                "secret": "a",
                "headers": {"Authorization": {"value": "x"}},
            },
            "one of value_env and value_file",
        ),
        (
            {"name": "h", "type": "webhook", "url": "https://h", "secret": "a", "signature": "v3"},
            "signature",
        ),
    ],
)
def test_clear_text_and_secret_sources_are_checked(
    subscriber: dict[str, object], message: str
) -> None:
    with pytest.raises(NotifyConfigError) as info:
        parse_config([subscriber], environ={"URL": "http://h/from-env"})
    assert message in str(info.value)


def test_http_is_taken_when_allowed_by_name() -> None:
    config = parse_config(
        [
            {"name": "s", "type": "slack", "url": "http://127.0.0.1:9/s", "allow_http": True},
            {
                "name": "h",
                "type": "webhook",
                "url": "http://10.0.0.5/h",
                "secret": "a",
                "allow_http": True,
                "signature": "v1",
            },
        ],
        environ={},
    )
    slack, hook = config.subscribers
    assert isinstance(slack, SlackSubscriber) and slack.allow_http
    assert isinstance(hook, WebhookSubscriber) and hook.signature == "v1"


@pytest.mark.parametrize("kind", ALERT_KINDS)
def test_kind_filter(kind: str) -> None:
    config = parse_config(
        [
            {"name": "all", "type": "slack", "url": "https://h/s"},
            {"name": "risk", "type": "slack", "url": "https://h/s", "kinds": ["at_risk"]},
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
            {"name": "h", "type": "webhook", "url": "https://h", "secret_env": "NOPE"},
            "environment variable NOPE is not set",
        ),
        # a webhook must be signed
        ({"name": "h", "type": "webhook", "url": "https://h"}, "a webhook is signed"),
        # both forms of the secret
        (
            {"name": "h", "type": "webhook", "url": "https://h", "secret": "a", "secret_env": "S"},
            "either secret or secret_env",
        ),
        ({"name": "h", "type": "webhook", "url": "ftp://h", "secret": "a"}, "not an http(s) URL"),
        (
            {
                "name": "h",
                "type": "webhook",
                "url": "https://h",
                "secret": "a",
                "headers": {"idempotency-key": "x"},
            },
            "set by the notifier",
        ),
        ({"name": "s", "type": "pager", "url": "https://h"}, "does not match any of the expected"),
        ({"name": "s", "type": "slack", "url": "https://h", "kinds": ["angry"]}, "kinds"),
        (
            {"name": "s", "type": "slack", "url": "https://h", "kinds": []},
            "empty list would receive nothing",
        ),
        ({"name": "s", "type": "slack", "url": "https://h", "channel": "#x"}, "channel"),
        ({"name": "has space", "type": "slack", "url": "https://h"}, "name"),
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
            [{"name": "a", "type": "slack", "url": "https://h"}] * 2,
            "names must be unique; repeated: ['a']",
        ),
        (
            {"subscribers": [{"name": "a", "type": "slack", "url": "https://h"}], "cooldown": "1y"},
            "not a duration",
        ),
        (
            {
                "subscribers": [{"name": "a", "type": "slack", "url": "https://h"}],
                "cooldowns": {"bored": 5},
            },
            "cooldowns.bored",
        ),
        (
            {
                "subscribers": [{"name": "a", "type": "slack", "url": "https://h"}],
                "retry": {"x": 1},
            },
            "retry.x",
        ),
        (
            {
                "subscribers": [{"name": "a", "type": "slack", "url": "https://h"}],
                "retry": {"attempts": 101},
            },
            "retry.attempts",
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
        "At risk: customer `c-42` (risk 81%, high value) - `silent &lt;60 days&gt; &amp; more`"
    )
    blocks = json.dumps(message["blocks"])
    assert "silent &lt;60 days&gt; &amp; more" in blocks
    assert "*High value*\\nyes" in blocks
    low = slack_message(alert("milestone", reasons=(), risk_score=None, high_value=False))
    assert low["text"] == "Milestone: customer `c-42` (risk -) - no reasons given"


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
    assert "Customer:        c-42" in body
    assert "silent_for_60_days" in body and "frequency_drop" in body
    assert msg["Message-ID"] == email_message(alert(), subscriber, now)["Message-ID"]
    assert msg["Message-ID"].endswith("@x.org>")
    assert msg["Idempotency-Key"] == alert().key


def test_limits_default_and_can_be_set() -> None:
    hook = {"name": "h", "type": "slack", "url": "https://h"}
    default = parse_config([hook])
    assert default.dead_letter_limit == 10_000 and default.queue_limit == 10_000
    small = parse_config({"subscribers": [hook], "dead_letter_limit": 5, "queue_limit": 2})
    assert small.dead_letter_limit == 5 and small.queue_limit == 2
    for key in ("dead_letter_limit", "queue_limit"):
        with pytest.raises(NotifyConfigError, match=key):
            parse_config({"subscribers": [hook], key: 0})


MAIL = {"name": "m", "type": "email", "smtp_host": "h", "from": "a@b.org", "to": ["c@d.org"]}
LOGIN = {"username": "u", "password_env": "PW"}


@pytest.mark.parametrize(
    ("fields", "tls", "insecure"),
    [
        ({}, "none", False),  # a relay on a trusted network, no login
        ({"tls": "starttls", **LOGIN}, "starttls", False),
        ({"tls": "implicit", "smtp_port": 465, **LOGIN}, "implicit", False),
        ({"starttls": True, **LOGIN}, "starttls", False),  # the older spelling
        ({"starttls": False}, "none", False),
        ({"tls": "starttls", "starttls": True}, "starttls", False),
        # clear-text login only when asked for by name
        ({"allow_insecure_login": True, **LOGIN}, "none", True),
        ({"tls": "implicit", "ca_file": "/etc/ssl/private-ca.pem"}, "implicit", False),
    ],
)
def test_smtp_tls_modes(fields: dict[str, object], tls: str, insecure: bool) -> None:
    [mail] = parse_config([{**MAIL, **fields}], environ={"PW": "pw"}).subscribers
    assert isinstance(mail, EmailSubscriber)
    assert mail.tls == tls and mail.allow_insecure_login is insecure


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        # the password would cross the network in clear text
        (LOGIN, "login without TLS sends the password in clear text"),
        ({"tls": "none", **LOGIN}, "login without TLS"),
        ({"starttls": False, **LOGIN}, "login without TLS"),
        ({"tls": "ssl"}, "tls"),
        ({"tls": "implicit", "starttls": True}, "starttls and tls disagree"),
        ({"starttls": "yes"}, "starttls is true or false"),
        ({"ca_file": "/etc/ssl/ca.pem"}, "ca_file is only used with tls"),
    ],
)
def test_smtp_tls_mistakes_are_refused(fields: dict[str, object], message: str) -> None:
    with pytest.raises(NotifyConfigError) as info:
        parse_config([{**MAIL, **fields}], environ={"PW": "pw"})
    assert message in str(info.value)


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("c-42", "c-42"),
        ("Jürgen Ø", "Jürgen Ø"),  # letters of any script stay as they are
        ("c-1\r\nBcc: x@y", "c-1\\r\\nBcc: x@y"),
        ("a\nb", "a\\nb"),
        ("nul\x00", "nul\\x00"),
        ("tab\there", "tab\\there"),
        ("del\x7f", "del\\x7f"),
        ("next\x85line", "next\\x85line"),  # C1 control NEL
        ("sep\u2028line", "sep\\u2028line"),  # Unicode line separator
        ("evil\u202egpj.exe", "evil\\u202egpj.exe"),  # right-to-left override
        ("lone\ud800", "lone\\ud800"),  # a surrogate from JSON "\ud800"
    ],
)
def test_header_text_never_splits_a_line(text: str, shown: str) -> None:
    assert header_text(text) == shown


@pytest.mark.parametrize(
    ("key", "encoded"),
    [
        ("at_risk:c-1:o1", "at_risk:c-1:o1"),
        ("at_risk:<!channel>:o1", "at_risk:<!channel>:o1"),
        ("at_risk:c-1\r\nX: y:o1", "at_risk:c-1%0D%0AX:%20y:o1"),
        ("at_risk:100%:o1", "at_risk:100%25:o1"),
        ("at_risk:Jürgen:o1", "at_risk:J%C3%BCrgen:o1"),
        ("at_risk:\ud800:o1", "at_risk:%ED%A0%80:o1"),
    ],
)
def test_header_key_is_one_printable_line(key: str, encoded: str) -> None:
    assert header_key(key) == encoded


def test_slack_shows_ids_with_markup_as_text() -> None:
    message = slack_message(alert(customer_id="<!channel> <http://evil.example|bank> & co"))
    escaped = "&lt;!channel&gt; &lt;http://evil.example|bank&gt; &amp; co"
    assert escaped in message["text"]
    blocks = json.dumps(message["blocks"])
    assert escaped in blocks
    # nothing Slack would parse as a mention or a link is left in mrkdwn text
    mrkdwn = [message["text"]] + [
        f["text"] for b in message["blocks"] for f in b.get("fields", []) + b.get("elements", [])
    ]
    assert not any("<" in t or ">" in t for t in mrkdwn)


def _mrkdwn_texts(message: dict[str, Any]) -> list[str]:
    """Every mrkdwn string of a Slack payload (plain_text headers are not parsed)."""
    out = [message["text"]]
    for block in message["blocks"]:
        for part in [block.get("text"), *block.get("fields", []), *block.get("elements", [])]:
            if isinstance(part, dict) and part.get("type") == "mrkdwn":
                out.append(part["text"])
    return out


def test_slack_keeps_a_backtick_in_an_id_inside_its_code_span() -> None:
    message = slack_message(alert(customer_id="c`*bold* <!here>`x"))
    assert message["blocks"][1]["fields"][0]["text"] == (
        "*Customer*\n`c\u02cb*bold* &lt;!here&gt;\u02cbx`"
    )
    assert "customer `c\u02cb*bold* &lt;!here&gt;\u02cbx` (" in message["text"]


def test_slack_free_text_makes_no_formatting_and_no_links() -> None:
    evidence = (
        {
            "reason": "silence",
            "text": "See *https://evil.example/x* or _evil.example_ ~now~ `run`",
            "next_step": "Call www.evil.example/pay",
        },
    )
    message = slack_message(alert(evidence=evidence))
    blocks = json.dumps(message["blocks"], ensure_ascii=False)
    assert (
        "See \u2217https\u2236//evil\u2024example/x\u2217 or "
        "\u02cdevil\u2024example\u02cd \u223cnow\u223c \u02cbrun\u02cb"
    ) in blocks
    assert "Call www\u2024evil\u2024example/pay" in blocks
    # amounts and sentences keep their dots
    assert slack_text("$1,234.56 in 3.5 days.") == "$1,234.56 in 3.5 days."


def test_format_characters_in_an_id_are_shown_escaped() -> None:
    """A right-to-left override would make `c-1` look like another customer."""
    hostile = alert(customer_id="c-1\u202egnp.exe\u200b")
    message = slack_message(hostile)
    shown = "c-1\\u202egnp.exe\\u200b"
    assert f"customer `{shown}`" in message["text"]
    assert message["blocks"][0]["text"]["text"] == f"At risk: customer {shown}"
    assert "\u202e" not in json.dumps(message, ensure_ascii=False)
    assert visible("plain-id_1") == "plain-id_1"


@settings(max_examples=200, deadline=None)
@given(text=st.text(max_size=60))
def test_slack_free_text_and_ids_stay_literal_for_any_text(text: str) -> None:
    free = slack_text(text)
    assert not set(free) & set("*_~`<>")
    assert "://" not in free and not re.search(r"[0-9A-Za-z]\.[A-Za-z]", free)
    code = slack_code(text)
    assert code.startswith("`") and code.endswith("`") and code.count("`") == 2
    assert not set(code) & set("<>")
    # nothing invisible or reordering is left: showing it again changes nothing
    assert visible(free) == free and visible(code) == code


def test_email_with_an_injected_header_in_the_id_stays_one_message() -> None:
    [subscriber] = parse_config([MAIL]).subscribers
    assert isinstance(subscriber, EmailSubscriber)
    hostile = alert(customer_id="c-1\r\nBcc: x@y.example\r\n\r\nfake body\ud800")
    msg = email_message(hostile, subscriber, datetime(2026, 3, 1, 13, 0, tzinfo=UTC))
    raw = msg.as_bytes()  # would raise if a header held a line break
    headers = raw.split(b"\n\n", 1)[0]
    assert b"Bcc" not in headers.replace(b"\\r\\nBcc", b"")
    assert msg["Bcc"] is None
    assert (
        msg["Subject"]
        == "[retention] At risk: customer c-1\\r\\nBcc: x@y.example\\r\\n\\r\\nfake body\\ud800 [high value]"
    )
    assert "Customer:        c-1\\r\\nBcc: x@y.example" in msg.get_content()


GOOD = alert().encode()


@pytest.mark.parametrize(
    "raw",
    [
        None,
        b"",
        b"{not json",
        b"\xff\xfe",
        b"null",
        b"[]",
        b'"text"',
        b'{"kind": "at_risk"}',
        GOOD.replace(b'"at_risk"', b'"angry"'),
        GOOD.replace(b'"at_risk"', b'["at_risk"]'),
        GOOD.replace(b'"2026-03-01T12:00:00Z"', b'"yesterday"'),
        GOOD.replace(b'"2026-03-01T12:00:00Z"', b"17"),
        # valid ISO 8601, but UTC is past year 9999
        GOOD.replace(b'"2026-03-01T12:00:00Z"', b'"9999-12-31T23:30:00-01:00"'),
        GOOD.replace(b'"details": {}', b'"details": "x"'),
        GOOD.replace(b'"reasons": [', b'"reasons": 5, "r": ['),
        GOOD.replace(b'"risk_score": 0.8125', b'"risk_score": "high"'),
        GOOD.replace(b'"risk_score": 0.8125', b'"risk_score": NaN'),
        GOOD.replace(b'"risk_score": 0.8125', b'"risk_score": true'),
        GOOD.replace(b'"c-42"', b'""'),
        b"[" * 100_000 + b"]" * 100_000,  # too deep for the JSON parser's recursion
    ],
)
def test_any_bad_bytes_raise_bad_alert_only(raw: bytes | None) -> None:
    with pytest.raises(BadAlert):
        decode_alert(raw)


def test_a_good_alert_decodes() -> None:
    assert decode_alert(GOOD) == alert()
