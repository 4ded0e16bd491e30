"""BG/NBD against the paper's published estimates and against the lifetimes package."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from processors.bgnbd import (
    BgNbdParams,
    expected_purchases,
    fit,
    log_likelihood,
    negative_log_likelihood,
    p_alive,
)
from tests.cdnow_data import PUBLISHED, sample_stats


@pytest.fixture(scope="module")
def cdnow() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    stats = sample_stats()
    assert len(stats) == 2357
    x, t_x, T = (np.array(c, dtype=float) for c in zip(*stats.values(), strict=True))
    return x, t_x, T


@pytest.fixture(scope="module")
def fitted(cdnow: tuple[np.ndarray, np.ndarray, np.ndarray]) -> BgNbdParams:
    return fit(*cdnow)


@pytest.mark.parametrize("name", ["r", "alpha", "a", "b"])
def test_fit_reproduces_the_published_cdnow_estimates(fitted: BgNbdParams, name: str) -> None:
    assert getattr(fitted, name) == pytest.approx(PUBLISHED[name], rel=0.01)


def oracle(params: BgNbdParams):  # type: ignore[no-untyped-def]
    from lifetimes import BetaGeoFitter

    model = BetaGeoFitter()
    model.params_ = pd.Series(params.as_dict())
    return model


def test_p_alive_and_expectations_match_lifetimes(
    cdnow: tuple[np.ndarray, np.ndarray, np.ndarray], fitted: BgNbdParams
) -> None:
    x, t_x, T = cdnow
    model = oracle(fitted)
    want = model.conditional_probability_alive(x, t_x, T)
    assert np.max(np.abs(p_alive(fitted, x, t_x, T) - want)) < 1e-9
    for weeks in (30 / 7, 90 / 7, 39.0):
        want = model.conditional_expected_number_of_purchases_up_to_time(weeks, x, t_x, T)
        assert np.max(np.abs(expected_purchases(fitted, weeks, x, t_x, T) - want)) < 1e-9


def test_fit_matches_lifetimes_own_fit(cdnow: tuple[np.ndarray, np.ndarray, np.ndarray]) -> None:
    from lifetimes import BetaGeoFitter

    theirs = BetaGeoFitter().fit(*cdnow).params_
    mine = fit(*cdnow)
    for name in ("r", "alpha", "a", "b"):
        assert getattr(mine, name) == pytest.approx(float(theirs[name]), rel=1e-4)


def test_scalar_calls_average_to_the_array_call(
    cdnow: tuple[np.ndarray, np.ndarray, np.ndarray], fitted: BgNbdParams
) -> None:
    x, t_x, T = (c[:50] for c in cdnow)
    one_by_one = [
        log_likelihood(fitted, [a], [b], [c])[0] for a, b, c in zip(x, t_x, T, strict=True)
    ]
    logs = np.log([fitted.r, fitted.alpha, fitted.a, fitted.b])
    mean = negative_log_likelihood(logs, x, t_x, T, np.ones_like(x))
    assert -np.mean(one_by_one) == pytest.approx(mean, rel=1e-12)


@pytest.mark.parametrize(
    ("x", "t_x", "T"),
    [
        (0, 0.0, 10.0),
        (0, 0.0, 0.0),
        (1, 1.0, 40.0),
        (5, 30.0, 31.0),
        (40, 70.0, 70.0),
        (2, 0.1, 200.0),
    ],
)
def test_p_alive_is_a_probability(fitted: BgNbdParams, x: int, t_x: float, T: float) -> None:
    value = float(p_alive(fitted, [x], [t_x], [T])[0])
    assert 0.0 <= value <= 1.0
    if x == 0:
        assert value == 1.0  # no repeat purchase: no chance to have dropped out yet


def test_longer_silence_lowers_p_alive(fitted: BgNbdParams) -> None:
    values = p_alive(fitted, [3, 3, 3], [10.0, 10.0, 10.0], [12.0, 30.0, 60.0])
    assert values[0] > values[1] > values[2]


def test_expected_purchases_grow_with_the_horizon(fitted: BgNbdParams) -> None:
    short, long = (float(expected_purchases(fitted, t, [2], [20.0], [30.0])[0]) for t in (4, 13))
    assert 0 < short < long


def test_inputs_are_checked() -> None:
    params = BgNbdParams(0.2, 4.0, 0.8, 2.4)
    with pytest.raises(ValueError):
        p_alive(params, [1], [5.0], [4.0])  # t_x beyond T
    with pytest.raises(ValueError):
        p_alive(params, [-1], [0.0], [4.0])
