"""The pages a user reads (README.md, docs/, the runbook) and the ``retention`` commands
their shell blocks show, for the tests that hold the pages to the code."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PAGES = [
    ROOT / "README.md",
    *sorted((ROOT / "docs").glob("*.md")),
    ROOT / "prometheus" / "runbook.md",
]
SHELLS = ("", "sh", "bash", "console")


def fenced_blocks(text: str, languages: tuple[str, ...] = SHELLS) -> list[str]:
    """The contents of the fenced blocks in one of ``languages`` ("" for none given)."""
    blocks: list[str] = []
    current: list[str] | None = None
    language = ""
    for line in text.splitlines():
        if line.startswith("```"):
            if current is None:
                current, language = [], line[3:].strip()
            else:
                if language in languages:
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
        for block in fenced_blocks(page.read_text()):
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
