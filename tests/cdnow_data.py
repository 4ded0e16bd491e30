"""The CDNOW files shipped in the lifetimes wheel, and their BG/NBD statistics."""

from __future__ import annotations

import importlib.util
from datetime import date
from pathlib import Path

import pytest

from contract.events import Rejection
from processors.forecast import day_number, spend_from_days, stats_from_days
from retention.cdnow import read_cdnow

#: Fader, Hardie and Lee (2005), Table 1 / section 4: the CDNOW sample, 2,357 customers,
#: calibration period through 1997-09-30 (39 weeks).
PUBLISHED = {"r": 0.243, "alpha": 4.414, "a": 0.793, "b": 2.426}
CALIBRATION_END = date(1997, 9, 30)


def cdnow_file(name: str) -> Path:
    spec = importlib.util.find_spec("lifetimes")
    if spec is None or not spec.submodule_search_locations:
        pytest.fail("the CDNOW files ship in the lifetimes wheel: `make install`", pytrace=False)
    return Path(spec.submodule_search_locations[0]) / "datasets" / name


def sample_stats(as_of: date = CALIBRATION_END) -> dict[str, tuple[int, float, float]]:
    """Per customer (x, t_x, T) from the raw sample file, orders through ``as_of``."""
    days: dict[str, list[int]] = {}
    for _, item in read_cdnow(cdnow_file("CDNOW_sample.txt")):
        assert not isinstance(item, Rejection)
        day = day_number(date.fromisoformat(item["ts"][:10]))
        days.setdefault(item["customer_id"], []).append(day)
    out = {}
    for customer, ds in days.items():
        found = stats_from_days(ds, day_number(as_of))
        if found is not None:
            out[customer] = found
    return out


#: Fader and Hardie (2013), "The Gamma-Gamma Model of Monetary Value": the CDNOW sample's
#: repeat buyers in the calibration period.
PUBLISHED_GAMMA_GAMMA = {"p": 6.25, "q": 3.74, "v": 15.44}
#: Batislam, Denizel and Filiztekin (2007), Table 2: MBG/NBD on the same data.
PUBLISHED_MBGNBD = {"r": 0.525, "alpha": 6.183, "a": 0.891, "b": 1.614}
#: Fader, Hardie and Lee (2005), section 4: Pareto/NBD on the same data, and its
#: log-likelihood.
PUBLISHED_PARETO_NBD = {"r": 0.553, "alpha": 10.578, "s": 0.606, "beta": 11.669}
PUBLISHED_PARETO_NBD_LL = -9595.0


def sample_spend(as_of: date = CALIBRATION_END) -> dict[str, float]:
    """Per customer the mean value of its repeat purchase days through ``as_of`` (0 for a
    one-time buyer): amounts summed per day, the first day left out, as lifetimes'
    ``summary_data_from_transaction_data`` computes ``monetary_value``."""
    amounts: dict[str, dict[int, float]] = {}
    for _, item in read_cdnow(cdnow_file("CDNOW_sample.txt")):
        assert not isinstance(item, Rejection)
        day = day_number(date.fromisoformat(item["ts"][:10]))
        by_day = amounts.setdefault(item["customer_id"], {})
        by_day[day] = by_day.get(day, 0.0) + float(item["amount"])
    limit = day_number(as_of)
    return {c: spend_from_days(days, limit) for c, days in amounts.items() if min(days) <= limit}
