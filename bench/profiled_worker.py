"""``retention worker``, with its main thread's CPU time sampled by stage of the work.

Started by ``bench/profile_stages.py`` with the environment of a worker, plus
``BENCH_EXPECTED_EVENTS`` and ``BENCH_REPORT_FILE`` (as for ``bench/floor_worker.py``). From
the first batch it decodes until the store has taken the expected number of events, a
timer on the process's CPU time (``ITIMER_PROF``, every ``BENCH_SAMPLE_SECONDS``, 1 ms by
default) interrupts the main thread, which looks at its own stack and books the main
thread's CPU time since the previous look to the stage of the work that stack belongs to
(``stage_of``). Sampling in the thread itself has none of the bias of a sampler thread
waiting for the GIL, and the time spent looking is left out (and reported). The store's
batch calls are timed on the wall clock as well: that is the wait for Redis, which uses no
CPU of the worker's. Then it appends a ``first`` and a ``done`` JSON line to the report
file, the ``done`` one with the stages, and goes on as a worker until it is stopped.

The worker runs unchanged: only ``Ingest.decode``, ``Ingest._write`` and
``Store.apply_batch`` are wrapped, to start and stop the sampling and time the batch calls.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
import signal
import sys
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import Any

from retention import cli
from store import store as store_module
from store.store import BatchResult, Store
from streams.ingest_batch import DecodedBatch, Ingest

EXPECTED_ENV = "BENCH_EXPECTED_EVENTS"
REPORT_FILE_ENV = "BENCH_REPORT_FILE"
INTERVAL_ENV = "BENCH_SAMPLE_SECONDS"

#: innermost frames reported, the most costly first
DETAIL_ROWS = 40

BATCH_SHA = hashlib.sha1(store_module._SCRIPT.encode()).hexdigest()

#: The stages, in the order they are printed.
STAGES = (
    "faust: consumer, fetches, acks (faust, mode, aiokafka, batch_reader)",
    "event loop (asyncio/uvloop, sockets)",
    "decode + validate (parse_event)",
    "currency conversion",
    "record building (accepted_record, decode loop)",
    "sharding and offset runs (apply_batch)",
    "batch encoding (json.dumps in apply_batch)",
    "redis client: the batch call",
    "after the batch (offsets, counters)",
    "worker metrics (prometheus)",
    "evaluation",
    "refits",
    "other timers (heartbeat, periods, outcomes)",
    "other",
)
(
    FAUST,
    LOOP,
    DECODE,
    CURRENCY,
    RECORD,
    SHARDING,
    ENCODING,
    REDIS_CLIENT,
    AFTER,
    METRICS,
    EVALUATION,
    REFITS,
    TIMERS,
    OTHER,
) = STAGES

LIBRARIES = {
    "/faust/": FAUST,
    "/mode/": FAUST,
    "/aiokafka/": FAUST,
    "/kafka/": FAUST,
    "/asyncio/": LOOP,
    "/uvloop/": LOOP,
    "/selectors.py": LOOP,
    "/prometheus_client/": METRICS,
}
#: where the code that starts and runs the event loop lives
RUNNER_FILES = ("mode/worker.py", "faust/worker.py", "asyncio/base_events.py", "asyncio/runners.py")


def _where(frame: FrameType) -> tuple[str, str]:
    code = frame.f_code
    return code.co_filename, code.co_qualname


def _timer_stage(frames: Sequence[FrameType]) -> str | None:
    """The worker's timers (streams/timers.py), wherever they are on the stack."""
    for frame in frames:
        path, name = _where(frame)
        if path.endswith("streams/timers.py"):
            if "evaluate_due" in name:
                return EVALUATION
            if "refit_model" in name:
                return REFITS
            return TIMERS
    return None


def _ingest_stage(frames: Sequence[FrameType]) -> str | None:
    """The ingest agent's own work, by the innermost frame that tells."""
    for frame in frames:
        path, name = _where(frame)
        if path.endswith("processors/currency.py"):
            return CURRENCY
        if path.endswith("contract/events.py") and name != "Event.dimensions":
            return DECODE
        if name.startswith("AsyncScript.__call__"):
            script = frame.f_locals.get("self")
            return REDIS_CLIENT if getattr(script, "sha", None) == BATCH_SHA else EVALUATION
        if path.endswith("store/store.py") and name == "Store.apply_batch":
            inner = frames[: frames.index(frame)]
            encoding = any(_where(f)[0].endswith("json/encoder.py") for f in inner)
            return ENCODING if encoding else SHARDING
        if path.endswith("streams/worker_metrics.py"):
            return METRICS
        if path.endswith("streams/ingest_batch.py"):
            if name in ("Ingest.decode", "Ingest._record"):
                return RECORD
            return AFTER
        if path.endswith("store/store.py") and name in ("accepted_record", "dedupe_id"):
            return RECORD
        if path.endswith("streams/batch_reader.py"):
            return FAUST
    return None


def _in_loop_runner(frame: FrameType) -> bool:
    """The thread runs the event loop's own code (uvloop's is C, below the Python frame
    that started the loop): the innermost frame is that frame, not a callback's."""
    path = frame.f_code.co_filename
    return not frame.f_code.co_flags & inspect.CO_COROUTINE and path.endswith(RUNNER_FILES)


def stage_of(frame: FrameType | None) -> str:
    if frame is not None and _in_loop_runner(frame):
        return LOOP
    frames: list[FrameType] = []
    while frame is not None:
        frames.append(frame)
        frame = frame.f_back
    timer = _timer_stage(frames)
    if timer is not None:
        return timer
    ingest = _ingest_stage(frames)
    if ingest is not None:
        return ingest
    for frame in frames:
        path = _where(frame)[0]
        # the evaluator's reads gathered into tasks of their own
        if "/store/" in path or "/processors/" in path:
            return EVALUATION
        for part, stage in LIBRARIES.items():
            if part in path:
                return stage
    # the thread is in the event loop's own code, below any Python frame of it
    return LOOP


