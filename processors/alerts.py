"""Customer alerts: what the tracker tells subscribers, as published on ``customer-alerts``.

One JSON object per alert, keyed by customer id on the topic. ``key`` is the idempotency
key: the same situation raised twice (by a restart or by two workers) carries the same key,
so a subscriber, and the notifier itself, can drop the repeat. The object's fields are
documented in docs/alerts.md (schema ``version`` :data:`ALERT_VERSION`); a new version only
adds fields.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

AlertKind = Literal[
    "at_risk",
    "risk_escalated",
    "churned",
    "reactivated",
    "winback_due",
    "cold_customer",
    "post_purchase_followup",
    "milestone",
]
ALERT_KINDS: tuple[AlertKind, ...] = AlertKind.__args__  # type: ignore[attr-defined]
#: 1: key, kind, customer_id, at, occasion, reasons, risk_score, high_value, details.
#: 2 adds version, band, evidence (one object per reason), stakes and url.
ALERT_VERSION = 2


@dataclass(frozen=True, slots=True)
class Alert:
    kind: AlertKind
    customer_id: str
    #: the tracker's clock when the alert was raised (UTC)
    at: datetime
    #: what makes the key unique within (kind, customer): e.g. the day of the last order a
    #: follow-up is about, or the milestone's order count
    occasion: str
    reasons: tuple[str, ...] = ()
    risk_score: float | None = None
    high_value: bool = False
    details: dict[str, Any] = field(default_factory=dict)
    #: the risk score's band: low, medium or high (processors/risk.py, ``Bands``)
    band: str | None = None
    #: per reason: observed, threshold, expected, unit, text, next_step
    #: (processors/evidence.py)
    evidence: tuple[dict[str, Any], ...] = ()
    #: value to date, AOV, last order, CLTV and CLTV at risk, with their currency
    stakes: dict[str, Any] = field(default_factory=dict)
    #: the customer's page in the web view, when its address is configured
    url: str | None = None
    #: the customer's attributes (country, channel, shop, currency): the latest value of each
    attributes: dict[str, str] = field(default_factory=dict)

    @property
    def key(self) -> str:
        return f"{self.kind}:{self.customer_id}:{self.occasion}"

    def as_dict(self) -> dict[str, Any]:
        return {
            "version": ALERT_VERSION,
            "key": self.key,
            "kind": self.kind,
            "customer_id": self.customer_id,
            "at": self.at.astimezone(UTC).isoformat().replace("+00:00", "Z"),
            "occasion": self.occasion,
            "reasons": list(self.reasons),
            "risk_score": self.risk_score,
            "high_value": self.high_value,
            "details": self.details,
            "band": self.band,
            "evidence": list(self.evidence),
            "stakes": self.stakes,
            "url": self.url,
            "attributes": self.attributes,
        }

    def encode(self) -> bytes:
        return json.dumps(self.as_dict(), sort_keys=True).encode()

    @classmethod
    def decode(cls, raw: bytes | str) -> Alert:
        data = json.loads(raw)
        kind = data["kind"]
        if kind not in ALERT_KINDS:
            raise ValueError(f"unknown alert kind {kind!r}")
        return cls(
            kind=kind,
            customer_id=str(data["customer_id"]),
            at=datetime.fromisoformat(data["at"]).astimezone(UTC),
            occasion=str(data["occasion"]),
            reasons=tuple(str(r) for r in data.get("reasons", ())),
            risk_score=data.get("risk_score"),
            high_value=bool(data.get("high_value", False)),
            details=dict(data.get("details", {})),
            band=None if data.get("band") is None else str(data["band"]),
            evidence=tuple(dict(e) for e in data.get("evidence") or ()),
            stakes=dict(data.get("stakes") or {}),
            url=None if data.get("url") is None else str(data["url"]),
            attributes={str(k): str(v) for k, v in (data.get("attributes") or {}).items()},
        )
