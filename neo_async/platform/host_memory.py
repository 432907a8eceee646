"""Host memory for KV pools: one allocation, in transparent huge pages, touched once, and
pinned (page-locked, registered with CUDA) when a GPU copies from and to it.

Huge pages: the mapping is aligned to 2 MiB and advised MADV_HUGEPAGE (THP is often in
`madvise` mode); the kernel reads a huge-page pool faster than a 4 KiB-page one (fewer TLB
misses). Every page is faulted in once at start-up, to keep first-touch faults (slow on VMs:
0.1-1.5 GB/s measured) out of the steps: by MADV_POPULATE_WRITE on a background thread, which
never changes memory contents and so may run while the engine already writes K/V, or, where
the kernel lacks it (before Linux 5.14), by zeroing in the foreground.

Pinned memory is unregistered before it is unmapped (`_Mapping.__del__`): CUDA keeps a
registration past munmap, and the next mapping of that size often lands on the same range
(several engines in one process), where registering again fails.
"""

from __future__ import annotations

import ctypes
import mmap
import queue
import resource
import threading
import time
from dataclasses import dataclass, field
from typing import Protocol

import structlog
import torch

log = structlog.get_logger("neo_async.platform.host_memory")

HUGE_PAGE_BYTES = 2 << 20


MADV_POPULATE_WRITE = 23  # Linux 5.14+: fault pages in, writable, without touching contents
_POPULATE_CHUNK_BYTES = 64 << 20


class PinRegistry(Protocol):
    """Page-locks host ranges for a GPU's copies (CUDA's cudaHostRegister/Unregister): 0 on
    success, else the error code."""

    def register(self, ptr: int, num_bytes: int) -> int: ...

    def unregister(self, ptr: int) -> int: ...


class CudaPinRegistry:
    def register(self, ptr: int, num_bytes: int) -> int:
        return int(torch.cuda.cudart().cudaHostRegister(ptr, num_bytes, 0))

    def unregister(self, ptr: int) -> int:
        return int(torch.cuda.cudart().cudaHostUnregister(ptr))


class _Mapping(mmap.mmap):
    """An anonymous mapping that unregisters its pinned range when the last tensor over it
    is gone, before the mapping is unmapped (mmap's own dealloc runs after __del__)."""

    pinned: tuple[PinRegistry, int] | None = None  # (registry, registered address)

    def __del__(self) -> None:
        if self.pinned is not None:
            registry, ptr = self.pinned
            self.pinned = None
            try:
                rc = registry.unregister(ptr)
            except Exception as exc:  # interpreter shutdown, or the CUDA context gone
                rc = -1
                log.debug("host_memory_unpin_failed", error=str(exc))
            if rc != 0:
                log.debug("host_memory_unpin_failed", cuda_error=rc)


@dataclass(frozen=True)
class HostAllocation:
    tensor: torch.Tensor  # uint8 [num_bytes], 2 MiB-aligned, zero
    is_huge_advised: bool  # MADV_HUGEPAGE was accepted (the kernel may still use small pages)
    is_pinned: bool
    populated: threading.Event = field(default_factory=threading.Event)  # set once every page is in

    def wait_populated(self, timeout_s: float | None = None) -> bool:
        return self.populated.wait(timeout_s)


