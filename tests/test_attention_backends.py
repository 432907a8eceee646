"""KVCache.decode through rust_cpuattn (the CPU device) and through torch: both store the new
rows exactly and match float64, on random pools with ragged lengths and shuffled block tables."""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from neo_async.runner.attention import KVCache, pad_block_tables
from tests.seeds import stable_seed


def _reference(cache: KVCache, layer: int, q: torch.Tensor, tables: list[list[int]], lens: list[int], scale: float) -> torch.Tensor:
    out = torch.empty(q.shape, dtype=torch.float64)
    group = q.shape[1] // cache.k.shape[2]
    for b, (table, n) in enumerate(zip(tables, lens, strict=True)):
        k, v = cache.gather(layer, torch.tensor(table), n)  # [Hkv, n, D]
        k = k.double().repeat_interleave(group, 0)
        v = v.double().repeat_interleave(group, 0)
        scores = torch.einsum("hd,hnd->hn", q[b].double(), k) * scale
        out[b] = torch.einsum("hn,hnd->hd", torch.softmax(scores, -1), v)
    return out


def _random_case(dtype: torch.dtype, seed: int, heads=(9, 3), head_dim=64, block_size=16):
    gen = torch.Generator().manual_seed(seed)
    num_layers, num_blocks = 3, 64
    cache = KVCache(num_layers, num_blocks, heads[1], block_size, head_dim, dtype, torch.device("cpu"))
    cache.k.copy_(torch.randn(cache.k.shape, generator=gen))
    cache.v.copy_(torch.randn(cache.v.shape, generator=gen))
    lens = [1, 17, 150, 33, 16, 64]
    perm = torch.randperm(num_blocks, generator=gen).tolist()
    tables, start = [], 0
    for n in lens:
        need = -(-n // block_size)
        tables.append(perm[start : start + need])
        start += need
    q = torch.randn(len(lens), heads[0], head_dim, generator=gen).to(dtype)
    return cache, q, tables, lens


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("heads,head_dim", [((9, 3), 64), ((8, 8), 128), ((8, 2), 128)])
def test_decode_backends_store_the_new_rows_and_match_float64(dtype, heads, head_dim):
    seed = stable_seed(str(dtype), heads, head_dim)
    fast_cache, q, tables, lens = _random_case(dtype, seed=seed, heads=heads, head_dim=head_dim)
    assert fast_cache.use_rust_decode, "rust_cpuattn must be importable in the test environment"
    slow_cache, _, _, _ = _random_case(dtype, seed=seed, heads=heads, head_dim=head_dim)
    slow_cache.use_rust_decode = False
    table_t = pad_block_tables(tables, torch.device("cpu"))
    lens_t = torch.tensor(lens, dtype=torch.int32)
    scale = head_dim**-0.5
    gen = torch.Generator().manual_seed(3)
    for layer in range(fast_cache.k.shape[0]):
        k_new = torch.randn(len(lens), heads[1], head_dim, generator=gen)
        v_new = torch.randn(len(lens), heads[1], head_dim, generator=gen)
        results = []
        for cache in (fast_cache, slow_cache):
            out = torch.full(q.shape, float("nan"))
            cache.decode(layer, q, table_t, lens_t, scale, k_new=k_new, v_new=v_new, out=out)
            results.append(out)
        for b, (table, n) in enumerate(zip(tables, lens, strict=True)):
            block, row = table[(n - 1) // fast_cache.block_size], (n - 1) % fast_cache.block_size
            for cache in (fast_cache, slow_cache):
                assert torch.equal(cache.k[layer, block, :, row], k_new[b].to(dtype))
                assert torch.equal(cache.v[layer, block, :, row], v_new[b].to(dtype))
        assert torch.equal(fast_cache.k, slow_cache.k) and torch.equal(fast_cache.v, slow_cache.v)
        ref = _reference(fast_cache, layer, q, tables, lens, scale)
        for out in results:
            torch.testing.assert_close(out.double(), ref, rtol=0, atol=2e-5)


class _Copies(TorchDispatchMode):
    """The addresses of the tensors copied inside the block (clone, or a copying `to`/
    `contiguous`); an observer: every op still runs."""

    def __init__(self) -> None:
        super().__init__()
        self.sources: list[int] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.overloadpacket.__name__ in ("clone", "_to_copy"):
            self.sources.append(args[0].data_ptr())
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("use_rust", [True, False])
def test_decode_run_at_once_copies_no_input_and_a_job_copies_them(use_rust):
    """`decode` runs at once, so q, k_new, v_new are read where they are (the device pool's
    decode on a GPU is this call, every layer); `decode_job` may run later, so it takes copies."""
    cache, q, tables, lens = _random_case(torch.float32, seed=5)
    cache.use_rust_decode = use_rust
    table_t, lens_t = pad_block_tables(tables, torch.device("cpu")), torch.tensor(lens, dtype=torch.int32)
    k_new = torch.randn(len(lens), 3, 64)
    v_new = torch.randn(len(lens), 3, 64)
    out = torch.empty(q.shape)
    inputs = {q.data_ptr(), k_new.data_ptr(), v_new.data_ptr()}
    with _Copies() as copies:
        cache.decode(0, q, table_t, lens_t, 0.125, k_new=k_new, v_new=v_new, out=out)
    assert inputs.isdisjoint(copies.sources)
    with _Copies() as copies:
        job = cache.decode_job(1, q, table_t, lens_t, 0.125, k_new=k_new, v_new=v_new, out=out)
    assert inputs <= set(copies.sources)
    expected_q = q.clone()
    q.fill_(0)  # the caller reuses its inputs at once
    job.run()
    job.finish()
    ref = _reference(cache, 1, expected_q, tables, lens, 0.125)
    torch.testing.assert_close(out.double(), ref, rtol=0, atol=2e-5)
