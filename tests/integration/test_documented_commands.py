"""Every ``retention`` command the README and docs/ show, run as shown: in a shop's folder,
against the stack ``retention up`` started there, one after the other, each expected to
succeed. A command added to a page is run here without touching this file.

The files the commands name are made first: ``events.jsonl`` (a few customers, one of them
``C``), ``notifications.yml`` (the subscriber example of docs/alerts.md, as printed) and
``CDNOW_sample.txt`` and ``CDNOW_master.txt`` (both the CDNOW sample lifetimes ships, in
the same format: the master file only takes longer).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import lifetimes
import pytest
from redis import Redis

from retention.services import Services
from tests.documented import ROOT, documented_commands, fenced_blocks
from tests.integration.cli_session import read_until

#: commands that keep running until stopped: started, seen alive, then stopped with Ctrl-C
STAY_UP = {"worker", "evaluator", "ingest", "metrics-server", "demo"}
#: what a command waits for on its standard input (rebuild asks before it wipes)
ANSWERS = {"rebuild": "y\n", "forget": "y\n"}


def shop_events(now: datetime) -> list[dict[str, object]]:
    events: list[dict[str, object]] = []
    for n, customer in enumerate(("C", "D", "E")):
        for k in range(3 + n):
            day = now - timedelta(days=200 - 40 * k - 7 * n)
            events.append(
                {
                    "event_id": f"{customer}-o{k}",
                    "customer_id": customer,
                    "ts": day.isoformat(),
                    "type": "order",
                    "amount": 20 + 5 * k,
                }
            )
    events.append({"event_id": "C-l1", "customer_id": "C", "ts": now.isoformat(), "type": "login"})
    return events


def subscribers_example() -> str:
    page = (ROOT / "docs" / "alerts.md").read_text()
    blocks = [b for b in fenced_blocks(page, ("yaml",)) if "subscribers:" in b]
    assert blocks, "docs/alerts.md shows no notifications file"
    return blocks[0] + "\n"


def env() -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if k not in ("KAFKA_BOOTSTRAP", "REDIS_URL")}
    return {**base, "CRM_HOOK_SECRET": "s" * 32, "SMTP_PASSWORD": "p"}


def command(argv: list[str], shop: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "retention.cli", *argv],
        cwd=shop,
        input=ANSWERS.get(argv[0], ""),
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env(),
    )


def until_ok(argv: list[str], shop: Path, seconds: float) -> subprocess.CompletedProcess[str]:
    """Run a reading command until it succeeds: the worker applies what was sent a moment
    after ``produce`` returns."""
    deadline = time.monotonic() + seconds
    result = command(argv, shop)
    while result.returncode != 0 and time.monotonic() < deadline:
        time.sleep(0.5)
        result = command(argv, shop)
    return result


@pytest.fixture
def shop(tmp_path: Path) -> Iterator[Path]:
    """A folder with the files the pages name and ``retention up`` running in it."""
    folder = tmp_path / "shop"
    folder.mkdir()
    now = datetime.now(UTC).replace(microsecond=0)
    lines = [json.dumps(event) for event in shop_events(now)]
    (folder / "events.jsonl").write_text("\n".join(lines) + "\n")
    (folder / "notifications.yml").write_text(subscribers_example())
    sample = Path(lifetimes.__file__).parent / "datasets" / "CDNOW_sample.txt"
    shutil.copy(sample, folder / "CDNOW_master.txt")
    shutil.copy(sample, folder / "CDNOW_sample.txt")
    up = subprocess.Popen(
        [sys.executable, "-m", "retention.cli", "up"],
        cwd=folder,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env(),
    )
    try:
        read_until(up, "ready in", timeout=60)
        yield folder
        up.send_signal(signal.SIGINT)
        up.wait(40)
        assert up.returncode == 0
    finally:
        if up.poll() is None:
            up.kill()
            up.wait()
        assert up.stdout is not None
        up.stdout.close()
        recorded = Services.read(folder / ".retention")
        for pid in recorded.pids.values() if recorded else ():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def damage(customer: str, shop: Path) -> None:
    """Put the shop where ``restore-customer`` is the way out: the customer's stored state
    overwritten by hand, and the next event for them set aside as unreadable."""
    recorded = Services.read(shop / ".retention")
    assert recorded is not None
    with Redis.from_url(recorded.redis_url) as redis:
        keys = list(redis.scan_iter(match=f"*c:{customer}"))
        assert len(keys) == 1, keys
        redis.hset(keys[0], "s1", b"\xc1 damaged")
    late = {"event_id": f"{customer}-late", "customer_id": customer, "type": "login"}
    late["ts"] = datetime.now(UTC).isoformat()
    (shop / "late.jsonl").write_text(json.dumps(late) + "\n")
    assert command(["produce", "late.jsonl"], shop).returncode == 0
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        status = json.loads(command(["status", "--json"], shop).stdout)
        if customer in status["corrupt"]:
            return
        time.sleep(0.5)
    raise AssertionError(f"{customer} was not set aside after its state was damaged")


def stays_up(argv: list[str], shop: Path) -> str:
    """Start a long-running command; it must still run after a few seconds and stop
    cleanly on Ctrl-C. Returns what went wrong, or ''."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "retention.cli", *argv],
        cwd=shop,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env(),
    )
    time.sleep(3)
    if proc.poll() is not None:
        out = proc.communicate()[0]
        return f"exited {proc.returncode} at once:\n{out[-2000:]}"
    proc.send_signal(signal.SIGINT)
    out = proc.communicate(timeout=40)[0]
    return "" if proc.returncode == 0 else f"exit {proc.returncode} on Ctrl-C:\n{out[-2000:]}"


def test_every_documented_command_runs(shop: Path) -> None:
    seen: set[tuple[str, ...]] = set()
    ran: list[str] = []
    failures: list[str] = []
    # erasing comes last: the pages show the customer it erases in other commands too
    commands = sorted(documented_commands(), key=lambda found: found[1][0] == "forget")
    for where, argv in commands:
        if tuple(argv) in seen or argv[0] == "up":  # up: the fixture runs it as shown
            continue
        seen.add(tuple(argv))
        if argv[0] in STAY_UP or (argv[0] == "notify" and "--check" not in argv):
            problem = stays_up(argv, shop)
        else:
            if argv[0] == "restore-customer":
                damage(argv[1], shop)
            reads_store = argv[0] in ("customer", "status", "restore-customer")
            result = until_ok(argv, shop, 30) if reads_store else command(argv, shop)
            out = (result.stdout + result.stderr)[-2000:]
            problem = "" if result.returncode == 0 else f"exit {result.returncode}:\n{out}"
        ran.append(" ".join(argv))
        if problem:
            failures.append(f"{where}\n  `retention {' '.join(argv)}`: {problem}")
    assert not failures, "\n\n".join(failures)
    # the pages' commands were found and run, the front door's among them
    assert len(ran) >= 15 and "produce events.jsonl" in ran, ran
    if any(step.startswith("forget C") for step in ran):
        # erased for good, even after the restore and the rebuild the pages showed before
        assert command(["customer", "C", "--json"], shop).returncode == 1
    else:
        customer = json.loads(command(["customer", "C", "--json"], shop).stdout)
        assert customer["orders"] == 3, customer
    assert json.loads(command(["status", "--json"], shop).stdout)["corrupt"] == []
    assert (shop / "cohorts.png").read_bytes()[:4] == b"\x89PNG"
    assert json.loads((shop / "r.json").read_text())