class Sampler:
    def __init__(self, interval: float) -> None:
        self.interval = interval
        self.cpu: Counter[str] = Counter()
        #: by stage and innermost frame (file:function), to see inside a stage
        self.detail: Counter[tuple[str, str]] = Counter()
        self.samples = 0
        self.looking = 0.0
        self.last = 0.0
        self.running = False
        self.looking_now = False

    def start(self) -> None:
        self.running = True
        self.last = time.thread_time()
        signal.signal(signal.SIGPROF, self.sample)
        signal.setitimer(signal.ITIMER_PROF, self.interval, self.interval)

    def stop(self) -> None:
        signal.setitimer(signal.ITIMER_PROF, 0, 0)
        signal.signal(signal.SIGPROF, signal.SIG_IGN)
        self.running = False

    def sample(self, signum: int, frame: FrameType | None) -> None:
        # a signal that arrives while a look is under way belongs to that look
        if not self.running or self.looking_now:
            return
        self.looking_now = True
        began = time.thread_time()
        try:
            stage = stage_of(frame)
            self.cpu[stage] += began - self.last
            if frame is not None:
                path, name = _where(frame)
                self.detail[stage, f"{Path(path).name}:{name}"] += began - self.last
            self.samples += 1
        finally:
            self.last = time.thread_time()
            self.looking += self.last - began
            self.looking_now = False


def thread_cpu_seconds() -> dict[int, float]:
    """CPU seconds of each of this process's threads, from /proc."""
    ticks = os.sysconf("SC_CLK_TCK")
    out: dict[int, float] = {}
    for task in Path("/proc/self/task").iterdir():
        try:
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        out[int(task.name)] = (int(fields[11]) + int(fields[12])) / ticks
    return out


class Window:
    """From the first decoded batch to the store holding every expected event."""

    def __init__(self, expected: int, report_file: str, sampler: Sampler) -> None:
        self.expected = expected
        self.report_file = report_file
        self.sampler = sampler
        self.started_at = 0.0
        self.wall0 = 0.0
        self.cpu0 = 0.0
        self.threads0: dict[int, float] = {}
        self.batch_calls = 0
        self.batch_wall = 0.0
        self.done = False

    def report(self, kind: str, **fields: Any) -> None:
        line = {"bench": kind, "at": time.time(), "cpu": time.process_time(), **fields}
        with open(self.report_file, "a") as out:
            out.write(json.dumps(line) + "\n")

    def begin(self) -> None:
        self.report("first")
        self.started_at = time.time()
        self.wall0 = time.perf_counter()
        self.cpu0 = time.process_time()
        self.threads0 = thread_cpu_seconds()
        self.sampler.start()

    def end(self, seen: int) -> None:
        self.sampler.stop()
        self.done = True
        wall = time.perf_counter() - self.wall0
        cpu = time.process_time() - self.cpu0
        main = sum(self.sampler.cpu.values())
        threads = thread_cpu_seconds()
        others = {
            tid: seconds - self.threads0.get(tid, 0.0)
            for tid, seconds in threads.items()
            if tid != threading_main_native_id()
        }
        self.report(
            "done",
            count=seen,
            wall_seconds=wall,
            process_cpu_seconds=cpu,
            main_cpu_seconds=main,
            other_threads_cpu_seconds=sum(others.values()),
            sampling_seconds=self.sampler.looking,
            samples=self.sampler.samples,
            stages={stage: self.sampler.cpu.get(stage, 0.0) for stage in STAGES},
            detail=[
                [stage, where, seconds]
                for (stage, where), seconds in self.sampler.detail.most_common(DETAIL_ROWS)
            ],
            batch_calls=self.batch_calls,
            batch_call_wall_seconds=self.batch_wall,
        )


def threading_main_native_id() -> int:
    import threading

    return threading.main_thread().native_id or os.getpid()


def instrument(window: Window) -> None:
    decode, write, apply_batch = Ingest.decode, Ingest._write, Store.apply_batch

    async def timed_decode(self: Ingest, events: Sequence[Any]) -> DecodedBatch:
        if not window.sampler.running and not window.done:
            window.begin()
        return await decode(self, events)

    async def counted_write(self: Ingest, records: list[list[str]]) -> BatchResult:
        result = await write(self, records)
        c = self.counters
        seen = c.applied + c.duplicates + c.redelivered + c.rejected
        if window.sampler.running and seen >= window.expected:
            window.end(seen)
        return result

    async def timed_apply_batch(
        self: Store, records: Any, now_ms: int | None = None, floors: Any = None
    ) -> BatchResult:
        started = time.perf_counter()
        try:
            return await apply_batch(self, records, now_ms, floors)
        finally:
            if window.sampler.running:
                window.batch_calls += 1
                window.batch_wall += time.perf_counter() - started

    Ingest.decode = timed_decode  # type: ignore[method-assign]
    Ingest._write = counted_write  # type: ignore[method-assign]
    Store.apply_batch = timed_apply_batch  # type: ignore[method-assign]


def main() -> int:
    sampler = Sampler(float(os.environ.get(INTERVAL_ENV, "0.001")))
    window = Window(int(os.environ[EXPECTED_ENV]), os.environ[REPORT_FILE_ENV], sampler)
    instrument(window)
    return cli.main(["worker"])


if __name__ == "__main__":
    sys.exit(main())
