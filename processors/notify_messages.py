"""What a subscriber receives, and what an alert on the topic must be: pure formatting
and decoding, escaped for each channel so that a customer id always stays text."""

from __future__ import annotations

import hashlib
import json
import re
import unicodedata
import urllib.parse
from dataclasses import dataclass
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import format_datetime
from typing import Any

from processors.alerts import ALERT_VERSION, Alert
from processors.human import money, percent
from processors.notify_config import IDEMPOTENCY_HEADER, EmailSubscriber, RetryPolicy, Verdict


def utf8_bytes(text: str) -> bytes:
    """UTF-8 that also carries lone surrogates (JSON allows ``"\\ud800"``); equal to
    ``text.encode()`` for every other string."""
    return text.encode("utf-8", "surrogatepass")


def visible(text: str) -> str:
    """``text`` with control, format and line-separator characters shown as escapes
    (``\\r``, ``\\u202e``): nothing in it is invisible, reorders what follows (a
    right-to-left override) or breaks the line, in any message a person reads."""
    if text.isascii() and text.isprintable():
        return text
    out = []
    for ch in text:
        category = unicodedata.category(ch)
        if category[0] == "C" or category in ("Zl", "Zp"):
            out.append(ch.encode("unicode_escape").decode("ascii"))
        else:
            out.append(ch)
    return "".join(out)


def header_text(text: str) -> str:
    """``text`` fit for a mail header (:func:`visible`): a customer id cannot end a header
    line and start another (``Bcc: ...``), nor make the message fail to build."""
    return visible(text)


#: printable ASCII but ``%``, which starts an escape
_KEY_SAFE = "".join(chr(c) for c in range(0x21, 0x7F) if chr(c) != "%")


def header_key(key: str) -> str:
    """The alert key as an ``Idempotency-Key`` header value: percent-encoded (UTF-8) where it
    has anything but printable ASCII, so it is one valid header line for any customer id.
    Keys of plain ids pass unchanged."""
    return urllib.parse.quote(key, safe=_KEY_SAFE, errors="surrogatepass")


def webhook_body(alert: Alert, subscriber: str) -> bytes:
    return json.dumps(
        {**alert.as_dict(), "subscriber": subscriber}, sort_keys=True, separators=(",", ":")
    ).encode()


def classify_status(status: int) -> Verdict:
    """2xx delivered; 408, 429 and 5xx are worth retrying; anything else will not change."""
    if 200 <= status < 300:
        return "delivered"
    if status in (408, 429) or status >= 500:
        return "retry"
    return "permanent"


def retry_delay(attempt: int, policy: RetryPolicy, retry_after: float | None = None) -> float:
    """Wait after failed attempt ``attempt`` (1-based); a server's Retry-After is honoured
    up to ``max_delay``."""
    backoff: float = policy.base_delay * 2.0 ** (attempt - 1)
    return min(policy.max_delay, max(backoff, retry_after or 0.0))


def title(alert: Alert) -> str:
    return _TITLES.get(alert.kind, alert.kind.replace("_", " ").capitalize())


def _risk(alert: Alert) -> str:
    score = "-" if alert.risk_score is None else percent(alert.risk_score)
    return score if alert.band is None else f"{score} ({alert.band})"


def _stake_lines(alert: Alert) -> list[tuple[str, str]]:
    """(label, value) of the alert's stakes, in the reporting currency; none without."""
    st = alert.stakes
    if not st:
        return []
    cur = str(st.get("currency") or "")
    last = st.get("last_order_at")
    last_order = "-" if not last else str(last)[:10]
    if last and st.get("last_order_amount") is not None:
        last_order += f", {money(st['last_order_amount'], cur)}"
    return [
        ("CLTV", money(st.get("cltv"), cur)),
        ("CLTV at risk", money(st.get("cltv_at_risk"), cur)),
        ("Revenue to date", money(st.get("revenue"), cur)),
        ("AOV", money(st.get("aov"), cur)),
        ("Orders", str(st.get("orders", "-"))),
        ("Last order", last_order),
    ]


def _reason_lines(alert: Alert) -> list[tuple[str, str, str]]:
    """(reason, sentence, next step) per reason: from the evidence, or the bare reason
    codes of an alert raised without it."""
    if alert.evidence:
        return [
            (str(e.get("reason", "")), str(e.get("text", "")), str(e.get("next_step", "")))
            for e in alert.evidence
        ]
    return [(r, "", "") for r in alert.reasons]


