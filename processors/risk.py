"""Explainable churn risk: rules over a customer's own history, each with a reason code.

Rules and thresholds come from a YAML file (``RETENTION_RISK_FILE``, read by
``streams/risk_file.py``) over the defaults below. Each rule that holds adds a reason and a
weight; the score combines the weights as independent signals, ``1 - Π(1 - w)``, so it
stays in [0, 1] and more reasons mean more risk. A customer is at risk when the score
reaches ``threshold``. The score falls in a band (low, medium, high; ``bands``), and each
reason comes with its numbers, a sentence and the shop's next step (``playbook``):
:func:`evidence`. The same file sets the lifecycle's timers (``timers``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from contract.events import MICROS, MS_PER_DAY
from processors.state import CustomerState
from processors.windows import local_day

MS_PER_HOUR = 3_600_000


class _Rule(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    enabled: bool = True
    weight: float = Field(default=0.5, ge=0, le=1)


class Silence(_Rule):
    """No activity for ``factor`` times the customer's own order rhythm (and ``min_days``)."""

    factor: float = Field(default=2.0, gt=0)
    min_days: float = Field(default=14, ge=0)
    default_rhythm_days: float = Field(default=30, gt=0)
    weight: float = 0.5


class FrequencyDrop(_Rule):
    """Orders in the last ``window_days`` below ``ratio`` of the customer's earlier pace."""

    window_days: float = Field(default=90, gt=0)
    ratio: float = Field(default=0.5, gt=0, le=1)
    min_expected: float = Field(default=1.0, gt=0)
    weight: float = 0.4


class LowPAlive(_Rule):
    """P(alive) (of the configured model) below ``threshold`` for a customer with at least
    ``min_orders`` orders. One order is enough by default: the default model, MBG/NBD,
    lets a one-time buyer who went silent drop below the threshold, as BG/NBD cannot."""

    threshold: float = Field(default=0.3, gt=0, lt=1)
    min_orders: int = Field(default=1, ge=1)
    weight: float = 0.6


class TicketUnresolved(_Rule):
    hours: float = Field(default=48, gt=0)
    weight: float = 0.4


class LowCsat(_Rule):
    max_score: int = Field(default=2, ge=1, le=5)
    weight: float = 0.3


class NpsDetractor(_Rule):
    max_score: int = Field(default=6, ge=0, le=10)
    weight: float = 0.3


class Refunds(_Rule):
    min_count: int = Field(default=2, ge=1)
    min_share: float = Field(default=0.3, gt=0, le=1)
    weight: float = 0.3


class Rules(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    silence: Silence = Silence()
    frequency_drop: FrequencyDrop = FrequencyDrop()
    low_p_alive: LowPAlive = LowPAlive()
    ticket_unresolved: TicketUnresolved = TicketUnresolved()
    low_csat: LowCsat = LowCsat()
    nps_detractor: NpsDetractor = NpsDetractor()
    refunds: Refunds = Refunds()


Band = Literal["low", "medium", "high"]
BANDS: tuple[Band, ...] = ("low", "medium", "high")


class Bands(BaseModel):
    """Risk scores from ``medium`` up are medium, from ``high`` up high, the rest low."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    medium: float = Field(default=0.5, gt=0, le=1)
    high: float = Field(default=0.75, gt=0, le=1)

    @model_validator(mode="after")
    def _ordered(self) -> Bands:
        if self.high <= self.medium:
            raise ValueError("bands: high must be above medium")
        return self

    def of(self, score: float | None) -> Band | None:
        if score is None:
            return None
        return "high" if score >= self.high else "medium" if score >= self.medium else "low"


#: What a success manager does about each reason, unless the risk file's ``playbook`` says
#: otherwise.
PLAYBOOK: dict[str, str] = {
    "silence": "Reach out personally: ask how things are going and show what is new since "
    "their last visit.",
    "frequency_drop": "Send an offer on what they usually buy to bring back their earlier pace.",
    "low_p_alive": "Start the win-back sequence now, before the customer is lost.",
    "ticket_unresolved": "Escalate the open ticket to a support lead and tell the customer "
    "when to expect an answer.",
    "low_csat": "Call about the poor rating and fix what caused it.",
    "nps_detractor": "Follow up on the NPS answer: ask what would make them recommend you.",
    "refunds": "Review the refunded orders for a product or delivery problem and contact the "
    "customer.",
}


class Timers(BaseModel):
    """When the timed alerts come, in days after the customer's last activity (cold,
    win-back) or last order (follow-up); milestones are order counts."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    cold_days: int = Field(default=30, ge=1, le=3650)
    followup_days: int = Field(default=30, ge=1, le=3650)
    winback_days: int = Field(default=120, ge=1, le=3650)
    milestones: tuple[int, ...] = (5, 10, 25, 50, 100)

    @model_validator(mode="after")
    def _milestones(self) -> Timers:
        if any(n < 1 for n in self.milestones) or len(set(self.milestones)) != len(self.milestones):
            raise ValueError("timers: milestones must be distinct order counts of at least 1")
        return self


