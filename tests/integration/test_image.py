"""What `docker build` would see and copy: no secret may reach the context or the image.

No Docker engine is needed: the build context is the repository minus what .dockerignore
excludes, computed here with Docker's rules (as documented for .dockerignore and
implemented by moby's patternmatcher):

- ``#`` starts a comment; blank lines are ignored; a leading ``/`` is dropped and the
  pattern cleaned like a path (a trailing ``/`` means nothing more).
- ``*`` matches any run of characters but ``/``, ``?`` one such character, ``[...]`` a
  class; ``**`` any number of directories, zero included.
- A pattern that matches a directory excludes everything below it.
- ``!`` makes an exception; the last pattern that matches a path decides.
"""

from __future__ import annotations

import os
import posixpath
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

#: Files a user is told to create next to the sources, or that `retention up` writes there
PLANTED_SECRETS = [
    "secrets/smtp_password",
    "secrets/kafka/client.key",
    ".env",
    ".env.production",
    "grafana/.env",
    "deploy/secrets/redis_password",
    ".retention/redis.password",
    ".retention/services.json",
    ".retention/redis/appendonlydir/appendonly.aof.1.incr.aof",
    "certs/tracker.pem",
]


def is_secret(path: str) -> bool:
    parts = path.split("/")
    name = parts[-1]
    return (
        "secrets" in parts[:-1]
        or ".retention" in parts[:-1]
        or name == ".env"
        or name.startswith(".env.")
        or name.endswith((".pem", ".key", ".password"))
    )


@dataclass(frozen=True)
class Pattern:
    regex: re.Pattern[str]
    exception: bool
    text: str


def _translate(pattern: str) -> str:
    out, i = "^", 0
    while i < len(pattern):
        ch = pattern[i]
        if ch == "*":
            if pattern[i + 1 : i + 2] == "*":
                i += 2
                if pattern[i : i + 1] == "/":
                    i += 1
                out += ".*" if i >= len(pattern) else "(.*/)?"
                continue
            out += "[^/]*"
        elif ch == "?":
            out += "[^/]"
        elif ch == "[":
            end = pattern.find("]", i + 1)
            if end == -1:
                raise ValueError(f"unclosed class in {pattern!r}")
            body = pattern[i + 1 : end]
            out += "[" + ("^" + body[1:] if body.startswith(("!", "^")) else body) + "]"
            i = end
        elif ch == "\\" and i + 1 < len(pattern):
            i += 1
            out += re.escape(pattern[i])
        else:
            out += re.escape(ch)
        i += 1
    return out + "$"


def parse_dockerignore(text: str) -> list[Pattern]:
    patterns = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        exception = line.startswith("!")
        if exception:
            line = line[1:].strip()
        cleaned = posixpath.normpath(line).lstrip("/")
        if cleaned in ("", "."):
            continue
        patterns.append(Pattern(re.compile(_translate(cleaned)), exception, raw))
    return patterns


def excluded(path: str, patterns: list[Pattern]) -> bool:
    """Whether ``path`` (relative, with ``/``) stays out of the build context."""
    parents = ["/".join(path.split("/")[:n]) for n in range(1, path.count("/") + 1)]
    verdict = False
    for pattern in patterns:
        if pattern.regex.match(path) or any(pattern.regex.match(p) for p in parents):
            verdict = not pattern.exception
    return verdict


def repository_files(patterns: list[Pattern]) -> list[str]:
    """Files under the repository root, skipping directories excluded outright."""
    prune = not any(p.exception for p in patterns)
    found = []
    for top, dirs, files in os.walk(ROOT):
        rel = Path(top).relative_to(ROOT).as_posix()
        prefix = "" if rel == "." else rel + "/"
        if prune:
            dirs[:] = [d for d in dirs if not excluded(prefix + d, patterns)]
        found += [prefix + f for f in files]
    return found


def build_context(extra: list[str] = ()) -> list[str]:  # type: ignore[assignment]
    patterns = parse_dockerignore((ROOT / ".dockerignore").read_text())
    return sorted(f for f in {*repository_files(patterns), *extra} if not excluded(f, patterns))


@pytest.mark.parametrize(
    ("patterns", "path", "out"),
    [
        ("secrets/", "secrets/smtp_password", True),  # a directory takes its contents
        ("/secrets", "secrets/a/b", True),  # a leading / changes nothing
        ("secrets/", "app/secrets/x", False),  # patterns are anchored at the root
        ("**/secrets", "app/secrets/x", True),
        # ** matches zero directories too (BuildKit; the legacy builder compared only the
        # parent at the pattern's depth, which is why .dockerignore also lists secrets/)
        ("**/secrets", "secrets/x", True),
        ("*/temp*", "somedir/temporary.txt", True),
        ("*/temp*", "temp/x", False),  # * does not cross a /
        ("*/temp*", "a/b/temporary.txt", False),
        ("temp?", "temp1", True),
        ("temp?", "temp12", False),
        ("**/*.py[cod]", "a/b/c.pyc", True),
        ("**/*.py[cod]", "a/b/c.py", False),
        ("*.md\n!README.md", "README.md", False),  # the last matching pattern decides
        ("*.md\n!README.md", "CHANGES.md", True),
        ("!README.md\n*.md", "README.md", True),
        ("# secrets/\n", "secrets/x", False),  # a comment
        ("docs/**", "docs/a/b.txt", True),
        ("a/**/b", "a/b", True),
        ("a/**/b", "a/x/y/b", True),
        (".env", ".env", True),
        (".env", "sub/.env", False),
    ],
)
def test_matching_follows_docker(patterns: str, path: str, out: bool) -> None:
    assert excluded(path, parse_dockerignore(patterns)) is out


def test_no_secret_reaches_the_build_context() -> None:
    context = build_context(PLANTED_SECRETS)
    assert [f for f in context if is_secret(f)] == []
    # what the image needs is still there
    for needed in ("pyproject.toml", "README.md", "retention/cli.py", "store/batch_apply.lua"):
        assert needed in context


def test_the_checks_see_a_secret_when_the_ignore_file_lets_it_through() -> None:
    patterns = parse_dockerignore("secrets/\n.retention/\n")
    leaked = [f for f in PLANTED_SECRETS if not excluded(f, patterns) and is_secret(f)]
    assert ".env" in leaked and "deploy/secrets/redis_password" in leaked


def copy_sources() -> list[str]:
    """The sources of every COPY and ADD instruction in the Dockerfile."""
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    sources = []
    for line in text.splitlines():
        words = shlex.split(line.strip(), comments=True)
        if words and words[0].upper() in ("COPY", "ADD"):
            args = [w for w in words[1:] if not w.startswith("--")]
            sources += args[:-1]
    return sources


def test_dockerfile_copies_only_what_it_installs() -> None:
    sources = copy_sources()
    assert sources, "the Dockerfile copies nothing?"
    assert not [s for s in sources if is_secret(s + "/x") or is_secret(s)]
    assert "." not in sources and "./" not in sources, "COPY the packages, not the context"
    context = build_context(PLANTED_SECRETS)
    copied = [f for f in context for s in sources if f == s or f.startswith(s.rstrip("/") + "/")]
    assert "retention/stack.py" in copied and "pyproject.toml" in copied
    assert [f for f in copied if is_secret(f)] == []
