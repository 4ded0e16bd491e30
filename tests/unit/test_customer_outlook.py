"""One customer's outlook in plain floats against the numpy one, and 2F1 against scipy's."""

from __future__ import annotations

import math
import random
from dataclasses import astuple
from datetime import date

import pytest
from scipy.special import hyp2f1 as scipy_hyp2f1

from processors import customer_outlook, forecast
from processors.fits import Fit, Outlook, SpendFit
from processors.hypergeometric import hyp2f1
from processors.model_params import (
    MODEL_NAMES,
    AliveParams,
    BgNbdParams,
    GammaGammaParams,
    MbgNbdParams,
    ModelName,
    ParetoNbdParams,
)
from processors.state import CustomerState
from tests.cdnow_data import PUBLISHED, PUBLISHED_MBGNBD, PUBLISHED_PARETO_NBD


@pytest.mark.parametrize(
    ("a", "b", "c", "z"),
    [
        (0.5, 1.5, 2.5, 0.3),  # the plain series
        (1.2, 2.6, 2.4, 0.95),  # near 1, c-a-b not an integer: still the series
        (20.4, 21.6, 3.2, 0.7),  # c-a-b <= -1: Euler's transformation first
        (-1 + 2.75e-14, 1.5e6, 1.5e6 + 20, 0.13),  # a at -1: a polynomial (the demo's fit)
        (-3.0, 2.5, 4.5, 0.8),  # a polynomial of degree 3
        (1.5, 2.5, 4.0, 0.95),  # near 1 with c-a-b = 0: scipy's psi expansion
        (2.5, 1.0, 2.5, 0.4),  # a = c: (1-z)^-b, scipy's
        (30.0, 1.0, 2.0, 0.5),  # a far above c: scipy's recurrence
        (1.0, 2.0, -2.0, 0.5),  # c a negative integer: infinite
        (0.5, 0.5, 1.5, -0.5),  # z < 0: scipy's
        (0.5, 0.5, 1.5, 0.0),  # z = 0: 1
    ],
)
def test_hyp2f1_is_scipys(a: float, b: float, c: float, z: float) -> None:
    want = float(scipy_hyp2f1(a, b, c, z))
    got = hyp2f1(a, b, c, z)
    assert got == pytest.approx(want, rel=1e-13) or (math.isinf(want) and got == want)


def test_hyp2f1_is_scipys_over_the_models_arguments() -> None:
    rng = random.Random(3)
    for _ in range(2000):
        r, alpha, a, b = (rng.uniform(0.05, 5), rng.uniform(0.1, 30), rng.uniform(0.05, 5),
                          rng.uniform(0.05, 10))  # fmt: skip
        x, T = rng.choice([0, 1, 2, 5, 30, 400]), rng.uniform(0, 200)
        z = (t := rng.choice([30 / 7, 90 / 7, 12 * 30 / 7])) / (alpha + T + t)
        for args in ((r + x, b + x, a + b + x - 1, z), (r + x, b + x + 1, a + b + x, z)):
            assert hyp2f1(*args) == pytest.approx(float(scipy_hyp2f1(*args)), rel=1e-13), args


PARAMS: dict[ModelName, AliveParams] = {
    "bgnbd": BgNbdParams(**PUBLISHED),
    "mbgnbd": MbgNbdParams(**PUBLISHED_MBGNBD),
    "paretonbd": ParetoNbdParams(**PUBLISHED_PARETO_NBD),
}
SPEND = SpendFit(GammaGammaParams(6.25, 3.74, 15.44), 0.1, 946)


def _states(rng: random.Random, n: int) -> list[CustomerState]:
    out = []
    for i in range(n):
        days = {rng.randrange(19_000, 19_400): 1 for _ in range(rng.choice([0, 1, 2, 4, 12, 40]))}
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


def assert_same(got: Outlook | None, want: Outlook | None, rel: float) -> None:
    """The same outlook, every number within ``rel`` (numpy's exp and log may differ from
    the C library's in the last bit); None, and money or none, where numpy has them."""
    assert (got is None) == (want is None)
    if got is None or want is None:
        return
    for mine, theirs in zip(astuple(got), astuple(want), strict=True):
        assert (mine is None) == (theirs is None)
        if theirs is not None:
            assert mine == pytest.approx(theirs, rel=rel)


@pytest.mark.parametrize("model", MODEL_NAMES)
@pytest.mark.parametrize("spend", [None, SPEND])
def test_one_customers_outlook_is_numpys(model: ModelName, spend: SpendFit | None) -> None:
    rng = random.Random(11)
    fit = Fit(PARAMS[model], date(2023, 3, 1), 9, model, spend=spend)
    as_of = date(2023, 2, 1)  # some customers' orders all come later: no outlook
    states = _states(rng, 150)
    want = [forecast.outlook(state, fit, as_of) for state in states]
    for state, theirs in zip(states, want, strict=True):
        assert_same(customer_outlook.outlook(state, fit, as_of), theirs, rel=1e-11)
    assert any(o is None for o in want) and any(o is not None for o in want)


@pytest.mark.parametrize(
    "params",
    [
        # the demo's MBG/NBD fit: a near 0, nobody drops out; 1 - shrink x 2F1 cancels, so
        # a last-bit difference in exp grows to about 1e-10
        MbgNbdParams(2.376705069636058, 5.950232049784624, 2.7504428762773386e-14, 1.55e6),
        BgNbdParams(0.24, 4.4, 1.0, 2.4),  # a = 1: expected purchases undefined, no outlook
        ParetoNbdParams(0.55, 10.6, 1.0, 11.7),  # s = 1: likewise
        BgNbdParams(900.0, 1e-3, 0.79, 2.4),  # overflowing terms
    ],
)
def test_fits_gone_astray_give_what_numpy_gives(params: AliveParams) -> None:
    model: ModelName = {BgNbdParams: "bgnbd", MbgNbdParams: "mbgnbd"}.get(type(params), "paretonbd")
    fit = Fit(params, date(2023, 3, 1), 9, model, spend=SPEND)
    for state in _states(random.Random(5), 60):
        want = forecast.outlook(state, fit, date(2023, 3, 1))
        assert_same(customer_outlook.outlook(state, fit, date(2023, 3, 1)), want, rel=1e-9)
