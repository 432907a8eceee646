"""Host memory for KV pools: one allocation, in transparent huge pages, touched once, and
pinned (page-locked, registered with CUDA) when a GPU copies from and to it.

Huge pages: the mapping is aligned to 2 MiB and advised MADV_HUGEPAGE (THP is often in
`madvise` mode); the kernel reads a huge-page pool faster than a 4 KiB-page one (fewer TLB
misses). Touching every page at start-up keeps first-touch faults out of the steps.
"""

from __future__ import annotations

import mmap
import resource
import time
from dataclasses import dataclass

import structlog
import torch

log = structlog.get_logger("neo_async.kv.host_memory")

HUGE_PAGE_BYTES = 2 << 20


@dataclass(frozen=True)
class HostAllocation:
    tensor: torch.Tensor  # uint8 [num_bytes], 2 MiB-aligned
    is_huge_advised: bool  # MADV_HUGEPAGE was accepted (the kernel may still use small pages)
    is_pinned: bool


def allocate_host_bytes(num_bytes: int, pin_for_cuda: bool = False) -> HostAllocation:
    """A zeroed, touched, 2 MiB-aligned host buffer; pinned for CUDA when asked (falling back
    loudly, never silently, to pageable memory when pinning fails)."""
    started = time.perf_counter()
    mapping = mmap.mmap(-1, num_bytes + HUGE_PAGE_BYTES, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    is_huge_advised = True
    try:
        mapping.madvise(mmap.MADV_HUGEPAGE)
    except (AttributeError, OSError) as exc:  # no THP on this kernel or platform
        is_huge_advised = False
        log.debug("host_memory_no_huge_pages", error=str(exc))
    raw = torch.frombuffer(mapping, dtype=torch.uint8)  # keeps `mapping` alive
    offset = (-raw.data_ptr()) % HUGE_PAGE_BYTES
    tensor = raw[offset : offset + num_bytes]
    tensor.zero_()
    is_pinned = _pin(tensor) if pin_for_cuda else False
    log.debug(
        "host_memory_ready",
        num_bytes=num_bytes,
        huge_pages=is_huge_advised,
        pinned=is_pinned,
        seconds=round(time.perf_counter() - started, 3),
    )
    return HostAllocation(tensor, is_huge_advised, is_pinned)


def host_tensor(shape: tuple[int, ...], dtype: torch.dtype, pin_for_cuda: bool = False) -> torch.Tensor:
    """A zeroed tensor of `shape` and `dtype` in memory from `allocate_host_bytes`."""
    numel = 1
    for size in shape:
        numel *= size
    allocation = allocate_host_bytes(numel * dtype.itemsize, pin_for_cuda)
    return allocation.tensor.view(dtype).view(shape)


def _pin(tensor: torch.Tensor) -> bool:
    soft, _hard = resource.getrlimit(resource.RLIMIT_MEMLOCK)
    if soft != resource.RLIM_INFINITY and soft < tensor.numel():
        log.warning(
            "host_memory_pin_limited",
            memlock_limit_bytes=soft,
            num_bytes=tensor.numel(),
            hint="raise `ulimit -l` (or the container's memlock limit); copies fall back to pageable memory",
        )
    rc = torch.cuda.cudart().cudaHostRegister(tensor.data_ptr(), tensor.numel(), 0)
    if int(rc) != 0:
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
