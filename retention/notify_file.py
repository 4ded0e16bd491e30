"""Reading the notifications file (``--config`` or ``RETENTION_NOTIFICATIONS_FILE``).

What the file may hold and how it is validated is pure (:mod:`processors.notify_config`);
this module opens and parses it, and names the file in every error.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import yaml

from processors.notify_config import NotifyConfig, NotifyConfigError, parse_config


def load_config(path: Path, environ: Mapping[str, str] | None = None) -> NotifyConfig:
    """Read ``notifications.yml``; secrets named by ``*_env`` come from ``environ``."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise NotifyConfigError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise NotifyConfigError(f"{path}: not valid YAML: {exc}") from exc
    return parse_config(data, environ, str(path))