def allocate_host_bytes(num_bytes: int, pin_for_cuda: bool = False, registry: PinRegistry | None = None) -> HostAllocation:
    """A zero, 2 MiB-aligned host buffer whose pages are faulted in at once (in the background
    where the kernel allows); pinned for CUDA when asked (falling back loudly, never silently,
    to pageable memory when pinning fails), and unpinned when the last tensor over it goes.
    `registry`: who pins (CUDA's by default)."""
    started = time.perf_counter()
    mapping = _Mapping(-1, num_bytes + HUGE_PAGE_BYTES, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    is_huge_advised = True
    try:
        mapping.madvise(mmap.MADV_HUGEPAGE)
    except (AttributeError, OSError) as exc:  # no THP on this kernel or platform
        is_huge_advised = False
        log.debug("host_memory_no_huge_pages", error=str(exc))
    raw = torch.frombuffer(mapping, dtype=torch.uint8)  # keeps `mapping` alive
    offset = (-raw.data_ptr()) % HUGE_PAGE_BYTES
    tensor = raw[offset : offset + num_bytes]
    is_pinned = False
    if pin_for_cuda:  # registering faults every page in
        registry = registry or CudaPinRegistry()
        is_pinned = _pin(tensor, registry)
        if is_pinned:
            mapping.pinned = (registry, tensor.data_ptr())
    del mapping  # from here on, the tensor's storage alone keeps the mapping alive
    allocation = HostAllocation(tensor, is_huge_advised, is_pinned)
    if is_pinned or num_bytes == 0:
        allocation.populated.set()
    elif _populate(tensor, 0, min(num_bytes, HUGE_PAGE_BYTES)):  # supported: the rest in the background
        _populator().put((allocation, started))
        return allocation
    else:
        tensor.zero_()  # no MADV_POPULATE_WRITE: touch in the foreground (contents are zero already)
        allocation.populated.set()
    log.debug("host_memory_ready", num_bytes=num_bytes, huge_pages=is_huge_advised, pinned=is_pinned,
              seconds=round(time.perf_counter() - started, 3))
    return allocation


def _populate(tensor: torch.Tensor, start: int, stop: int) -> bool:
    """MADV_POPULATE_WRITE over bytes start..stop of tensor (the GIL is released meanwhile)."""
    return _libc().madvise(tensor.data_ptr() + start, stop - start, MADV_POPULATE_WRITE) == 0


_POPULATOR: queue.SimpleQueue[tuple[HostAllocation, float]] | None = None
_POPULATOR_LOCK = threading.Lock()


def _populator() -> queue.SimpleQueue[tuple[HostAllocation, float]]:
    """The queue of the one background thread that populates allocations in turn (one core at
    most, so start-up's own work keeps the others)."""
    global _POPULATOR
    with _POPULATOR_LOCK:
        if _POPULATOR is None:
            _POPULATOR = queue.SimpleQueue()
            threading.Thread(target=_populate_forever, args=(_POPULATOR,), name="neo-populate", daemon=True).start()
        return _POPULATOR


def _populate_forever(pending: queue.SimpleQueue[tuple[HostAllocation, float]]) -> None:
    while True:
        allocation, started = pending.get()
        tensor = allocation.tensor
        for start in range(HUGE_PAGE_BYTES, tensor.numel(), _POPULATE_CHUNK_BYTES):
            if not _populate(tensor, start, min(tensor.numel(), start + _POPULATE_CHUNK_BYTES)):
                break  # the rest is faulted in on first use
        allocation.populated.set()
        log.debug("host_memory_populated", num_bytes=tensor.numel(), huge_pages=allocation.is_huge_advised,
                  seconds=round(time.perf_counter() - started, 3))
        del allocation, tensor  # the queue must not keep a freed pool's memory alive


_LIBC: ctypes.CDLL | None = None


def _libc() -> ctypes.CDLL:
    global _LIBC
    if _LIBC is None:
        _LIBC = ctypes.CDLL(None, use_errno=True)
        _LIBC.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
        _LIBC.madvise.restype = ctypes.c_int
    return _LIBC


def host_tensor(
    shape: tuple[int, ...], dtype: torch.dtype, pin_for_cuda: bool = False, registry: PinRegistry | None = None
) -> torch.Tensor:
    """A zeroed tensor of `shape` and `dtype` in memory from `allocate_host_bytes`."""
    numel = 1
    for size in shape:
        numel *= size
    allocation = allocate_host_bytes(numel * dtype.itemsize, pin_for_cuda, registry)
    return allocation.tensor.view(dtype).view(shape)


def _pin(tensor: torch.Tensor, registry: PinRegistry) -> bool:
    soft, _hard = resource.getrlimit(resource.RLIMIT_MEMLOCK)
    if soft != resource.RLIM_INFINITY and soft < tensor.numel():
        log.warning(
            "host_memory_pin_limited",
            memlock_limit_bytes=soft,
            num_bytes=tensor.numel(),
            hint="raise `ulimit -l` (or the container's memlock limit); copies fall back to pageable memory",
        )
    rc = registry.register(tensor.data_ptr(), tensor.numel())
    if rc != 0:
        log.warning("host_memory_pin_failed", cuda_error=int(rc), num_bytes=tensor.numel(), fallback="pageable")
        return False
    return True


def anon_huge_page_bytes() -> int:
    """Bytes of this process's anonymous memory in transparent huge pages (0 where unknown)."""
    try:
        with open("/proc/self/smaps_rollup") as f:
            for line in f:
                if line.startswith("AnonHugePages:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0
