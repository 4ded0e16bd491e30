"""Did the alerts work: for every alert raised, whether its customer ordered again soon after.

An alert's outcome, ``window_days`` after it (default 30):

- ``returned``: the customer placed an order on one of the ``window_days`` days after the
  alert's day (UTC);
- ``not_returned``: that window is over and no such order came;
- ``pending``: the window is not over yet and no order has come so far.

Computed from the customer's stored orders per day whenever it is read, so an order that
arrives late (a backfill, a replay) counts like one that came on time. Pure: the store
(``store/outcomes.py``) brings the alerts and the states.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Literal

from processors.state import CustomerState
from processors.windows import local_day

Outcome = Literal["returned", "not_returned", "pending"]
OUTCOMES: tuple[Outcome, ...] = ("returned", "not_returned", "pending")
DEFAULT_WINDOW_DAYS = 30


@dataclass(frozen=True, slots=True)
class Raised:
    """One alert as the store logs it."""

    key: str
    customer_id: str
    kind: str
    #: the risk band when it was raised ("" without one)
    band: str
    at_ms: int

    def encode(self) -> str:
        return f"{self.kind}|{self.band}|{self.at_ms}|{self.customer_id}"

    @classmethod
    def decode(cls, key: str, text: str) -> Raised:
        kind, band, at, customer_id = text.split("|", 3)
        return cls(key, customer_id, kind, band, int(at))


def outcome(raised: Raised, state: CustomerState | None, window_days: int, now_ms: int) -> Outcome:
    day = local_day(raised.at_ms)
    last = day + window_days
    if state is not None and any(day < d <= last for d in state.orders_by_day):
        return "returned"
    return "not_returned" if local_day(now_ms) > last else "pending"


@dataclass(frozen=True, slots=True)
class Tally:
    """Outcomes counted by (kind, band, outcome)."""

    window_days: int
    counts: dict[tuple[str, str, Outcome], int]

    def rows(self) -> list[dict[str, object]]:
        """Per (kind, band): the counts, and the share returned of the alerts decided."""
        by_group: dict[tuple[str, str], Counter[str]] = {}
        for (kind, band, result), n in self.counts.items():
            by_group.setdefault((kind, band), Counter())[result] += n
        out: list[dict[str, object]] = []
        for (kind, band), counts in sorted(by_group.items()):
            decided = counts["returned"] + counts["not_returned"]
            out.append(
                {
                    "kind": kind,
                    "band": band or None,
                    "alerts": sum(counts.values()),
                    **{name: counts[name] for name in OUTCOMES},
                    "return_rate": counts["returned"] / decided if decided else None,
                }
            )
        return out


def tally(
    raised: Iterable[Raised],
    states: Mapping[str, CustomerState],
    window_days: int = DEFAULT_WINDOW_DAYS,
    now_ms: int = 0,
) -> Tally:
    counts: Counter[tuple[str, str, Outcome]] = Counter()
    for alert in raised:
        result = outcome(alert, states.get(alert.customer_id), window_days, now_ms)
        counts[(alert.kind, alert.band, result)] += 1
    return Tally(window_days, dict(counts))
