"""A fitted model as stored and read back, the options that ask for one, one customer's
outlook, and the purchase statistics both the fits and the outlooks start from.

Plain records and arithmetic, without numpy: a command that reads a stored fit and one
customer (``retention customer``) loads none of the numerics, which live in
:mod:`processors.forecast` (many customers at once, fitting) and
:mod:`processors.customer_outlook` (one customer). :mod:`processors.forecast` exports
every name here too.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date
from typing import Any, Protocol, cast

from contract.events import EPOCH, MICROS
from processors.model_params import GammaGammaParams, ModelName, params_of
from processors.state import CustomerState

DAYS_PER_WEEK = 7.0
#: MBG/NBD: as cheap and on CDNOW as good a fit as BG/NBD, and it does not certify every
#: one-time buyer alive (docs/alerts.md, "Choosing the P(alive) model").
DEFAULT_MODEL: ModelName = "mbgnbd"


@dataclass(frozen=True, slots=True)
class ModelOptions:
    """What a refit fits and how CLTV is summed (``RETENTION_ALIVE_MODEL``,
    ``RETENTION_CLTV_MONTHS``, ``RETENTION_CLTV_DISCOUNT_MONTHLY``)."""

    alive_model: ModelName = DEFAULT_MODEL
    cltv_months: int = 12
    cltv_discount_monthly: float = 0.01


class ModelSettings(Protocol):
    @property
    def alive_model(self) -> ModelName: ...
    @property
    def cltv_months(self) -> int: ...
    @property
    def cltv_discount_monthly(self) -> float: ...


def model_options(settings: ModelSettings) -> ModelOptions:
    """The options a settings object (``retention.config.Settings``) asks for."""
    return ModelOptions(settings.alive_model, settings.cltv_months, settings.cltv_discount_monthly)


@dataclass(frozen=True, slots=True)
class SpendFit:
    """The Gamma-Gamma fit, the repeat buyers it used and their frequency/spend correlation."""

    params: GammaGammaParams
    correlation: float | None
    customers: int

    def as_dict(self) -> dict[str, Any]:
        return {
            **self.params.as_dict(),
            "correlation": self.correlation,
            "customers": self.customers,
        }

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> SpendFit:
        params = GammaGammaParams(float(raw["p"]), float(raw["q"]), float(raw["v"]))
        return cls(params, raw.get("correlation"), int(raw["customers"]))


@dataclass(frozen=True, slots=True)
class Fit:
    params: Any
    as_of: date
    customers: int
    model: ModelName = "bgnbd"
    log_likelihood: float | None = None
    spend: SpendFit | None = None
    cltv_months: int = 12
    cltv_discount_monthly: float = 0.01

    def as_dict(self) -> dict[str, Any]:
        return {
            **self.params.as_dict(),
            "model": self.model,
            "as_of": self.as_of.isoformat(),
            "customers": self.customers,
            "log_likelihood": self.log_likelihood,
            "gamma_gamma": None if self.spend is None else self.spend.as_dict(),
            "cltv_months": self.cltv_months,
            "cltv_discount_monthly": self.cltv_discount_monthly,
        }

    def alive_block(self) -> dict[str, Any]:
        """The backtest report's ``alive_model``."""
        return {
            "name": self.model,
            "params": self.params.as_dict(),
            "log_likelihood": self.log_likelihood,
        }

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Fit:
        # a fit stored before the model choice existed is a BG/NBD fit without spend
        model = cast(ModelName, raw.get("model", "bgnbd"))
        spend = raw.get("gamma_gamma")
        return cls(
            params_of(model, raw),
            date.fromisoformat(raw["as_of"]),
            int(raw["customers"]),
            model,
            raw.get("log_likelihood"),
            None if spend is None else SpendFit.from_dict(spend),
            int(raw.get("cltv_months", 12)),
            float(raw.get("cltv_discount_monthly", 0.01)),
        )


@dataclass(frozen=True, slots=True)
class Outlook:
    p_alive: float
    expected_purchases_30d: float
    expected_purchases_90d: float
    expected_spend: float | None = None
    cltv: float | None = None

    def value_fields(self) -> dict[str, float | None]:
        """The customer JSON's value fields."""
        return {"expected_spend": self.expected_spend, "cltv": self.cltv}


NO_VALUE: dict[str, float | None] = {"expected_spend": None, "cltv": None}


@dataclass(frozen=True, slots=True)
class History:
    """One buyer's purchase statistics as of a day, with its approximate spend."""

    customer_id: str
    x: int
    t_x: float
    T: float
    spend: float


def day_number(day: date) -> int:
    return (day - EPOCH.date()).days


def stats_from_days(days: list[int], as_of: int) -> tuple[int, float, float] | None:
    """(x, t_x, T) from a customer's order days, or None without an order by ``as_of``."""
    kept = [d for d in days if d <= as_of]
    if not kept:
        return None
    first, last = min(kept), max(kept)
    return len(set(kept)) - 1, (last - first) / DAYS_PER_WEEK, (as_of - first) / DAYS_PER_WEEK


def spend_from_days(amounts: Mapping[int, float], as_of: int) -> float:
    """Mean value of the repeat purchases: amounts summed per day, the first day left out,
    days after ``as_of`` ignored; 0 without a repeat purchase (the Gamma-Gamma data)."""
    kept = sorted(d for d in amounts if d <= as_of)
    repeat = [amounts[d] for d in kept[1:]]
    return sum(repeat) / len(repeat) if repeat else 0.0


def approximate_spend(revenue_micros: int, order_days: int) -> float:
    """The live stand-in for :func:`spend_from_days`: net revenue per order day, the first
    day included (the store keeps no amount per day); never below 0."""
    if order_days <= 0:
        return 0.0
    return max(revenue_micros, 0) / MICROS / order_days


def customer_spend(state: CustomerState, as_of: int) -> float:
    """The live spend input of one customer (see :func:`approximate_spend`)."""
    days = [d for d in state.orders_by_day if d <= as_of]
    return approximate_spend(state.revenue_micros, len(days))
