"""MBG/NBD and Pareto/NBD against published CDNOW estimates and the lifetimes package."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from processors.alive_models import MODEL_NAMES, MODELS, AliveModel
from tests.cdnow_data import (
    PUBLISHED,
    PUBLISHED_MBGNBD,
    PUBLISHED_PARETO_NBD,
    PUBLISHED_PARETO_NBD_LL,
    sample_stats,
)

Data = tuple[np.ndarray, np.ndarray, np.ndarray]
PUBLISHED_BY_MODEL = {
    "bgnbd": PUBLISHED,
    "mbgnbd": PUBLISHED_MBGNBD,
    "paretonbd": PUBLISHED_PARETO_NBD,
}


@pytest.fixture(scope="module")
def cdnow() -> Data:
    x, t_x, T = (np.array(c, dtype=float) for c in zip(*sample_stats().values(), strict=True))
    return x, t_x, T


@pytest.fixture(scope="module")
def fitted(cdnow: Data) -> dict[str, object]:
    return {name: MODELS[name].fit(*cdnow) for name in MODEL_NAMES}


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_fit_reproduces_the_published_cdnow_estimates(fitted: dict[str, object], name: str) -> None:
    params = fitted[name]
    for param, value in PUBLISHED_BY_MODEL[name].items():
        assert getattr(params, param) == pytest.approx(value, rel=0.01), param


def test_pareto_nbd_log_likelihood_is_the_published_one(
    cdnow: Data, fitted: dict[str, object]
) -> None:
    total = float(np.sum(MODELS["paretonbd"].log_likelihood(fitted["paretonbd"], *cdnow)))
    assert total == pytest.approx(PUBLISHED_PARETO_NBD_LL, abs=0.5)


def oracle(model: AliveModel, params: object):  # type: ignore[no-untyped-def]
    from lifetimes import BetaGeoFitter, ModifiedBetaGeoFitter, ParetoNBDFitter

    fitter = {"bgnbd": BetaGeoFitter, "mbgnbd": ModifiedBetaGeoFitter}.get(
        model.name, ParetoNBDFitter
    )()
    fitter.params_ = pd.Series(params.as_dict())  # type: ignore[attr-defined]
    return fitter


@pytest.mark.parametrize("name", ["mbgnbd", "paretonbd"])
def test_p_alive_and_expectations_match_lifetimes(
    cdnow: Data, fitted: dict[str, object], name: str
) -> None:
    model, params = MODELS[name], fitted[name]
    theirs = oracle(model, params)
    x, t_x, T = cdnow
    want = theirs.conditional_probability_alive(x, t_x, T)
    assert np.max(np.abs(model.p_alive(params, x, t_x, T) - want)) < 1e-6
    for weeks in (30 / 7, 90 / 7, 39.0):
        want = theirs.conditional_expected_number_of_purchases_up_to_time(weeks, x, t_x, T)
        got = model.expected_purchases(params, weeks, x, t_x, T)
        assert np.max(np.abs(got - want)) < 1e-6


@pytest.mark.parametrize("name", ["mbgnbd", "paretonbd"])
def test_log_likelihood_matches_lifetimes(
    cdnow: Data, fitted: dict[str, object], name: str
) -> None:
    model, params = MODELS[name], fitted[name]
    theirs = oracle(model, params)
    logs = np.log(list(params.as_dict().values()))  # type: ignore[attr-defined]
    ones = np.ones_like(cdnow[0])
    if name == "mbgnbd":
        want = theirs._negative_log_likelihood(logs, *cdnow, ones, 0.0)
    else:
        want = theirs._negative_log_likelihood(np.exp(logs), *cdnow, ones, 0.0) / len(ones)
    got = -float(np.mean(model.log_likelihood(params, *cdnow)))
    assert got == pytest.approx(want, rel=1e-9)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_scalar_calls_equal_the_array_call(
    cdnow: Data, fitted: dict[str, object], name: str
) -> None:
    model, params = MODELS[name], fitted[name]
    x, t_x, T = (c[:40] for c in cdnow)
    whole = model.p_alive(params, x, t_x, T)
    one_by_one = [
        model.p_alive(params, [a], [b], [c])[0] for a, b, c in zip(x, t_x, T, strict=True)
    ]
    assert np.allclose(whole, one_by_one, rtol=1e-12, atol=0)


@pytest.mark.parametrize("name", MODEL_NAMES)
@pytest.mark.parametrize(
    ("x", "t_x", "T"),
    [(0, 0.0, 0.0), (0, 0.0, 30.0), (1, 1.0, 40.0), (5, 30.0, 31.0), (40, 70.0, 70.0)],
)
def test_p_alive_is_a_probability(
    fitted: dict[str, object], name: str, x: int, t_x: float, T: float
) -> None:
    value = float(MODELS[name].p_alive(fitted[name], [x], [t_x], [T])[0])
    assert 0.0 <= value <= 1.0


@pytest.mark.parametrize("name", ["mbgnbd", "paretonbd"])
def test_a_silent_one_time_buyer_is_not_certainly_alive(
    fitted: dict[str, object], name: str
) -> None:
    model, params = MODELS[name], fitted[name]
    values = model.p_alive(params, [0, 0, 0], [0.0, 0.0, 0.0], [1.0, 20.0, 60.0])
    assert 1.0 > values[0] > values[1] > values[2] > 0.0
    # BG/NBD, by contrast, trusts every one-time buyer
    bg = MODELS["bgnbd"].p_alive(fitted["bgnbd"], [0, 0], [0.0, 0.0], [1.0, 60.0])
    assert list(bg) == [1.0, 1.0]


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_expected_purchases_grow_with_the_horizon(fitted: dict[str, object], name: str) -> None:
    model, params = MODELS[name], fitted[name]
    short, long = (
        float(model.expected_purchases(params, t, [2], [20.0], [30.0])[0]) for t in (4, 13)
    )
    assert 0 < short < long


def test_params_round_trip_through_a_mapping(fitted: dict[str, object]) -> None:
    for name in MODEL_NAMES:
        params = fitted[name]
        assert MODELS[name].params(params.as_dict()) == params  # type: ignore[attr-defined]
