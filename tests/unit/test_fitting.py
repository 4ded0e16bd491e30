"""The prepared likelihoods and the warm start: the same values as the per-row formulas,
and the same optimum whichever start the search takes."""

from __future__ import annotations

from collections.abc import Callable
from datetime import date

import numpy as np
import pytest

from processors import bgnbd, gamma_gamma, mbgnbd, pareto_nbd
from processors.alive_models import MODELS, ModelName
from processors.fit_grid import GridRows, _warm, fit_alive, fit_grid, warm_start
from processors.fitting import Floats, search, weighted_rows
from processors.forecast import Fit, ModelOptions

Data = tuple[Floats, Floats, Floats]
PREPARED = {"bgnbd": bgnbd, "mbgnbd": mbgnbd, "paretonbd": pareto_nbd}


def simulated(seed: int, customers: int, weeks: int = 78) -> Data:
    """BG/NBD buyers on whole days: rate λ ~ Gamma(0.8, 1/0.4) a week, drop-out chance
    p ~ Beta(1, 3) after each purchase, first purchase on a uniform day; many share
    their (x, t_x, T), as order days make them."""
    rng = np.random.default_rng(seed)
    x, t_x, T = (np.zeros(customers) for _ in range(3))
    for n in range(customers):
        rate, drop = rng.gamma(0.8, 1 / 0.4), rng.beta(1.0, 3.0)
        age = rng.integers(0, weeks * 7) / 7
        at, count, last = 0.0, 0, 0.0
        while True:
            at += rng.exponential(1 / rate)
            if at > age:
                break
            count, last = count + 1, np.floor(at * 7) / 7
            if rng.random() < drop:
                break
        x[n], t_x[n], T[n] = count, last, age
    return x, t_x, T


@pytest.fixture(scope="module")
def data() -> Data:
    return simulated(3, 3000)


@pytest.mark.parametrize("name", list(PREPARED))
@pytest.mark.parametrize(
    "params",
    [
        (1.0, 1.0, 1.0, 1.0),  # a cold start
        (0.25, 4.0, 0.8, 2.5),  # near CDNOW's
        (3.0, 0.05, 12.0, 0.02),  # far out: large odds, tiny alpha
        (0.01, 300.0, 0.1, 80.0),
    ],
)
def test_the_prepared_likelihood_is_the_per_row_one(
    data: Data, name: str, params: tuple[float, ...]
) -> None:
    module = PREPARED[name]
    rows, weights = weighted_rows(*data)
    assert weights.max() > 1  # folded rows carry weights
    logs = np.log(params)
    want = module.negative_log_likelihood(logs, *rows, weights)
    got = module.Likelihood(*rows, weights)(logs)
    assert np.isfinite(want)
    assert got == pytest.approx(want, rel=1e-12)


@pytest.mark.parametrize("name", list(PREPARED))
def test_the_prepared_likelihood_handles_edge_rows(name: str) -> None:
    # one-time buyers (x = 0, t_x = 0), a last purchase on the last day (t_x = T), age 0
    x = np.array([0.0, 0.0, 3.0, 1.0, 5.0])
    t_x = np.array([0.0, 0.0, 2.0, 4.0, 0.5])
    T = np.array([0.0, 9.0, 2.0, 6.0, 30.0])
    weights = np.array([2.0, 1.0, 4.0, 1.0, 3.0])
    module = PREPARED[name]
    logs = np.log([0.5, 3.0, 0.7, 1.5])
    want = module.negative_log_likelihood(logs, x, t_x, T, weights)
    assert module.Likelihood(x, t_x, T, weights)(logs) == pytest.approx(want, rel=1e-12)


def counted(objective: Callable[[Floats], float]) -> tuple[Callable[[Floats], float], list[int]]:
    calls = [0]

    def wrapped(v: Floats) -> float:
        calls[0] += 1
        return objective(v)

    return wrapped, calls


