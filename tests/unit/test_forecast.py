"""The pure parts of the store's model layer: settings, stored fits and spend inputs."""

from __future__ import annotations

import random
from datetime import date
from typing import get_args

import pytest

from processors.alive_models import MODEL_NAMES, ModelName
from processors.bgnbd import BgNbdParams
from processors.forecast import (
    DEFAULT_MODEL,
    Fit,
    SpendFit,
    approximate_spend,
    model_options,
    outlook,
    outlooks,
    spend_from_days,
)
from processors.gamma_gamma import GammaGammaParams
from processors.mbgnbd import MbgNbdParams
from processors.pareto_nbd import ParetoNbdParams
from processors.state import CustomerState
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


def _states(rng: random.Random, n: int) -> list[CustomerState]:
    out = []
    for i in range(n):
        days = {rng.randrange(19_000, 19_400): 1 for _ in range(rng.randrange(0, 6))}
        placed = rng.randrange(0, 500_000_000)
        out.append(
            CustomerState(
                customer_id=f"c{i}",
                orders=sum(days.values()),
                placed_micros=placed,
                refunded_micros=rng.choice([0, placed // 3, placed * 2]),
                orders_by_day=days,
            )
        )
    return out


PARAMS = {
    "bgnbd": BgNbdParams(0.24, 4.4, 0.79, 2.4),
    "mbgnbd": MbgNbdParams(0.5, 6.0, 1.3, 3.0),
    "paretonbd": ParetoNbdParams(0.55, 10.6, 0.61, 11.7),
}


@pytest.mark.parametrize("model", MODEL_NAMES)
@pytest.mark.parametrize("spend", [None, SpendFit(GammaGammaParams(6.2, 3.7, 15.4), 0.1, 9)])
def test_outlooks_of_a_chunk_equal_each_customers_outlook(
    model: ModelName, spend: SpendFit | None
) -> None:
    rng = random.Random(7)
    states = _states(rng, 300)
    fit = Fit(PARAMS[model], date(2023, 3, 1), 9, model, spend=spend)
    as_of = date(2023, 2, 1)  # some customers' orders all come later: no outlook
    got = outlooks(states, fit, as_of)
    want = [outlook(state, fit, as_of) for state in states]
    assert got == want
    # exact spends for some customers (a backtest's), the live approximation for the rest
    exact = {s.customer_id: rng.uniform(5, 90) for s in states[::3]}
    got = outlooks(states, fit, as_of, exact)
    assert got == [outlook(state, fit, as_of, exact.get(state.customer_id)) for state in states]
    assert any(o is None for o in want) and any(o is not None for o in want)
    assert spend is None or any(o is not None and o.cltv is not None for o in want)
