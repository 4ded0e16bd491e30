"""Numbers as people read them: money with two decimals and its currency, probabilities and
shares as percentages, expected counts with one decimal, durations in days or hours.

Used by the human output of the command line and by the alert messages; ``--json`` and the
webhook body carry the raw numbers.
"""

from __future__ import annotations

from datetime import datetime


def money(amount: float | None, currency: str = "") -> str:
    if amount is None:
        return "-"
    return f"{amount:,.2f} {currency}".rstrip()


def percent(share: float | None) -> str:
    """0.123 → '12%'; below 1% and above 99% with one decimal, so 0.999 is not '100%'."""
    if share is None:
        return "-"
    value = share * 100
    if 0 < value < 1 or 99 < value < 100:
        return f"{value:.1f}%"
    return f"{value:.0f}%"


def count(value: float | None) -> str:
    """An expected count: one decimal."""
    return "-" if value is None else f"{value:.1f}"


def duration(seconds: float | None) -> str:
    """Hours under three days, days from there."""
    if seconds is None:
        return "-"
    hours = seconds / 3600
    if hours < 72:
        return f"{hours:.1f} hours"
    return f"{hours / 24:.1f} days"


def day(iso_time: str | None) -> str:
    """An ISO time as its date (UTC), for lists."""
    if not iso_time:
        return "-"
    return datetime.fromisoformat(iso_time.replace("Z", "+00:00")).date().isoformat()
