"""Gamma-Gamma spend model and predicted CLTV against published CDNOW figures and lifetimes."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest

from processors.alive_models import MODEL_NAMES, MODELS
from processors.cltv import cltv
from processors.gamma_gamma import (
    GammaGammaParams,
    correlation,
    expected_spend,
    fit,
    log_likelihood,
    negative_log_likelihood,
)
from tests.cdnow_data import PUBLISHED_GAMMA_GAMMA, sample_spend, sample_stats

Data = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]


@pytest.fixture(scope="module")
def cdnow() -> Data:
    stats, spend = sample_stats(), sample_spend()
    ids = sorted(stats)
    x, t_x, T = (np.array(c, dtype=float) for c in zip(*(stats[i] for i in ids), strict=True))
    return x, t_x, T, np.array([spend[i] for i in ids])


@pytest.fixture(scope="module")
def fitted(cdnow: Data) -> GammaGammaParams:
    x, _, _, m = cdnow
    return fit(x, m)


@pytest.mark.parametrize("name", ["p", "q", "v"])
def test_fit_reproduces_the_published_cdnow_estimates(fitted: GammaGammaParams, name: str) -> None:
    assert getattr(fitted, name) == pytest.approx(PUBLISHED_GAMMA_GAMMA[name], rel=0.01)


def test_only_repeat_buyers_count(cdnow: Data, fitted: GammaGammaParams) -> None:
    x, _, _, m = cdnow
    assert int(np.sum(x > 0)) == 946  # the note's repeat buyers
    # one-time buyers carry no information on spend: adding more changes nothing
    more = fit(np.concatenate([x, np.zeros(500)]), np.concatenate([m, np.full(500, 99.0)]))
    for name in ("p", "q", "v"):
        assert getattr(more, name) == pytest.approx(getattr(fitted, name), rel=1e-6)


def test_frequency_and_spend_are_nearly_uncorrelated(cdnow: Data) -> None:
    x, _, _, m = cdnow
    value = correlation(x, m)
    assert value is not None and abs(value) < 0.2  # the model's assumption holds on CDNOW
    assert correlation([1, 2], [5.0, 5.0]) is None


def oracle(params: GammaGammaParams):  # type: ignore[no-untyped-def]
    from lifetimes import GammaGammaFitter

    model = GammaGammaFitter()
    model.params_ = pd.Series(params.as_dict())
    return model


def test_expected_spend_matches_lifetimes(cdnow: Data, fitted: GammaGammaParams) -> None:
    x, _, _, m = cdnow
    want = oracle(fitted).conditional_expected_average_profit(x, m)
    got = expected_spend(fitted, x, m)
    assert np.max(np.abs(got - want)) < 1e-6
    # a one-time buyer gets the population mean whatever its own first amount
    mean = fitted.p * fitted.v / (fitted.q - 1)
    assert expected_spend(fitted, [0, 0], [3.0, 300.0]) == pytest.approx([mean, mean])


def test_log_likelihood_matches_lifetimes(cdnow: Data, fitted: GammaGammaParams) -> None:
    x, _, _, m = cdnow
    keep = x > 0
    logs = np.log([fitted.p, fitted.q, fitted.v])
    weights = np.ones(int(keep.sum()))
    want = oracle(fitted)._negative_log_likelihood(logs, x[keep], m[keep], weights, 0.0)
    assert negative_log_likelihood(logs, x[keep], m[keep], weights) == pytest.approx(want)
    assert np.all(np.isfinite(log_likelihood(fitted, x[keep], m[keep])))


def in_days(name: str, params: object):  # type: ignore[no-untyped-def]
    """The same model in days (lifetimes' freq='D'): the rate scales grow sevenfold."""
    from lifetimes import BetaGeoFitter, ModifiedBetaGeoFitter, ParetoNBDFitter

    raw = dict(params.as_dict())  # type: ignore[attr-defined]
    raw["alpha"] *= 7
    if "beta" in raw:
        raw["beta"] *= 7
    fitter = {"bgnbd": BetaGeoFitter, "mbgnbd": ModifiedBetaGeoFitter}.get(name, ParetoNBDFitter)()
    fitter.params_ = pd.Series(raw)
    fitter.predict = fitter.conditional_expected_number_of_purchases_up_to_time
    return fitter


@pytest.mark.parametrize("name", MODEL_NAMES)
@pytest.mark.parametrize(("months", "discount"), [(12, 0.01), (3, 0.0), (24, 0.05)])
def test_cltv_matches_lifetimes(
    cdnow: Data, fitted: GammaGammaParams, name: str, months: int, discount: float
) -> None:
    x, t_x, T, m = cdnow
    model = MODELS[name]
    params = model.fit(x, t_x, T)
    spend = expected_spend(fitted, x, m)
    got = cltv(lambda t: model.expected_purchases(params, t, x, t_x, T), spend, months, discount)
    series = {k: pd.Series(v) for k, v in (("x", x), ("t_x", t_x * 7), ("T", T * 7), ("m", m))}
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        # lifetimes' Pareto/NBD takes log(0) on its way for customers with t_x = T
        warnings.simplefilter("ignore", RuntimeWarning)
        want = oracle(fitted).customer_lifetime_value(
            in_days(name, params), series["x"], series["t_x"], series["T"], series["m"],
            time=months, discount_rate=discount, freq="D",
        )  # fmt: skip
    assert np.max(np.abs(got - want.to_numpy())) < 1e-6


def test_cltv_without_discount_is_spend_times_purchases(fitted: GammaGammaParams) -> None:
    weeks: list[float] = []

    def purchases(t: float) -> np.ndarray:
        weeks.append(t)
        return np.array([t / 10.0])

    value = cltv(purchases, [20.0], 6, 0.0)
    assert value == pytest.approx([20.0 * 6 * 30 / 7 / 10])
    assert weeks[-1] == pytest.approx(6 * 30 / 7)
    assert cltv(purchases, [20.0], 0, 0.01) == pytest.approx([0.0])
    discounted = cltv(purchases, [20.0], 6, 0.02)
    assert 0 < discounted[0] < value[0]


def test_no_repeat_buyer_cannot_be_fitted() -> None:
    with pytest.raises(ValueError):
        fit([0, 0], [0.0, 0.0])
