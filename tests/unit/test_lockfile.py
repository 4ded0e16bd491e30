"""requirements.lock, from which the image installs its dependencies, cannot drift from
pyproject.toml: every runtime dependency (and each package an extra of it asks for) and
the build backend are pinned there, to a version the project accepts, with hashes."""

from __future__ import annotations

import re
import shlex
import tomllib
from importlib.metadata import PackageNotFoundError, requires
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[2]
LOCK = ROOT / "requirements.lock"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def parse_lock(text: str) -> dict[str, tuple[Version, list[str]]]:
    """name → (pinned version, hashes) of a pip requirements file in --require-hashes form."""
    pins: dict[str, tuple[Version, list[str]]] = {}
    for entry in re.split(r"\n(?=\S)", text.replace("\\\n", " ")):
        line = entry.split("#", 1)[0].strip()
        if not line:
            continue
        words = shlex.split(line)
        requirement = Requirement(words[0])
        hashes = [w.removeprefix("--hash=") for w in words[1:] if w.startswith("--hash=")]
        (spec,) = requirement.specifier
        assert spec.operator == "==", f"{words[0]}: pin with ==, not {spec.operator}"
        pins[canonicalize_name(requirement.name)] = (Version(spec.version), hashes)
    return pins


def needed() -> list[Requirement]:
    """The runtime dependencies, what their extras pull in, and the build backend."""
    direct = [Requirement(r) for r in PYPROJECT["project"]["dependencies"]]
    out = [*direct, *(Requirement(r) for r in PYPROJECT["build-system"]["requires"])]
    for requirement in direct:
        if not requirement.extras:
            continue
        try:
            declared = requires(requirement.name) or []
        except PackageNotFoundError:
            pytest.fail(f"{requirement.name} is not installed: make install", pytrace=False)
        for line in declared:
            extra_requirement = Requirement(line)
            marker = extra_requirement.marker
            if marker and any(marker.evaluate({"extra": e}) for e in requirement.extras):
                extra_requirement.marker = None
                out.append(extra_requirement)
    return out


PINS = parse_lock(LOCK.read_text())


@pytest.mark.parametrize("requirement", needed(), ids=str)
def test_every_dependency_is_pinned_to_an_accepted_version(requirement: Requirement) -> None:
    name = canonicalize_name(requirement.name)
    assert name in PINS, f"{requirement} is missing from requirements.lock: run `make lock`"
    version, _ = PINS[name]
    assert requirement.specifier.contains(version, prereleases=True), (
        f"requirements.lock pins {name}=={version}, outside {requirement}: run `make lock`"
    )


def test_every_pin_carries_its_hashes() -> None:
    assert len(PINS) > 20, PINS
    for name, (_, hashes) in PINS.items():
        assert hashes, f"{name} has no hash"
        assert all(re.fullmatch(r"sha256:[0-9a-f]{64}", h) for h in hashes), (name, hashes)


def test_the_lock_parser_reads_pins_and_refuses_ranges() -> None:
    text = (
        "a-b==1.2 \\\n    --hash=sha256:"
        + "0" * 64
        + "\n    # via c\nd==3 ; python_version >= '3.11' \\\n    --hash=sha256:"
        + "1" * 64
        + "\n"
    )
    assert parse_lock(text) == {
        "a-b": (Version("1.2"), ["sha256:" + "0" * 64]),
        "d": (Version("3"), ["sha256:" + "1" * 64]),
    }
    with pytest.raises(AssertionError, match="pin with =="):
        parse_lock("e>=1 --hash=sha256:" + "2" * 64 + "\n")


def test_the_image_installs_from_the_lock_with_hashes() -> None:
    steps = [
        line.strip()
        for line in (ROOT / "Dockerfile").read_text().replace("\\\n", " ").splitlines()
        if line.strip().startswith("RUN") and "pip install" in line
    ]
    assert steps, "the Dockerfile installs nothing with pip?"
    assert "--require-hashes -r requirements.lock" in steps[0], steps
    # the project itself, after the lock: nothing beyond what the lock pinned
    for step in steps[1:]:
        assert "--no-deps" in step and "--no-build-isolation" in step, step