@pytest.mark.parametrize("name", ["mbgnbd", "bgnbd"])
def test_warm_and_cold_starts_reach_the_same_optimum(data: Data, name: str) -> None:
    """A day later every buyer is a day older: the warm search starts from the day
    before's fit, the cold one from all parameters 1, and both land on the same
    parameters within what the stopping rule can tell apart."""
    module = PREPARED[name]
    rows, weights = weighted_rows(*data)
    before = module.Likelihood(*rows, weights)
    x, t_x, T = rows
    later = module.Likelihood(x, t_x, T + 1 / 7, weights)

    previous = search(before, 4, (), name, lambda v: v)
    cold_objective, cold_calls = counted(later)
    cold = search(cold_objective, 4, (), name, lambda v: v)
    warm_objective, warm_calls = counted(later)
    warm = search(warm_objective, 4, (), name, lambda v: v, previous)

    assert not np.allclose(previous, cold, rtol=1e-4)  # the optimum did move
    assert np.allclose(warm, cold, rtol=1e-5, atol=0)
    assert later(np.log(warm)) == pytest.approx(later(np.log(cold)), abs=1e-12)
    assert warm_calls[0] < cold_calls[0] / 2


def grid_of(data: Data) -> GridRows:
    (x, t_x, T), weights = weighted_rows(*data)
    return GridRows(x, t_x, T, weights, len(weights), 0, 0)


def test_a_warm_grid_fit_starts_from_the_stored_fit_of_the_same_model(data: Data) -> None:
    options = ModelOptions("mbgnbd")
    rows = grid_of(data)
    cold = fit_grid(rows, [], date(2024, 6, 1), options)
    start = warm_start(cold, options)
    assert start is not None
    assert start.tolist() == list(cold.params.as_dict().values())
    warm = fit_grid(rows, [], date(2024, 6, 1), options, previous=cold)
    for name, value in cold.params.as_dict().items():
        assert warm.params.as_dict()[name] == pytest.approx(value, rel=1e-5), name
    assert warm.log_likelihood == pytest.approx(cold.log_likelihood, rel=1e-12)


def stored(model: ModelName, values: list[float]) -> Fit:
    return Fit(MODELS[model].params_type(*values), date(2024, 6, 1), 10, model)


@pytest.mark.parametrize(
    ("previous", "model"),
    [
        (None, "mbgnbd"),  # the first fit
        (stored("bgnbd", [0.3, 4.0, 0.8, 2.0]), "mbgnbd"),  # another model's parameters
        (stored("mbgnbd", [0.3, float("nan"), 0.8, 2.0]), "mbgnbd"),  # unusable
        (stored("mbgnbd", [0.3, 0.0, 0.8, 2.0]), "mbgnbd"),  # log 0
        (stored("paretonbd", [0.3, float("inf"), 0.8, 2.0]), "paretonbd"),
    ],
)
def test_a_cold_start_when_no_usable_fit_of_the_model_is_stored(
    previous: Fit | None, model: ModelName
) -> None:
    assert warm_start(previous, ModelOptions(model)) is None


@pytest.mark.parametrize(
    "objective",
    [
        lambda v: float("inf"),  # nowhere finite
        lambda v: float(np.random.default_rng().random()),  # noise: never settles
    ],
)
def test_a_warm_search_that_fails_is_given_up(objective: Callable[[Floats], float]) -> None:
    start = np.array([0.5, 2.0, 0.7, 1.5])
    assert _warm(objective, 4, "test", lambda v: stored("bgnbd", list(v)).params, start) is None


def test_a_warm_search_that_converges_is_kept(data: Data) -> None:
    rows, weights = weighted_rows(*data)
    objective = bgnbd.Likelihood(*rows, weights)
    cold, _ = fit_alive(grid_of(data), ModelOptions("bgnbd"))
    assert isinstance(cold, bgnbd.BgNbdParams)
    start = np.array(list(cold.as_dict().values())) * 1.2
    warm = _warm(objective, 4, "BG/NBD", lambda v: bgnbd.BgNbdParams(*v), start)
    assert isinstance(warm, bgnbd.BgNbdParams)
    for name, value in cold.as_dict().items():
        assert getattr(warm, name) == pytest.approx(value, rel=1e-5), name


@pytest.mark.parametrize("params", [(1.0, 1.0, 1.0), (6.25, 3.74, 15.44), (40.0, 0.2, 900.0)])
def test_the_prepared_spend_likelihood_is_the_per_row_one(params: tuple[float, ...]) -> None:
    rng = np.random.default_rng(8)
    x = rng.integers(1, 12, 2000).astype(np.float64)
    m = np.round(rng.gamma(3.0, 10.0, 2000), 2)
    (rx, rm), weights = weighted_rows(x, m)
    logs = np.log(params)
    want = gamma_gamma.negative_log_likelihood(logs, rx, rm, weights)
    assert gamma_gamma.Likelihood(rx, rm, weights)(logs) == pytest.approx(want, rel=1e-12)
