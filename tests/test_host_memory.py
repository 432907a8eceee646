"""Host memory for KV pools: 2 MiB-aligned, zeroed, backed by transparent huge pages where the
kernel allows them (THP in `madvise` or `always` mode), and used by every pool in host memory."""

import gc
from pathlib import Path

import pytest
import torch

from neo_async.platform.host_memory import HUGE_PAGE_BYTES, allocate_host_bytes, anon_huge_page_bytes, host_tensor
from neo_async.runner.attention import KVCache

THP_MODE = Path("/sys/kernel/mm/transparent_hugepage/enabled")


def _thp_mode() -> str:
    text = THP_MODE.read_text() if THP_MODE.exists() else "[never]"
    return text.split("[")[1].split("]")[0]


def test_allocation_is_aligned_zeroed_and_in_huge_pages():
    before = anon_huge_page_bytes()
    allocation = allocate_host_bytes(64 << 20)
    t = allocation.tensor
    assert t.numel() == 64 << 20 and t.data_ptr() % HUGE_PAGE_BYTES == 0
    assert int(t.count_nonzero()) == 0
    assert allocation.wait_populated(120)
    if _thp_mode() == "never":
        pytest.skip("transparent huge pages are disabled on this machine")
    assert allocation.is_huge_advised
    assert anon_huge_page_bytes() - before >= 32 << 20  # most of it in 2 MiB pages


def test_host_tensor_shape_dtype_and_independence():
    a = host_tensor((3, 5, 7), torch.bfloat16)
    b = host_tensor((3, 5, 7), torch.bfloat16)
    assert a.shape == (3, 5, 7) and a.dtype == torch.bfloat16 and a.is_contiguous()
    a.fill_(1.5)
    assert bool((a == 1.5).all()) and int(b.count_nonzero()) == 0


def test_cpu_kv_pools_live_in_aligned_host_memory():
    cache = KVCache(2, 8, 3, 16, 64, torch.float32, torch.device("cpu"))
    for pool in (cache.k, cache.v):
        assert pool.data_ptr() % HUGE_PAGE_BYTES == 0 and pool.shape == (2, 8, 3, 16, 64)
    assert cache.bytes_per_block == 2 * 2 * 3 * 16 * 64 * 4


def test_population_in_the_background_never_changes_contents():
    allocation = allocate_host_bytes(256 << 20)
    t = allocation.tensor
    marks = torch.arange(0, t.numel(), 4093)
    t[marks] = 7  # written while the populating thread may still be running
    assert allocation.wait_populated(120)
    assert bool((t[marks] == 7).all()) and int(t.count_nonzero()) == marks.numel()


class RangeRegistry:
    """Registers host ranges as cudaHostRegister does: a range overlapping one still
    registered is refused (cudaErrorHostMemoryAlreadyRegistered), unregistering an unknown
    address too (cudaErrorHostMemoryNotRegistered). CUDA itself cannot run here."""

    ALREADY_REGISTERED = 712
    NOT_REGISTERED = 713

    def __init__(self) -> None:
        self.ranges: dict[int, int] = {}  # start -> num_bytes
        self.refused = 0

    def register(self, ptr: int, num_bytes: int) -> int:
        if any(s < ptr + num_bytes and ptr < s + n for s, n in self.ranges.items()):
            self.refused += 1
            return self.ALREADY_REGISTERED
        self.ranges[ptr] = num_bytes
        return 0

    def unregister(self, ptr: int) -> int:
        return 0 if self.ranges.pop(ptr, None) is not None else self.NOT_REGISTERED


def test_pinned_memory_is_unregistered_when_its_last_tensor_goes():
    registry = RangeRegistry()
    allocation = allocate_host_bytes(8 << 20, pin_for_cuda=True, registry=registry)
    assert allocation.is_pinned and list(registry.ranges.values()) == [8 << 20]
    view = allocation.tensor[4096:].view(torch.int32)
    del allocation
    gc.collect()
    assert len(registry.ranges) == 1  # a view still holds the memory: still registered
    view.fill_(3)
    del view
    gc.collect()
    assert registry.ranges == {}


def test_pools_built_one_after_another_are_all_pinned():
    """As `bench offload` does: engines built and dropped in one process. A new mapping of the
    same size lands on the freed range; had that range stayed registered, pinning would fail
    and the pool would silently be pageable."""
    registry = RangeRegistry()
    addresses = set()
    for _ in range(4):
        pool = host_tensor((2, 16, 2, 16, 64), torch.bfloat16, pin_for_cuda=True, registry=registry)
        addresses.add(pool.data_ptr())
        assert registry.refused == 0 and len(registry.ranges) == 1
        del pool
        gc.collect()
    assert registry.ranges == {}
    assert len(addresses) < 4  # the case in point happened: a range was handed out again
