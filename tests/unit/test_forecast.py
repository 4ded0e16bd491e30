"""The pure parts of the store's model layer: settings, stored fits and spend inputs."""

from __future__ import annotations

from typing import get_args

import pytest

from processors.alive_models import MODEL_NAMES
from processors.bgnbd import BgNbdParams
from processors.forecast import (
    DEFAULT_MODEL,
    Fit,
    approximate_spend,
    model_options,
    spend_from_days,
)
from retention.config import AliveModelName, Settings


def test_settings_offer_exactly_the_models_with_the_same_default() -> None:
    assert get_args(AliveModelName) == MODEL_NAMES
    settings = Settings()
    assert settings.alive_model == DEFAULT_MODEL == "mbgnbd"
    options = model_options(settings)
    assert (options.cltv_months, options.cltv_discount_monthly) == (12, 0.01)


def test_a_fit_stored_before_the_model_choice_reads_as_bgnbd() -> None:
    old = {"r": 0.24, "alpha": 4.4, "a": 0.79, "b": 2.4, "as_of": "2024-01-31", "customers": 9}
    fit = Fit.from_dict(old)
    assert fit.model == "bgnbd" and fit.spend is None
    assert fit.params == BgNbdParams(0.24, 4.4, 0.79, 2.4)
    assert Fit.from_dict(fit.as_dict()) == fit


@pytest.mark.parametrize(
    ("amounts", "as_of", "want"),
    [
        ({10: 5.0}, 20, 0.0),  # one day: no repeat purchase
        ({10: 5.0, 12: 7.0, 15: 9.0}, 20, 8.0),  # the first day is left out
        ({10: 5.0, 12: 7.0, 15: 9.0}, 12, 7.0),  # days after as_of are ignored
        ({15: 9.0, 10: 5.0}, 20, 9.0),  # order of the mapping does not matter
    ],
)
def test_exact_spend_is_the_mean_of_repeat_days(
    amounts: dict[int, float], as_of: int, want: float
) -> None:
    assert spend_from_days(amounts, as_of) == pytest.approx(want)


def test_live_spend_is_net_revenue_per_order_day() -> None:
    assert approximate_spend(30_000_000, 3) == pytest.approx(10.0)
    assert approximate_spend(-5_000_000, 2) == 0.0  # refunds beyond purchases: no spend
    assert approximate_spend(10_000_000, 0) == 0.0
