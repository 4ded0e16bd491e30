"""The read commands start without the numerics, Faust or the Kafka clients: `retention
customer`, `at-risk`, `metrics` and `status` load only what they use (docs/developing.md)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
HEAVY = ("scipy", "numpy", "faust", "aiokafka", "pandas", "matplotlib")

ONE_CUSTOMER = """
from datetime import UTC, date, datetime
from processors.evaluator import evaluate
from processors.fits import Fit, SpendFit
from processors.lifecycle import LifecyclePolicy
from processors.model_params import GammaGammaParams, MbgNbdParams
from processors.risk import RiskPolicy
from processors.state import CustomerState

state = CustomerState(
    customer_id="c", orders=3, placed_micros=90_000_000,
    orders_by_day={19_000: 1, 19_030: 1, 19_090: 1},
)
spend = SpendFit(GammaGammaParams(6.2, 3.7, 15.4), 0.1, 9)
# a fit like CDNOW's, and one like the demo's (a near 0: nobody drops out)
for params in (MbgNbdParams(0.525, 6.183, 0.891, 1.614), MbgNbdParams(2.4, 6.0, 3e-14, 1.5e6)):
    fit = Fit(params, date(2022, 3, 1), 9, "mbgnbd", spend=spend)
    ev = evaluate(state, datetime(2022, 3, 2, tzinfo=UTC), RiskPolicy(), LifecyclePolicy(), fit, None)
    assert ev.p_alive is not None and ev.cltv is not None
"""


def loaded_by(code: str) -> set[str]:
    """The top-level packages among :data:`HEAVY` that ``code`` loads, run in a fresh
    interpreter on this checkout."""
    report = f"import json, sys\nprint(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))"
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    done = subprocess.run(
        [sys.executable, "-c", f"{code}\n{report}"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": path},
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return set(json.loads(done.stdout.splitlines()[-1]))


@pytest.mark.parametrize(
    ("code", "allowed"),
    [
        # the command line and its parser, as for --help
        ("import retention.cli\nretention.cli.build_parser()", set()),
        # customer, at-risk, metrics: their queries and the tables they print
        ("import retention.cli, retention.queries, retention.report", set()),
        # status asks the broker for its end offsets: the Kafka client, nothing more
        ("import retention.cli, retention.status", {"aiokafka"}),
        # one customer's outlook and evaluation, as `retention customer` computes them
        (ONE_CUSTOMER, set()),
    ],
    ids=["parser", "read-queries", "status", "one-customer"],
)
def test_read_paths_leave_the_heavy_packages_unloaded(code: str, allowed: set[str]) -> None:
    assert loaded_by(code) <= allowed


def test_the_check_sees_a_heavy_import() -> None:
    # the worker's chunked outlooks are numpy's: the check would notice them
    assert {"numpy", "scipy"} <= loaded_by("import processors.forecast")
