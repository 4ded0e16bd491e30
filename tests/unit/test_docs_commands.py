"""Every ``retention`` command the README and docs/ show is one the command line takes:
the front door cannot rot while the commands change."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from retention.cli import build_parser

ROOT = Path(__file__).resolve().parents[2]
PAGES = [
    ROOT / "README.md",
    *sorted((ROOT / "docs").glob("*.md")),
    ROOT / "prometheus" / "runbook.md",
]
SHELLS = ("", "sh", "bash", "console")


def shell_blocks(text: str) -> list[str]:
    """The contents of the fenced blocks in a shell language (or none given)."""
    blocks: list[str] = []
    current: list[str] | None = None
    language = ""
    for line in text.splitlines():
        if line.startswith("```"):
            if current is None:
                current, language = [], line[3:].strip()
            else:
                if language in SHELLS:
                    blocks.append("\n".join(current))
                current = None
        elif current is not None:
            current.append(line)
    return blocks


def documented_commands() -> list[tuple[str, list[str]]]:
    """(where, argv) of every ``retention ...`` line in a shell block, continuation lines
    joined, comments and ``[optional ...]`` parts left out."""
    found: list[tuple[str, list[str]]] = []
    for page in PAGES:
        for block in shell_blocks(page.read_text()):
            for line in block.replace("\\\n", " ").splitlines():
                line = line.split(" #", 1)[0].strip()
                line = re.sub(r"\[[^\]]*\]", "", line)
                if not re.search(r"(^|[\s/])retention\s", line):
                    continue
                words = shlex.split(line, posix=True)
                for i, word in enumerate(words):
                    if word.endswith("retention") and i + 1 < len(words):
                        argv = words[i + 1 :]
                        for stop in ("|", "&&", ";", ">"):
                            if stop in argv:
                                argv = argv[: argv.index(stop)]
                        found.append((f"{page.relative_to(ROOT)}: {line}", argv))
                        break
    return found


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