def summary(alert: Alert) -> str:
    """One line: kind, customer, risk, high value, the stake, the reasons in words."""
    facts = [f"risk {_risk(alert)}"] + (["high value"] if alert.high_value else [])
    at_stake = alert.stakes.get("cltv_at_risk")
    if at_stake:
        facts.append(f"{money(at_stake, str(alert.stakes.get('currency') or ''))} at risk")
    said = [text or reason for reason, text, _ in _reason_lines(alert)]
    reasons = " ".join(said) if alert.evidence else "; ".join(said) or "no reasons given"
    return f"{title(alert)}: customer {alert.customer_id} ({', '.join(facts)}) - {reasons}"


# --- Slack's mrkdwn. It has no escape character: ``&``, ``<`` and ``>`` become entities
# (Slack's own rule); in free text each formatting mark becomes a look-alike Slack does not
# read, and what would turn into a link is broken by look-alikes too; ids are shown in
# code spans, where Slack applies no formatting, with a backtick (which would end the span)
# shown by its look-alike. Everything goes through :func:`visible` first.

#: ``*`` bold, ``_`` italic, ``~`` strike and the backtick of code, by look-alikes:
#: ASTERISK OPERATOR, MODIFIER LETTER LOW MACRON, TILDE OPERATOR, MODIFIER LETTER GRAVE
_SLACK_MARKS = str.maketrans({"*": "\u2217", "_": "\u02cd", "~": "\u223c", "`": "\u02cb"})
#: a dot inside a host name (``evil.example``) and the colon of ``scheme://``
_SLACK_LINKISH = re.compile(r"(?<=[0-9A-Za-z])\.(?=[A-Za-z])|:(?=//)")
#: ... shown as ONE DOT LEADER and RATIO
_SLACK_LINK_LOOKALIKES = {".": "\u2024", ":": "\u2236"}


