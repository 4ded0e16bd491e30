"""A command whose reader goes away (`retention export ... | head`) ends quietly."""

from __future__ import annotations

import subprocess
import sys

from retention.cli import SIGPIPE_EXIT

# a command that writes far more than a pipe holds, run through the real entry point
COMMAND = """
import argparse, sys
from retention import cli

def rows(args):
    for i in range(200_000):
        print("row", i)
    return 0

parser = argparse.ArgumentParser()
parser.add_argument("--log-level", default="warn")
parser.set_defaults(func=rows)
cli.build_parser = lambda: parser
sys.exit(cli.main([]))
"""


def test_a_closed_pipe_ends_the_command_without_a_traceback() -> None:
    with subprocess.Popen(
        [sys.executable, "-c", COMMAND], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    ) as proc:
        assert proc.stdout is not None and proc.stderr is not None
        assert proc.stdout.readline() == b"row 0\n"
        proc.stdout.close()  # as `head -1` does once it has its line
        errors = proc.stderr.read().decode()
        code = proc.wait(timeout=60)
    assert code == SIGPIPE_EXIT, errors
    assert errors == ""