class RiskPolicy(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    threshold: float = Field(default=0.5, gt=0, le=1)
    #: customers at or above this quantile of predicted CLTV are high-value
    high_value_quantile: float = Field(default=0.9, gt=0, lt=1)
    rules: Rules = Rules()
    bands: Bands = Bands()
    #: next step per reason, over :data:`PLAYBOOK`
    playbook: dict[str, str] = Field(default_factory=dict)
    timers: Timers = Timers()
    #: an alert worked when its customer orders within this many days after it
    outcome_window_days: int = Field(default=30, ge=1, le=365)

    @model_validator(mode="after")
    def _known_reasons(self) -> RiskPolicy:
        unknown = sorted(set(self.playbook) - set(PLAYBOOK))
        if unknown:
            raise ValueError(f"playbook: unknown reasons {unknown}; known: {sorted(PLAYBOOK)}")
        if any(not line.strip() or len(line) > 500 for line in self.playbook.values()):
            raise ValueError("playbook: each next step is 1 to 500 characters")
        return self

    def next_step(self, reason: str) -> str:
        return self.playbook.get(reason) or PLAYBOOK.get(reason, "")


def parse_policy(data: Mapping[str, object] | None) -> RiskPolicy:
    """The defaults, overridden by whatever the parsed rules file sets.

    ``None`` (an empty file) keeps every default; an unknown key or an out-of-range value
    raises :class:`pydantic.ValidationError` (a ``ValueError``).
    """
    return RiskPolicy.model_validate(data or {})


@dataclass(frozen=True, slots=True)
class Assessment:
    score: float
    reasons: tuple[str, ...]
    details: dict[str, float] = field(default_factory=dict)
    high_value: bool = False

    def at_risk(self, policy: RiskPolicy) -> bool:
        return self.score >= policy.threshold


def rhythm_days(state: CustomerState, default: float) -> float:
    """Mean days between order days, or ``default`` with fewer than two of them."""
    days = sorted(state.orders_by_day)
    if len(days) < 2:
        return default
    return (days[-1] - days[0]) / (len(days) - 1)


def silence_limit_days(state: CustomerState, rule: Silence) -> float:
    return max(rule.min_days, rule.factor * rhythm_days(state, rule.default_rhythm_days))


def _reference_ms(state: CustomerState) -> int | None:
    return state.last_activity_ms if state.last_activity_ms is not None else state.first_seen_ms


def _silence(state: CustomerState, now_ms: int, rule: Silence) -> dict[str, float] | None:
    last = _reference_ms(state)
    if last is None:
        return None
    silent = (now_ms - last) / MS_PER_DAY
    limit = silence_limit_days(state, rule)
    if silent <= limit:
        return None
    found = {"silent_days": silent, "limit_days": limit}
    if len(state.orders_by_day) >= 2:
        found["rhythm_days"] = rhythm_days(state, rule.default_rhythm_days)
    return found


def _frequency_drop(
    state: CustomerState, now_ms: int, rule: FrequencyDrop
) -> dict[str, float] | None:
    if not state.orders_by_day:
        return None
    today = local_day(now_ms)
    start = today - rule.window_days
    first = min(state.orders_by_day)
    before_days = start - first
    if before_days < rule.window_days:
        return None  # not enough history before the window for a baseline
    before = sum(n for d, n in state.orders_by_day.items() if d < start)
    recent = sum(n for d, n in state.orders_by_day.items() if start <= d <= today)
    expected = before * rule.window_days / before_days
    if expected < rule.min_expected or recent >= rule.ratio * expected:
        return None
    return {
        "recent_orders": float(recent),
        "expected_orders": expected,
        "window_days": float(rule.window_days),
    }


def _low_p_alive(
    state: CustomerState, p_alive: float | None, rule: LowPAlive
) -> dict[str, float] | None:
    if p_alive is None or state.orders < rule.min_orders or p_alive >= rule.threshold:
        return None
    return {"p_alive": p_alive}


def _ticket(state: CustomerState, now_ms: int, rule: TicketUnresolved) -> dict[str, float] | None:
    ages = [
        (now_ms - t.opened_ms) / MS_PER_HOUR
        for t in state.tickets.values()
        if t.is_open and t.opened_ms is not None
    ]
    oldest = max(ages, default=0.0)
    return {"open_ticket_hours": oldest} if oldest > rule.hours else None


def _score(state: CustomerState, survey: str, max_score: int) -> dict[str, float] | None:
    score = state.scores.get(survey)
    return {survey: float(score.value)} if score and score.value <= max_score else None


def _refunds(state: CustomerState, rule: Refunds) -> dict[str, float] | None:
    if state.refunds < rule.min_count or not state.placed_micros:
        return None
    share = state.refunded_micros / state.placed_micros
    if share < rule.min_share:
        return None
    return {"refund_share": share, "refunds": float(state.refunds)}


def assess(
    state: CustomerState,
    now_ms: int,
    policy: RiskPolicy,
    p_alive: float | None = None,
    high_value_cltv: float | None = None,
    cltv: float | None = None,
) -> Assessment:
    """Apply every enabled rule; reasons come out in the order of the policy's rules.

    The customer is high-value when its predicted CLTV is positive and reaches
    ``high_value_cltv``, the policy's quantile over all buyers (the leader keeps it).
    """
    r = policy.rules
    checks: list[tuple[str, _Rule, dict[str, float] | None]] = [
        ("silence", r.silence, _silence(state, now_ms, r.silence)),
        ("frequency_drop", r.frequency_drop, _frequency_drop(state, now_ms, r.frequency_drop)),
        ("low_p_alive", r.low_p_alive, _low_p_alive(state, p_alive, r.low_p_alive)),
        ("ticket_unresolved", r.ticket_unresolved, _ticket(state, now_ms, r.ticket_unresolved)),
        ("low_csat", r.low_csat, _score(state, "csat", r.low_csat.max_score)),
        ("nps_detractor", r.nps_detractor, _score(state, "nps", r.nps_detractor.max_score)),
        ("refunds", r.refunds, _refunds(state, r.refunds)),
    ]
    reasons: list[str] = []
    details: dict[str, float] = {}
    keep = 1.0
    for name, rule, found in checks:
        if rule.enabled and found is not None:
            reasons.append(name)
            details.update(found)
            keep *= 1.0 - rule.weight
    high_value = (
        high_value_cltv is not None and cltv is not None and cltv > 0 and cltv >= high_value_cltv
    )
    return Assessment(round(1.0 - keep, 6), tuple(reasons), details, high_value)


def value(state: CustomerState) -> float:
    """Customer value to date: revenue, placed minus refunded (ranks at-risk customers
    until a fit gives a predicted CLTV)."""
    return state.revenue_micros / MICROS
