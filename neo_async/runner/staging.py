"""Double-buffered staging of host decode attention: q/k/v rows to the host, outputs back.

A host decode job (one layer, one sub-batch) reads q, k_new, v_new [B, H, D] in host memory
and writes out [B, Hq, D] there; the device lane produces the inputs and consumes the output.
`Staging` holds reusable host buffers in slots and orders the copies with events:

    device lane: slot = stage_in(q, k, v)     copies to the slot's buffers, then records inputs_ready
    host lane:   slot.wait_for_host()         inputs_ready reached, the slot's last copy-out done
                 kernel(slot.q, slot.k, slot.v, out=slot.out)
    device lane: stage_out(slot, out)         copy-out enqueued, out_done recorded, slot free again

Invariant: a slot is handed out by stage_in only after stage_out released it, so no copy
ever writes a slot the host lane still reads. Two slots carry a pipelined step (one job in
flight while the next layer is staged); more are made, up to MAX_SLOTS, if a caller holds
more. How copies run is the `Lane`'s business: synchronous copies and already-set events on
the CPU (`CpuLane`), copies in order on a worker thread (`ThreadLane`, the CPU model of a
stream that the tests drive), a copy stream, pinned buffers and CUDA events on a GPU
(`runner/cuda_lane.py`).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import Protocol

import torch

MAX_SLOTS = 4


class LaneEvent(Protocol):
    def record(self) -> None:
        """Marks the point after every copy enqueued so far on the lane."""

    def wait_host(self) -> None:
        """Blocks the calling thread until the recorded point is reached."""

    def wait_device(self) -> None:
        """Orders the device lane's later work after the recorded point."""


class Lane(Protocol):
    def event(self) -> LaneEvent: ...

    def host_buffer(self, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        """A host tensor that copies to and from the device can use asynchronously."""

    def copy_to_host(self, dst: torch.Tensor, src: torch.Tensor) -> None:
        """Enqueues dst <- src, src produced by the device lane's work so far."""

    def copy_to_device(self, dst: torch.Tensor, src: torch.Tensor) -> None:
        """Enqueues dst <- src, src written by the host (already complete)."""


class ReachedEvent:
    """An event of a synchronous lane: every point is reached when it is recorded."""

    def record(self) -> None:
        pass

    def wait_host(self) -> None:
        pass

    def wait_device(self) -> None:
        pass


class CpuLane:
    """Copies run at once on the calling thread; buffers are plain host tensors."""

    def event(self) -> ReachedEvent:
        return ReachedEvent()

    def host_buffer(self, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        return torch.empty(shape, dtype=dtype)

    def copy_to_host(self, dst: torch.Tensor, src: torch.Tensor) -> None:
        dst.copy_(src)

    def copy_to_device(self, dst: torch.Tensor, src: torch.Tensor) -> None:
        dst.copy_(src)


class ThreadEvent:
    """An event of a `ThreadLane`: reached when the lane's thread gets past it."""

    def __init__(self, lane: ThreadLane) -> None:
        self.lane = lane
        self.reached = threading.Event()
        self.reached.set()  # never recorded: nothing to wait for

    def record(self) -> None:
        self.reached.clear()
        self.lane.submit(self.reached.set)

    def wait_host(self) -> None:
        self.reached.wait()

    def wait_device(self) -> None:
        self.reached.wait()  # the CPU device lane is the calling thread


class ThreadLane(CpuLane):
    """Copies run in order on a worker thread, as on a copy stream: a CPU model of the CUDA
    lane, so that the ordering is exercised for real without a GPU."""

    def __init__(self) -> None:
        self.pending: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        threading.Thread(target=self._run, name="neo-copy-lane", daemon=True).start()

    def close(self) -> None:
        """Ends the worker after the copies already submitted."""
        self.pending.put(None)

    def event(self) -> ThreadEvent:  # type: ignore[override]
        return ThreadEvent(self)

    def submit(self, fn: Callable[[], None]) -> None:
        self.pending.put(fn)

    def copy_to_host(self, dst: torch.Tensor, src: torch.Tensor) -> None:
        self.submit(lambda: dst.copy_(src))

    def copy_to_device(self, dst: torch.Tensor, src: torch.Tensor) -> None:
        self.submit(lambda: dst.copy_(src))

    def _run(self) -> None:
        while (fn := self.pending.get()) is not None:
            fn()


class Slot:
    """One set of host buffers; q, k, v, out are views of the current job's rows."""

    def __init__(self, lane: Lane) -> None:
        self.lane = lane
        self.capacity = 0
        self.shapes: dict[str, tuple[tuple[int, ...], torch.dtype]] = {}
        self.buffers: dict[str, torch.Tensor] = {}
        self.inputs_ready = lane.event()
        self.out_done = lane.event()  # the last copy-out from `out` finished
        self.q = self.k = self.v = self.out = torch.empty(0)

    def fit(self, rows: int, shapes: dict[str, tuple[tuple[int, ...], torch.dtype]]) -> None:
        """Views of `rows` rows in buffers of at least that many (grown to a power of two)."""
        if rows > self.capacity or shapes != self.shapes:
            self.out_done.wait_host()  # never free a buffer a copy may still read
            self.capacity = 1 << max(0, rows - 1).bit_length()
            self.shapes = shapes
            self.buffers = {n: self.lane.host_buffer((self.capacity, *s), d) for n, (s, d) in shapes.items()}
        self.q, self.k, self.v, self.out = (self.buffers[n][:rows] for n in ("q", "k", "v", "out"))

    def wait_for_host(self) -> None:
        """Host lane, before the kernel: inputs copied in, previous output copied out."""
        self.inputs_ready.wait_host()
        self.out_done.wait_host()


class Staging:
    """Host buffers for host decode jobs whose inputs and outputs live on the device lane."""

    def __init__(self, lane: Lane, kv_dtype: torch.dtype) -> None:
        self.lane = lane
        self.kv_dtype = kv_dtype
        self.free: list[Slot] = []
        self.num_slots = 0
        self._lock = threading.Lock()

    def stage_in(self, q: torch.Tensor, k_new: torch.Tensor, v_new: torch.Tensor) -> Slot:
        """Device lane: q [B, Hq, D], k_new, v_new [B, Hkv, D] copied into a free slot (q and the
        output in float32, k and v in the pool's dtype)."""
        slot = self._acquire()
        rows, num_heads, head_dim = q.shape
        slot.fit(rows, {
            "q": ((num_heads, head_dim), torch.float32),
            "k": (tuple(k_new.shape[1:]), self.kv_dtype),
            "v": (tuple(v_new.shape[1:]), self.kv_dtype),
            "out": ((num_heads, head_dim), torch.float32),
        })
        self.lane.copy_to_host(slot.q, q)
        self.lane.copy_to_host(slot.k, k_new)
        self.lane.copy_to_host(slot.v, v_new)
        slot.inputs_ready.record()
        return slot

    def stage_out(self, slot: Slot, out: torch.Tensor) -> None:
        """Device lane, after the host job finished: out <- slot.out, ordered before the
        device lane's later work; the slot is free again."""
        self.lane.copy_to_device(out, slot.out)
        slot.out_done.record()
        slot.out_done.wait_device()
        with self._lock:
            self.free.append(slot)

    def _acquire(self) -> Slot:
        with self._lock:
            if self.free:
                return self.free.pop(0)
            if self.num_slots == MAX_SLOTS:
                raise RuntimeError(f"more than {MAX_SLOTS} host decode jobs staged and not finished")
            self.num_slots += 1
        return Slot(self.lane)
