"""The P(alive) models the tracker can use, behind one interface (``RETENTION_ALIVE_MODEL``).

- ``bgnbd``: BG/NBD (:mod:`processors.bgnbd`). A customer can only drop out right after a
  repeat purchase, so every one-time buyer has P(alive) = 1.
- ``mbgnbd``: MBG/NBD (:mod:`processors.mbgnbd`). Drop-out may also happen at the first
  purchase, so a silent one-time buyer's P(alive) falls; as cheap to fit as BG/NBD.
- ``paretonbd``: Pareto/NBD (:mod:`processors.pareto_nbd`). Death at any moment; slower
  to fit (its likelihood needs the hypergeometric function).

Each gives a fit over (x, t_x, T), the per-customer log-likelihood, P(alive) and
expected purchases in the next ``t`` weeks, with the same units.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from typing import Any

from numpy.typing import ArrayLike

from processors import bgnbd, mbgnbd, pareto_nbd
from processors.fitting import Floats
from processors.model_params import MODEL_NAMES as MODEL_NAMES
from processors.model_params import TITLES
from processors.model_params import ModelName as ModelName


@dataclass(frozen=True, slots=True)
class AliveModel:
    name: ModelName
    title: str
    params_type: type[Any]
    fit: Callable[[ArrayLike, ArrayLike, ArrayLike], Any]
    log_likelihood: Callable[[Any, ArrayLike, ArrayLike, ArrayLike], Floats]
    p_alive: Callable[[Any, ArrayLike, ArrayLike, ArrayLike], Floats]
    expected_purchases: Callable[[Any, float, ArrayLike, ArrayLike, ArrayLike], Floats]

    @property
    def param_names(self) -> tuple[str, ...]:
        return tuple(f.name for f in fields(self.params_type))

    def params(self, raw: Mapping[str, Any]) -> Any:
        """This model's parameters from a mapping that holds at least their names."""
        return self.params_type(*(float(raw[name]) for name in self.param_names))


MODELS: dict[ModelName, AliveModel] = {
    "bgnbd": AliveModel(
        "bgnbd",
        TITLES["bgnbd"],
        bgnbd.BgNbdParams,
        bgnbd.fit,
        bgnbd.log_likelihood,
        bgnbd.p_alive,
        bgnbd.expected_purchases,
    ),
    "mbgnbd": AliveModel(
        "mbgnbd",
        TITLES["mbgnbd"],
        mbgnbd.MbgNbdParams,
        mbgnbd.fit,
        mbgnbd.log_likelihood,
        mbgnbd.p_alive,
        mbgnbd.expected_purchases,
    ),
    "paretonbd": AliveModel(
        "paretonbd",
        TITLES["paretonbd"],
        pareto_nbd.ParetoNbdParams,
        pareto_nbd.fit,
        pareto_nbd.log_likelihood,
        pareto_nbd.p_alive,
        pareto_nbd.expected_purchases,
    ),
}
