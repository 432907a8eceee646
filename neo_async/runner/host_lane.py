"""The host lane: host attention jobs run in submission order off the calling thread, so the
calling thread (the device lane) keeps issuing device work meanwhile.

Two queues, one per kind of job, each first-in first-out:
- native: a `DecodeJob` with `native` (the Rust kernel on CPU tensors) is queued on
  rust_cpuattn's `HostLane`, whose thread runs it without the GIL: the job starts as soon as
  that thread wakes, whatever the calling thread does meanwhile;
- Python: any other job (torch attention, staged copies from a GPU) runs on a Python worker
  thread, which needs the GIL to start and to finish each job (rust_cpuattn and torch release
  it for their bulk). `native=False` sends every job there (to compare the two).

A job touches only what it was given (staged inputs, its output, its slabs of the KV pools:
rust_cpuattn's memory contract).

`InlineLane` is NEO's own order for a GPU device: no second thread, so no GIL hand-off; a job
runs on the calling thread when it is waited for, between device work already enqueued (the
GPU computes meanwhile). `host_lane_for(device)` picks: NEO_ASYNC_HOST_LANE=thread|inline, by
default inline on a GPU and the thread lane on the CPU device (where inline would serialise the
two lanes).
"""

from __future__ import annotations

import os
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Protocol

import torch

from neo_async.native import rust_cpuattn
from neo_async.runner.attention import DecodeJob


class Waitable(Protocol):
    def wait(self) -> None: ...


class Handle:
    """One job submitted to the Python queue; `wait` returns once it has run (re-raising its
    exception)."""

    def __init__(self, job: Callable[[], None]) -> None:
        self.job = job
        self.done = threading.Event()
        self.error: BaseException | None = None

    def wait(self) -> None:
        self.done.wait()
        if self.error is not None:
            raise self.error


class HostLane:
    def __init__(self, name: str = "neo-host-lane", native: bool = True) -> None:
        self._native = rust_cpuattn.HostLane(name) if native and rust_cpuattn is not None else None
        self._jobs: queue.SimpleQueue[Handle | None] = queue.SimpleQueue()
        self.run_s_total = 0.0  # time in jobs of the Python queue (native jobs are not timed)
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    def submit(self, job: DecodeJob | Callable[[], None]) -> Waitable:
        if isinstance(job, DecodeJob):
            if job.native is not None and self._native is not None:
                return job.native(self._native)
            job = job.run
        handle = Handle(job)
        self._jobs.put(handle)
        return handle

    def drain(self) -> None:
        """Returns once every job submitted so far has run (their errors are dropped)."""
        if self._native is not None:
            self._native.drain()
        self.submit(lambda: None).wait()

    def close(self) -> None:
        self.drain()
        self._jobs.put(None)
        self._thread.join()

    def _loop(self) -> None:
        while (handle := self._jobs.get()) is not None:
            started = time.perf_counter()
            try:
                handle.job()
            except BaseException as e:  # noqa: BLE001 - handed to the waiting thread
                handle.error = e
            self.run_s_total += time.perf_counter() - started
            handle.done.set()


class InlineHandle:
    def __init__(self, lane: InlineLane, job: Callable[[], None]) -> None:
        self.lane = lane
        self.job = job
        self.is_done = False
        self.error: BaseException | None = None

    def wait(self) -> None:
        self.lane.run_until(self)
        if self.error is not None:
            raise self.error


class InlineLane:
    """Jobs run in submission order on the thread that waits for them (see the module's doc)."""

    def __init__(self) -> None:
        self._pending: deque[InlineHandle] = deque()
        self.run_s_total = 0.0

    def submit(self, job: DecodeJob | Callable[[], None]) -> InlineHandle:
        handle = InlineHandle(self, job.run if isinstance(job, DecodeJob) else job)
        self._pending.append(handle)
        return handle

    def run_until(self, handle: InlineHandle) -> None:
        """Runs pending jobs, oldest first, up to and including `handle`."""
        while not handle.is_done:
            first = self._pending.popleft()
            started = time.perf_counter()
            try:
                first.job()
            except BaseException as e:  # noqa: BLE001 - raised by its wait
                first.error = e
            self.run_s_total += time.perf_counter() - started
            first.is_done = True

    def drain(self) -> None:
        while self._pending:
            self.run_until(self._pending[-1])

    def close(self) -> None:
        self.drain()


LANE_ENV = "NEO_ASYNC_HOST_LANE"


def host_lane_for(device: torch.device) -> HostLane | InlineLane:
    """The lane for host attention next to `device` (NEO_ASYNC_HOST_LANE, or the device's default)."""
    choice = os.environ.get(LANE_ENV, "inline" if device.type == "cuda" else "thread")
    if choice not in ("thread", "inline"):
        raise ValueError(f"{LANE_ENV} must be thread or inline, got {choice!r}")
    return InlineLane() if choice == "inline" else HostLane()
