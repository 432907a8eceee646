"""KVCache.decode (rust_cpuattn on the CPU) and the torch decode path against float64, on
random pools with ragged lengths and shuffled block tables."""

from __future__ import annotations

import pytest
import torch

from neo_async.runner.attention import KVCache, decode_attention, pad_block_tables


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
def test_decode_backends_match_float64(dtype, heads, head_dim):
    cache, q, tables, lens = _random_case(dtype, seed=hash((str(dtype), heads, head_dim)) % 10_000, heads=heads, head_dim=head_dim)
    assert cache.use_rust_decode, "rust_cpuattn must be importable in the test environment"
    table_t = pad_block_tables(tables, torch.device("cpu"))
    lens_t = torch.tensor(lens, dtype=torch.int32)
    scale = head_dim**-0.5
    for layer in range(cache.k.shape[0]):
        ref = _reference(cache, layer, q, tables, lens, scale)
        fast = cache.decode(layer, q, table_t, lens_t, scale)
        slow = decode_attention(cache, layer, q, table_t, lens_t, scale)
        assert fast.dtype == slow.dtype == torch.float32
        torch.testing.assert_close(fast.double(), ref, rtol=0, atol=2e-5)
        torch.testing.assert_close(slow.double(), ref, rtol=0, atol=2e-5)
