"""Reading the risk rules file named by ``RETENTION_RISK_FILE``.

The rules themselves, their defaults and their validation are pure
(:func:`processors.risk.parse_policy`); this module only opens and parses the file, so that
the worker's evaluator, ``retention at-risk`` and the backtest read it the same way.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from processors.risk import RiskPolicy, parse_policy


def load_policy(path: Path | None) -> RiskPolicy:
    """The defaults, overridden by whatever the YAML file at ``path`` sets (none: defaults)."""
    if path is None:
        return RiskPolicy()
    import yaml  # only with a file: the read commands mostly run on the defaults

    data: Any = yaml.safe_load(path.read_text())
    return parse_policy(data)
