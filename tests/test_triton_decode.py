"""The Triton paged decode kernel against float64, in Triton's interpreter (and compiled on a
GPU): ragged lengths, GQA ratios 1/3/4, head dims 64 and 128 (others padded, slow), padded
and shuffled block tables over a pool poisoned with NaN wherever no request's token lives."""

from __future__ import annotations

import pytest
import torch

from tests import triton_mode  # first: it picks Triton's mode before triton is imported
from tests.seeds import stable_seed

from neo_async.kernels.decode import paged_decode, plan_splits
from neo_async.runner.attention import pad_block_tables


def make_case(seed: int, lens: list[int], heads: tuple[int, int], head_dim: int, dtype: torch.dtype,
              block_size: int = 16, extra_width: int = 2, device: str = "cpu"):
    """A pool [blocks, Hkv, bs, D] with each request's tokens in shuffled blocks, NaN elsewhere,
    tables padded by extra_width entries (pointing at poisoned blocks)."""
    gen = torch.Generator().manual_seed(seed)
    num_q, num_kv = heads
    need = [-(-n // block_size) for n in lens]
    num_blocks = sum(need) + 3
    k = torch.full((num_blocks, num_kv, block_size, head_dim), float("nan"))
    v = torch.full_like(k, float("nan"))
    perm = torch.randperm(num_blocks, generator=gen).tolist()
    tables, start = [], 0
    for n, w in zip(lens, need, strict=True):
        table = perm[start : start + w]
        start += w
        for pos in range(n):
            block, row = table[pos // block_size], pos % block_size
            k[block, :, row] = torch.randn(num_kv, head_dim, generator=gen)
            v[block, :, row] = torch.randn(num_kv, head_dim, generator=gen)
        tables.append(table + [perm[-1]] * extra_width)  # the last blocks stay all NaN
    q = torch.randn(len(lens), num_q, head_dim, generator=gen) * 2
    table_t = pad_block_tables(tables, torch.device(device))
    to = dict(device=device)
    return q.to(**to), k.to(dtype).to(**to), v.to(dtype).to(**to), tables, table_t, torch.tensor(lens, dtype=torch.int32, **to)


def reference(q, k, v, tables, lens, scale) -> torch.Tensor:
    """float64 gather + softmax + PV per request."""
    num_kv, block_size = k.shape[1], k.shape[2]
    group = q.shape[1] // num_kv
    out = torch.empty(q.shape, dtype=torch.float64)
    for b, (table, n) in enumerate(zip(tables, lens, strict=True)):
        kb = k[table].double().cpu().transpose(0, 1).reshape(num_kv, -1, k.shape[3])[:, :n]  # [Hkv, n, D]
        vb = v[table].double().cpu().transpose(0, 1).reshape(num_kv, -1, k.shape[3])[:, :n]
        kb, vb = kb.repeat_interleave(group, 0), vb.repeat_interleave(group, 0)
        scores = torch.einsum("hd,hnd->hn", q[b].double().cpu(), kb) * scale
        out[b] = torch.einsum("hn,hnd->hd", torch.softmax(scores, -1), vb)
    return out


LENS = [1, 15, 16, 17, 70]
CASES = [((4, 4), 64), ((6, 2), 64), ((8, 2), 128)]  # G = 1, 3, 4


def check(lens, heads, head_dim, dtype, num_splits=None, device="cpu", atol=2e-5):
    seed = stable_seed(lens, heads, head_dim, str(dtype))
    q, k, v, tables, table_t, lens_t = make_case(seed, lens, heads, head_dim, dtype, device=device)
    scale = head_dim**-0.5
    out = torch.full(q.shape, float("nan"), device=device)
    paged_decode(q, k, v, table_t, lens_t, scale, out, num_splits=num_splits)
    ref = reference(q, k, v, tables, lens, scale)
    torch.testing.assert_close(out.double().cpu(), ref, rtol=0, atol=atol)
    return out


@triton_mode.interpreted
@pytest.mark.parametrize("heads,head_dim", CASES)
def test_decode_matches_float64(heads, head_dim):
    check(LENS, heads, head_dim, torch.float32)


@triton_mode.interpreted
def test_decode_reads_bfloat16_pools():
    check([3, 33], (6, 2), 64, torch.bfloat16)


@triton_mode.interpreted
@pytest.mark.parametrize("num_splits", [2, 5])
def test_forced_splits_equal_one_pass(num_splits):
    """Splits merged by log-sum-exp equal the one-split result; splits past a short request's
    length are empty and must not disturb it."""
    lens = [5, 90]
    one = check(lens, (6, 2), 64, torch.float32, num_splits=1)
    split = check(lens, (6, 2), 64, torch.float32, num_splits=num_splits)
    torch.testing.assert_close(split, one, rtol=0, atol=1e-6)


def test_split_plan_covers_the_context():
    for batch, kv_heads, tokens in [(1, 1, 1), (1, 8, 4096), (64, 8, 128), (3, 2, 100_000)]:
        num_splits, per_split = plan_splits(batch, kv_heads, tokens)
        assert 1 <= num_splits and num_splits * per_split >= tokens > (num_splits - 1) * per_split


def test_split_plan_fills_a_gpu():
    """64 requests x 8 KV heads of ~1000 tokens: one split is 512 programs, under 4 per SM of an
    H100 (132 SMs); the plan splits so that every SM gets several, each split still long."""
    tokens = 1024 + 16
    assert plan_splits(64, 8, tokens)[0] == 1  # no GPU: the fixed target
    num_splits, per_split = plan_splits(64, 8, tokens, num_sms=132)
    assert 64 * 8 * num_splits >= 8 * 132 and per_split >= 256
    assert plan_splits(64, 8, 100, num_sms=132)[0] == 1  # a short context is never cut below 256 tokens


@triton_mode.interpreted
@pytest.mark.parametrize("head_dim", [80, 96, 256])
def test_padded_head_dims(head_dim):
    check([9, 40], (8, 2), head_dim, torch.float32)


@triton_mode.interpreted
@pytest.mark.slow
def test_long_ragged_batch_with_default_splits():
    lens = [1, 255, 256, 257, 1000, 4097]
    assert plan_splits(len(lens), 1, (-(-4097 // 16) + 2) * 16)[0] > 1
    check(lens, (8, 1), 128, torch.float32)


@triton_mode.cuda
@pytest.mark.parametrize("heads,head_dim", CASES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_decode_on_gpu(heads, head_dim, dtype):
    check([1, 15, 16, 17, 255, 1000, 4097], heads, head_dim, dtype, device="cuda")


def test_decode_in_interpreter():
    """On a GPU machine (triton compiled here), the interpreter cases in a child process."""
    if triton_mode.IN_PROCESS:
        pytest.skip("the interpreter cases run in this process")
    triton_mode.run_in_interpreter(__file__)
