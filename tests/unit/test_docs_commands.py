"""Every ``retention`` command the README and docs/ show is one the command line takes:
the front door cannot rot while the commands change."""

from __future__ import annotations

import pytest

from retention.cli import build_parser
from tests.documented import documented_commands

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