def _entities(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def slack_text(text: str) -> str:
    """Free text for mrkdwn that shows as written: no bold, italics, strike, code, link,
    mention or line break can come out of it."""
    shown = visible(text).translate(_SLACK_MARKS)
    shown = _SLACK_LINKISH.sub(lambda m: _SLACK_LINK_LOOKALIKES[m.group()], shown)
    return _entities(shown)


def slack_code(text: str) -> str:
    """An id as a mrkdwn code span: kept as written (copied from Slack, it is the id), but
    a backtick, which would end the span, is shown by its look-alike."""
    return "`" + _entities(visible(text).replace("`", "\u02cb")) + "`"


def _slack_summary(alert: Alert) -> str:
    """:func:`summary` in mrkdwn: the id and bare reason codes as code spans, the rest as
    free text."""
    facts = [f"risk {_risk(alert)}"] + (["high value"] if alert.high_value else [])
    at_stake = alert.stakes.get("cltv_at_risk")
    if at_stake:
        facts.append(f"{money(at_stake, str(alert.stakes.get('currency') or ''))} at risk")
    said = [slack_text(text) if text else slack_code(r) for r, text, _ in _reason_lines(alert)]
    reasons = " ".join(said) if alert.evidence else "; ".join(said) or "no reasons given"
    head = slack_text(f"{title(alert)}: customer ")
    return f"{head}{slack_code(alert.customer_id)} ({slack_text(', '.join(facts))}) - {reasons}"


def slack_message(alert: Alert) -> dict[str, Any]:
    """An incoming-webhook payload: ``text`` for notifications, ``blocks`` for the channel."""
    lines = []
    for reason, text, step in _reason_lines(alert):
        line = f"• {slack_code(reason)}" + (f": {slack_text(text)}" if text else "")
        if step:
            line += f"\n    _Next step:_ {slack_text(step)}"
        lines.append(line)
    reasons = "\n".join(lines) or "_no reasons given_"
    fields = {
        "Customer": slack_code(alert.customer_id),
        "Kind": alert.kind,  # one of ALERT_KINDS: decoding refuses others
        "Risk score": slack_text(_risk(alert)),
        "High value": "yes" if alert.high_value else "no",
        **{label: slack_text(value) for label, value in _stake_lines(alert)},
    }
    at = alert.at.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")
    return {
        # the notification text is mrkdwn too: `<!channel>` in an id must stay text
        "text": _slack_summary(alert),
        "blocks": [
            # plain_text is not parsed for mentions or links
            {"type": "header", "text": {"type": "plain_text", "text": summary_head(alert)}},
            # a section holds at most ten fields
            *(
                {
                    "type": "section",
                    "fields": [
                        {"type": "mrkdwn", "text": f"*{k}*\n{v}"}
                        for k, v in list(fields.items())[start : start + 10]
                    ],
                }
                for start in range(0, len(fields), 10)
            ),
            {"type": "section", "text": {"type": "mrkdwn", "text": f"*Reasons*\n{reasons}"}},
            {
                "type": "context",
                "elements": [{"type": "mrkdwn", "text": _context(alert, at)}],
            },
        ],
    }


def _context(alert: Alert, at: str) -> str:
    """Slack's context line: when, the key, and the customer's page when known."""
    text = f"{at} · key {slack_code(alert.key)}"
    if alert.url and alert.url.startswith(("https://", "http://")):
        text += f" · <{alert.url.replace('|', '%7C').replace('>', '%3E')}|open the customer>"
    return text


def summary_head(alert: Alert) -> str:
    """Short enough for Slack's header block (150) and a mail subject."""
    return f"{title(alert)}: customer {visible(alert.customer_id)}"[:150]


def _mail(subject: str, key: str, subscriber: EmailSubscriber, now: datetime) -> EmailMessage:
    """A message with its headers: the Message-ID derives from ``key``, so a resend after a
    crash threads with, and can be dropped as, the first."""
    msg = EmailMessage()
    msg["Subject"] = header_text(subject)
    msg["From"] = subscriber.sender
    msg["To"] = ", ".join(subscriber.to)
    msg["Date"] = format_datetime(now.astimezone(UTC))
    hashed = hashlib.sha256(utf8_bytes(f"{subscriber.name}|{key}")).hexdigest()[:32]
    msg["Message-ID"] = f"<{hashed}@{subscriber.sender.split('@', 1)[1]}>"
    msg[IDEMPOTENCY_HEADER] = header_key(key)
    return msg


def email_message(alert: Alert, subscriber: EmailSubscriber, now: datetime) -> EmailMessage:
    """A plain-text email; its Message-ID derives from the alert key, so a resend after a
    crash threads with, and can be dropped as, the first."""
    star = " [high value]" if alert.high_value else ""
    msg = _mail(f"[retention] {summary_head(alert)}{star}", alert.key, subscriber, now)
    said = []
    for reason, text, step in _reason_lines(alert):
        said.append(f"  - {reason}" + (f": {text}" if text else ""))
        if step:
            said.append(f"    Next step: {step}")
    reasons = "\n".join(said) or "  (none given)"
    details = "\n".join(f"  {k}: {v}" for k, v in sorted(alert.details.items())) or "  -"
    stakes = "".join(f"{label + ':':<17}{value}\n" for label, value in _stake_lines(alert))
    text = (
        f"{title(alert)}\n\n"
        f"Customer:        {header_text(alert.customer_id)}\n"
        f"Kind:            {alert.kind}\n"
        f"Raised at:       {alert.as_dict()['at']}\n"
        f"Risk score:      {_risk(alert)}\n"
        f"High value:      {'yes' if alert.high_value else 'no'}\n"
        f"{stakes}\n"
        f"Reasons:\n{reasons}\n\nDetails:\n{details}\n\n"
        + (f"Customer page: {alert.url}\n" if alert.url else "")
        + f"Alert key: {header_text(alert.key)}\n"
    )
    # lone surrogates (from a JSON "\\ud800") cannot be encoded; show them as escapes
    msg.set_content(text.encode("utf-8", "backslashreplace").decode("utf-8"))
    return msg


class BadAlert(ValueError):
    """A message on the alerts topic that is not an alert the notifier can render."""


def decode_alert(raw: bytes | None) -> Alert:
    """Decode and check that every channel can render the alert; anything else raises
    :class:`BadAlert` (never another exception), whatever the bytes."""
    try:
        alert = Alert.decode(raw or b"")
        if alert.risk_score is not None and (
            isinstance(alert.risk_score, bool)
            or not isinstance(alert.risk_score, int | float)
            or alert.risk_score != alert.risk_score
        ):
            raise ValueError(f"risk_score {alert.risk_score!r} is not a number")
        if not alert.customer_id:
            raise ValueError("empty customer_id")
        webhook_body(alert, "check")
        slack_message(alert)
    except Exception as exc:
        raise BadAlert(f"{type(exc).__name__}: {exc}"[:500]) from exc
    return alert


_TITLES: dict[str, str] = {
    "at_risk": "At risk",
    "risk_escalated": "Risk rising",
    "churned": "Churned",
    "reactivated": "Reactivated",
    "winback_due": "Win-back due",
    "cold_customer": "Cold customer",
    "post_purchase_followup": "Post-purchase follow-up",
    "milestone": "Milestone",
}


@dataclass(frozen=True)
class Digest:
    """The alerts a subscriber collected since its last digest, ranked, as one message."""

    subscriber: str
    #: when this digest was due (its schedule's time), aware
    due: datetime
    every: str
    alerts: tuple[Alert, ...]

    @property
    def key(self) -> str:
        """The idempotency key: one per subscriber and due time, so a resend after a crash
        carries the key of the first."""
        return f"digest:{self.subscriber}:{_iso(self.due)}"

    @property
    def title(self) -> str:
        n = len(self.alerts)
        word = "Daily" if self.every == "day" else "Weekly"
        return f"{word} digest: {n} alert{'s' if n != 1 else ''}"


def _iso(at: datetime) -> str:
    return at.astimezone(UTC).isoformat().replace("+00:00", "Z")


def ranked(alerts: list[Alert]) -> tuple[Alert, ...]:
    """Most CLTV at risk first, then the highest risk; ties by customer and key."""

    def order(a: Alert) -> tuple[float, float, str, str]:
        at_stake = a.stakes.get("cltv_at_risk") if a.stakes else None
        return (-float(at_stake or 0.0), -float(a.risk_score or 0.0), a.customer_id, a.key)

    return tuple(sorted(alerts, key=order))


def digest_webhook_body(digest: Digest, subscriber: str) -> bytes:
    body = {
        "version": ALERT_VERSION,
        "kind": "digest",
        "key": digest.key,
        "subscriber": subscriber,
        "every": digest.every,
        "due": _iso(digest.due),
        "alerts": [a.as_dict() for a in digest.alerts],
    }
    return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


#: Slack takes at most 50 blocks a message: the rest of a long digest is counted
SLACK_DIGEST_ALERTS = 40


def slack_digest(digest: Digest) -> dict[str, Any]:
    shown = digest.alerts[:SLACK_DIGEST_ALERTS]
    blocks: list[dict[str, Any]] = [
        {"type": "header", "text": {"type": "plain_text", "text": digest.title}},
    ]
    for n, alert in enumerate(shown, 1):
        steps = [str(e.get("next_step")) for e in alert.evidence if e.get("next_step")]
        text = f"*{n}.* {_slack_summary(alert)}"
        if steps:
            text += f"\n    _Next step:_ {slack_text(steps[0])}"
        blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": text[:3000]}})
    left = len(digest.alerts) - len(shown)
    footer = f"due {_iso(digest.due)} · key {slack_code(digest.key)}"
    if left:
        footer = f"and {left} more, ranked lower · " + footer
    blocks.append({"type": "context", "elements": [{"type": "mrkdwn", "text": footer}]})
    return {"text": slack_text(digest.title), "blocks": blocks}


def digest_email(digest: Digest, subscriber: EmailSubscriber, now: datetime) -> EmailMessage:
    msg = _mail(f"[retention] {digest.title}", digest.key, subscriber, now)
    lines = [digest.title, f"Ranked by CLTV at risk; due {_iso(digest.due)}.", ""]
    for n, alert in enumerate(digest.alerts, 1):
        lines.append(f"{n}. {header_text(summary(alert))}")
        lines.extend(
            f"   Next step ({e.get('reason')}): {e.get('next_step')}"
            for e in alert.evidence
            if e.get("next_step")
        )
    lines += ["", f"Digest key: {header_text(digest.key)}", ""]
    msg.set_content("\n".join(lines).encode("utf-8", "backslashreplace").decode("utf-8"))
    return msg
