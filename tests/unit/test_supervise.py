"""Restart pauses and the supervisor's bookkeeping, on a fake clock and stand-in processes."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import pytest

from retention.runtime import Process
from retention.supervise import Backoff, ChildLost, Supervisor


@pytest.mark.parametrize(
    ("uptimes", "delays"),
    [
        # dies at once again and again: doubles from 0.5 s, capped at 30 s
        ([0] * 9, [0.5, 1, 2, 4, 8, 16, 30, 30, 30]),
        # stayed up 60 s (the stable threshold) before the third death: back to 0.5 s
        ([0, 0, 60, 0], [0.5, 1, 0.5, 1]),
        # 59 s is not long enough to count as stable
        ([0, 0, 59], [0.5, 1, 2]),
    ],
)
def test_backoff_doubles_up_to_the_cap_and_resets_when_stable(
    uptimes: list[float], delays: list[float]
) -> None:
    backoff = Backoff()
    assert [backoff.next_delay(u) for u in uptimes] == delays


def test_backoff_survives_a_process_that_fails_for_days() -> None:
    backoff = Backoff()
    assert [backoff.next_delay(0) for _ in range(5000)][-1] == 30


@dataclass
class FakePopen:
    returncode: int | None = None
    pid: int = 1

    def poll(self) -> int | None:
        return self.returncode


def fake_process(pid: int) -> Process:
    return Process("p", cast(Any, FakePopen(pid=pid)), Path("/dev/null"))


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_dead_child_is_restarted_after_its_pause_and_counted() -> None:
    clock = Clock()
    pids = iter(range(100, 200))
    supervisor = Supervisor(clock=clock)
    first = supervisor.start("worker-1", lambda: fake_process(next(pids)))
    assert supervisor.check() == []

    cast(FakePopen, first.proc).returncode = -9
    clock.now = 10.0
    died = supervisor.check()
    assert [(n.name, n.kind) for n in died] == [("worker-1", "died")]
    assert "exit code -9" in died[0].detail and "0.5 s" in died[0].detail
    assert supervisor.pids() == {} and supervisor.restarts() == {}

    clock.now = 10.4  # still within the pause
    assert supervisor.check() == []
    clock.now = 10.5
    assert [(n.name, n.kind) for n in supervisor.check()] == [("worker-1", "restarted")]
    assert supervisor.pids() == {"worker-1": 101}
    assert supervisor.restarts() == {"worker-1": 1}


def test_a_failed_restart_is_tried_again_later() -> None:
    clock = Clock()
    attempts: list[float] = []

    def start() -> Process:
        attempts.append(clock.now)
        if len(attempts) in (2, 3):
            raise TimeoutError("nothing listens")
        return fake_process(len(attempts))

    supervisor = Supervisor(clock=clock)
    process = supervisor.start("redis", start)
    cast(FakePopen, process.proc).returncode = 1
    kinds = []
    for step in range(100):
        clock.now = step * 0.25
        kinds += [n.kind for n in supervisor.check()]
    # died, then two failed restarts (pauses 0.5, 1, 2 s), then up again
    assert kinds == ["died", "restart_failed", "restart_failed", "restarted"]
    assert attempts == [0.0, 0.5, 1.5, 3.5]
    assert supervisor.restarts() == {"redis": 1}


def test_a_child_that_must_not_be_restarted_ends_the_stack() -> None:
    supervisor = Supervisor(clock=Clock())
    broker = supervisor.start("broker", lambda: fake_process(7), restartable=False)
    supervisor.start("worker-1", lambda: fake_process(8))
    cast(FakePopen, broker.proc).returncode = -9
    with pytest.raises(ChildLost) as lost:
        supervisor.check()
    assert (lost.value.name, lost.value.code) == ("broker", -9)
