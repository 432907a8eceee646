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
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import Protocol

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
            try:
                handle.job()
            except BaseException as e:  # noqa: BLE001 - handed to the waiting thread
                handle.error = e
            handle.done.set()
