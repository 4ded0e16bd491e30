"""The commands as a person uses them: `up` in one shell, the others in another."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from retention.services import Services
from tests.integration.cli_session import read_until, retention

EVENTS = [
    {
        "event_id": "o1",
        "customer_id": "C",
        "ts": "2024-05-01T09:00:00Z",
        "type": "order",
        "amount": 40.5,
    },
    {
        "event_id": "o2",
        "customer_id": "C",
        "ts": "2024-05-03T09:00:00Z",
        "type": "order",
        "amount": 9.5,
    },
    {
        "event_id": "o1",
        "customer_id": "C",
        "ts": "2024-05-01T09:00:00Z",
        "type": "order",
        "amount": 40.5,
    },
    {"event_id": "l1", "customer_id": "D", "ts": 1714554000, "type": "login"},
]


def test_up_produce_customer_status_and_clean_stop(
    running_up: tuple[Path, subprocess.Popen[str]], tmp_path: Path
) -> None:
    data_dir, up = running_up
    lines = read_until(up, "ready in", timeout=30)
    ready_s = float(lines[-1].split()[2])
    assert ready_s <= 10, lines
    recorded = Services.read(data_dir)
    assert recorded is not None and recorded.embedded
    # the Redis password reaches every process through its environment or a file, never
    # its command line, which every user of the host can read
    password = urlsplit(recorded.redis_url).password
    assert password and recorded.pids
    for name, pid in recorded.pids.items():
        assert password.encode() not in Path(f"/proc/{pid}/cmdline").read_bytes(), name

    events = tmp_path / "events.jsonl"
    body = [json.dumps(e) for e in EVENTS]
    body.insert(2, '{"event_id": "bad", "type": "order"')
    body.insert(3, "")
    events.write_text("\n".join(body) + "\n")
    produced = retention(data_dir, "produce", str(events))
    assert produced.returncode == 0, produced.stderr
    assert "sent 4 events; 1 bad lines" in produced.stdout
    assert f"{events}:3: invalid_json" in produced.stderr

    deadline = time.monotonic() + 30
    customer = retention(data_dir, "customer", "C", "--json")
    while (customer.returncode != 0 or json.loads(customer.stdout)["orders"] < 2) and (
        time.monotonic() < deadline
    ):
        time.sleep(0.3)
        customer = retention(data_dir, "customer", "C", "--json")
    state = json.loads(customer.stdout)
    assert (state["orders"], state["revenue"], state["customer_id"]) == (2, 50.0, "C")

    status = retention(data_dir, "status", "--json")
    assert status.returncode == 0, status.stdout + status.stderr
    report = json.loads(status.stdout)
    assert report["ok"] and report["broker_ok"] and report["redis_ok"]
    assert report["rejected"] == {"produce|invalid_json": 1}
    assert report["customers"] == 2
    with urllib.request.urlopen(report["metrics_url"], timeout=10) as response:
        exposition = response.read().decode()
    assert 'retention_events_processed_total{topic="orders"} 2.0' in exposition

    assert retention(data_dir, "customer", "nobody").returncode == 1

    metrics = retention(data_dir, "metrics", "--period", "month", "--json")
    assert metrics.returncode == 0, metrics.stderr
    rows = json.loads(metrics.stdout)["periods"]
    # the events are from 2024; nobody is active in the current day, week or month
    assert json.loads(metrics.stdout)["active_customers"] == {"day": 0, "week": 0, "month": 0}
    may = rows[0]
    assert may["period"] == "2024-05-01"
    assert (may["start_customers"], may["end_customers"], may["new_customers"]) == (0, 2, 2)
    assert (may["orders"], may["revenue"], may["aov"]) == (2, 50.0, 25.0)
    assert rows[-1].get("open") is True and rows[-1]["end_customers"] == 0
    assert retention(data_dir, "metrics", "--period", "week").returncode == 0

    plot = tmp_path / "cohorts.png"
    cohorts = retention(data_dir, "cohorts", "--period", "week", "--json", "--plot", str(plot))
    assert cohorts.returncode == 0, cohorts.stderr
    matrix = json.loads(cohorts.stdout)["cohorts"]
    assert list(matrix) == ["2024-04-29"]
    assert matrix["2024-04-29"]["active"][:2] == [2, 0]
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    up.send_signal(signal.SIGINT)
    up.wait(40)
    assert up.returncode == 0
    assert Services.read(data_dir) is None
    for pid in recorded.pids.values():
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_commands_without_a_stack_say_how_to_start_one(tmp_path: Path) -> None:
    result = retention(tmp_path, "status")
    assert result.returncode == 2
    assert "retention up" in result.stderr
