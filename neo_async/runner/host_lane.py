"""The host lane: one worker thread that runs host attention jobs in submission order, so the
calling thread (the device lane) keeps issuing device work meanwhile.

A job is a callable that touches only what it was given (staged inputs, its output, its slabs
of the KV pools: rust_cpuattn's memory contract) and releases the GIL for its bulk
(rust_cpuattn calls do), so the lane needs the GIL only to start and finish a job.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable


class Handle:
    """One submitted job; `wait` returns once it has run (re-raising its exception)."""

    def __init__(self, job: Callable[[], None]) -> None:
        self.job = job
        self.done = threading.Event()
        self.error: BaseException | None = None

    def wait(self) -> None:
        self.done.wait()
        if self.error is not None:
            raise self.error


class HostLane:
    def __init__(self, name: str = "neo-host-lane") -> None:
        self._jobs: queue.SimpleQueue[Handle | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    def submit(self, job: Callable[[], None]) -> Handle:
        handle = Handle(job)
        self._jobs.put(handle)
        return handle

    def drain(self) -> None:
        """Returns once every job submitted so far has run (their errors are dropped)."""
        self.submit(lambda: None).done.wait()

    def close(self) -> None:
        self._jobs.put(None)
        self._thread.join()

    def _loop(self) -> None:
        while (handle := self._jobs.get()) is not None:
            try:
                handle.job()
            except BaseException as e:  # noqa: BLE001 - handed to the waiting thread
                handle.error = e
            handle.done.set()
