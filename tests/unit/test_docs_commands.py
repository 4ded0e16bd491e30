"""Every ``retention`` command the README and docs/ show is one the command line takes:
the front door cannot rot while the commands change."""

from __future__ import annotations

import pytest
import yaml

from processors.notify_config import parse_config
from processors.risk import parse_policy
from retention.cli import build_parser
from tests.documented import ROOT, documented_commands, fenced_blocks

COMMANDS = documented_commands()


def test_the_docs_show_commands() -> None:
    pages = {where.split(":", 1)[0] for where, _ in COMMANDS}
    assert len(COMMANDS) >= 20 and "README.md" in pages, pages


@pytest.mark.parametrize(("where", "argv"), COMMANDS, ids=[w for w, _ in COMMANDS])
def test_a_documented_command_is_one_the_cli_takes(where: str, argv: list[str]) -> None:
    try:
        build_parser().parse_args(argv)
    except SystemExit as exc:
        pytest.fail(f"{where}: `retention {' '.join(argv)}` is refused (exit {exc.code})")


def test_the_documented_risk_and_notifications_files_are_accepted() -> None:
    """The YAML examples of docs/alerts.md are read as the tracker reads those files."""
    page = (ROOT / "docs" / "alerts.md").read_text()
    blocks = [yaml.safe_load(b) for b in fenced_blocks(page, ("yaml",))]
    risk = [b for b in blocks if "rules" in b]
    notifications = [b for b in blocks if "subscribers" in b]
    assert risk and notifications
    for data in risk:
        policy = parse_policy(data)
        assert policy.bands.high > policy.bands.medium
    env = {"CRM_HOOK_SECRET": "s" * 32, "SMTP_PASSWORD": "p"}
    for data in notifications:
        config = parse_config(data, env)
        assert any(s.digest is not None for s in config.subscribers)
