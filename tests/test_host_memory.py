"""Host memory for KV pools: 2 MiB-aligned, zeroed, backed by transparent huge pages where the
kernel allows them (THP in `madvise` or `always` mode), and used by every pool in host memory."""

from pathlib import Path

import pytest
import torch

from neo_async.kv.host_memory import HUGE_PAGE_BYTES, allocate_host_bytes, anon_huge_page_bytes, host_tensor
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
