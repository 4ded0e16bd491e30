"""Predicted customer lifetime value: discounted expected purchases times expected spend.

References
----------
Fader, P. S., Hardie, B. G. S. and Lee, K. L. (2005), "RFM and CLV: Using Iso-Value Curves
for Customer Base Analysis", Journal of Marketing Research 42(4), 415-430, for combining a
purchase-count model with the Gamma-Gamma spend model. The sum is the one the ``lifetimes``
package's ``customer_lifetime_value`` computes:

CLTV = Σ_{k=1..K} E[M] · (E[Y(k·τ)] - E[Y((k-1)·τ)]) / (1 + d)^k

over K months of τ = 30 days each (τ = 30/7 weeks, the models' unit), with ``d`` the
monthly discount rate and E[M] the customer's expected spend per purchase. Each month's
increment of expected purchases is discounted by that month's end.

Pure: numpy only, no I/O.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from numpy.typing import ArrayLike

from processors.fitting import Floats

DAYS_PER_MONTH = 30.0
WEEKS_PER_MONTH = DAYS_PER_MONTH / 7.0


def cltv(
    expected_purchases: Callable[[float], Floats],
    spend: ArrayLike,
    months: int,
    discount_monthly: float,
) -> Floats:
    """Predicted value over ``months``; ``expected_purchases(t)`` gives, per customer, the
    purchases expected in the next ``t`` weeks, ``spend`` the expected spend per purchase."""
    if months < 0 or discount_monthly <= -1:
        raise ValueError("need months >= 0 and a discount rate above -100%")
    spends = np.asarray(spend, dtype=np.float64)
    total = np.zeros_like(spends)
    before = np.zeros_like(spends)
    for k in range(1, months + 1):
        upto = expected_purchases(k * WEEKS_PER_MONTH)
        total += spends * (upto - before) / (1.0 + discount_monthly) ** k
        before = upto
    return total
