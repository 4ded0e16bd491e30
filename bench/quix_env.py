"""The virtual environment the Quix Streams peer runs in (``bench/quix_peer.py``).

Quix Streams is no dependency of the tracker: the benchmark makes a virtual environment of
its own, ``bench/.venv-quix``, the first time the peer is asked for, and installs the pinned
version there from PyPI. ``python bench/quix_env.py`` makes it ahead of a run.
"""

from __future__ import annotations

import subprocess
import sys
import venv
from pathlib import Path

QUIX_VERSION = "3.28.1"
REQUIREMENTS = (f"quixstreams=={QUIX_VERSION}", "redis")
VENV_DIR = Path(__file__).with_name(".venv-quix")
PEER_SCRIPT = Path(__file__).with_name("quix_peer.py")


def installed_version(python: Path) -> str | None:
    found = subprocess.run(
        [str(python), "-c", "import importlib.metadata as m; print(m.version('quixstreams'))"],
        capture_output=True,
        text=True,
        check=False,
    )
    return found.stdout.strip() if found.returncode == 0 else None


def quix_python(venv_dir: Path = VENV_DIR) -> Path:
    """The interpreter of the peer's environment, made (or brought to the pinned version)
    when needed."""
    python = venv_dir / "bin" / "python"
    if python.exists() and installed_version(python) == QUIX_VERSION:
        return python
    if not python.exists():
        print(f"making {venv_dir} for the Quix Streams peer", file=sys.stderr)
        venv.EnvBuilder(with_pip=True).create(venv_dir)
    subprocess.run(
        [
            str(python),
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            *REQUIREMENTS,
        ],
        check=True,
    )
    return python


if __name__ == "__main__":
    print(quix_python())
