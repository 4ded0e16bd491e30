"""Keep the embedded stack's processes running: a dead one is started again after a pause.

The pause doubles with each death in a row (0.5 s, 1 s, 2 s ... up to 30 s), so a process
that cannot start does not spin, and falls back to the first step once the process has
stayed up for a while. A process that cannot be restarted without losing data (the
in-memory broker) is not restarted: its death ends the whole stack.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from retention.runtime import Process

logger = logging.getLogger(__name__)


@dataclass
class Backoff:
    """Pauses before restarts: ``initial`` doubling up to ``cap``; reset after ``stable_after``
    seconds of uptime."""

    initial: float = 0.5
    cap: float = 30.0
    factor: float = 2.0
    stable_after: float = 60.0
    failures: int = 0

    def next_delay(self, uptime: float) -> float:
        """The pause before restarting a process that died after ``uptime`` seconds."""
        if uptime >= self.stable_after:
            self.failures = 0
        # the exponent is bounded so that a process failing for days cannot overflow it
        delay = min(self.cap, self.initial * self.factor ** min(self.failures, 64))
        self.failures += 1
        return delay


class ChildLost(RuntimeError):
    """A process that must not be restarted has died."""

    def __init__(self, name: str, code: int | None) -> None:
        super().__init__(f"{name} exited with code {code}")
        self.name = name
        self.code = code


@dataclass(frozen=True)
class Notice:
    """Something the supervisor did, for the console and the log."""

    name: str
    kind: Literal["died", "restarted", "restart_failed"]
    detail: str

    def __str__(self) -> str:
        return f"{self.name} {self.kind.replace('_', ' ')}: {self.detail}"


@dataclass
class Child:
    name: str
    start: Callable[[], Process]
    restartable: bool
    process: Process | None
    started_at: float
    backoff: Backoff = field(default_factory=Backoff)
    restart_at: float | None = None
    restarts: int = 0


class Supervisor:
    """Processes started through :meth:`start`, checked by :meth:`check`, stopped in reverse."""

    def __init__(
        self,
        backoff: Callable[[], Backoff] = Backoff,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.children: list[Child] = []
        self._backoff = backoff
        self._clock = clock

    def start(self, name: str, start: Callable[[], Process], restartable: bool = True) -> Process:
        """Start a process now; ``start`` is called again for every restart."""
        process = start()
        self.children.append(
            Child(name, start, restartable, process, self._clock(), self._backoff())
        )
        return process

    def check(self) -> list[Notice]:
        """Notice deaths and perform the restarts that are due; raises :class:`ChildLost`."""
        notices: list[Notice] = []
        for child in self.children:
            now = self._clock()
            process = child.process
            if process is not None and process.proc.poll() is not None:
                code = process.proc.returncode
                if not child.restartable:
                    raise ChildLost(child.name, code)
                delay = child.backoff.next_delay(now - child.started_at)
                child.process, child.restart_at = None, now + delay
                notices.append(
                    Notice(child.name, "died", f"exit code {code}, restarting in {delay:.1f} s")
                )
            if child.restart_at is not None and now >= child.restart_at:
                notices.append(self._restart(child))
        for notice in notices:
            extra = {"child": notice.name, "event": notice.kind, "detail": notice.detail}
            logger.info("supervised process %s", notice.kind, extra=extra)
        return notices

    def _restart(self, child: Child) -> Notice:
        try:
            child.process = child.start()
        except (RuntimeError, OSError) as exc:  # TimeoutError is an OSError
            delay = child.backoff.next_delay(0.0)
            child.restart_at = self._clock() + delay
            return Notice(child.name, "restart_failed", f"{exc}; next try in {delay:.1f} s")
        child.started_at, child.restart_at = self._clock(), None
        child.restarts += 1
        return Notice(
            child.name, "restarted", f"pid {child.process.pid} (restart {child.restarts})"
        )

    def pids(self) -> dict[str, int]:
        return {c.name: c.process.pid for c in self.children if c.process is not None}

    def restarts(self) -> dict[str, int]:
        return {c.name: c.restarts for c in self.children if c.restarts}

    def process(self, name: str) -> Process | None:
        return next((c.process for c in self.children if c.name == name), None)

    def stop(self) -> None:
        for child in reversed(self.children):
            if child.process is not None:
                child.process.stop()
        self.children.clear()
