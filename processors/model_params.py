"""The fitted parameters of each model, as plain records: names, fields and titles.

The models' numerics (:mod:`processors.bgnbd`, :mod:`processors.mbgnbd`,
:mod:`processors.pareto_nbd`, :mod:`processors.gamma_gamma`) need numpy and scipy; a stored
fit is read back into these records without them, so a command that only reads one
(``retention customer``) does not load the numerics. Each model module exports its own
record under the same name.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any, Literal, get_args

ModelName = Literal["bgnbd", "mbgnbd", "paretonbd"]
MODEL_NAMES: tuple[ModelName, ...] = get_args(ModelName)


@dataclass(frozen=True, slots=True)
class BgNbdParams:
    r: float
    alpha: float
    a: float
    b: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class MbgNbdParams:
    r: float
    alpha: float
    a: float
    b: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class ParetoNbdParams:
    r: float
    alpha: float
    s: float
    beta: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class GammaGammaParams:
    p: float
    q: float
    v: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


AliveParams = BgNbdParams | MbgNbdParams | ParetoNbdParams

PARAMS_TYPES: dict[ModelName, type[AliveParams]] = {
    "bgnbd": BgNbdParams,
    "mbgnbd": MbgNbdParams,
    "paretonbd": ParetoNbdParams,
}
TITLES: dict[ModelName, str] = {"bgnbd": "BG/NBD", "mbgnbd": "MBG/NBD", "paretonbd": "Pareto/NBD"}


def param_names(model: ModelName) -> tuple[str, ...]:
    return tuple(f.name for f in fields(PARAMS_TYPES[model]))


def params_of(model: ModelName, raw: Mapping[str, Any]) -> AliveParams:
    """``model``'s parameters from a mapping that holds at least their names."""
    return PARAMS_TYPES[model](*(float(raw[name]) for name in param_names(model)))
