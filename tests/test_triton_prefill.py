"""The Triton chunked-prefill kernel over cached blocks against float64, in Triton's
interpreter (and compiled on a GPU): chunks at positions 0 and past a cached prefix (block
aligned or not), GQA ratios 1/3/4, head dims 64 and 128, shuffled blocks with NaN poison
wherever the request has no token. The interpreter computes float32 and float16 dots (its
bfloat16 dot is not implemented), so bfloat16 pools are checked on a GPU."""

from __future__ import annotations

import pytest
import torch

from tests import triton_mode  # first: it picks Triton's mode before triton is imported
from tests.seeds import stable_seed

from neo_async.kernels.prefill import paged_prefill


def make_case(seed: int, start_pos: int, num_tokens: int, heads: tuple[int, int], head_dim: int,
              dtype: torch.dtype, block_size: int = 16, device: str = "cpu"):
    """q [T, Hq, D]; a pool holding positions 0 .. start_pos + T - 1 in shuffled blocks (NaN
    elsewhere); the request's block ids, one spare id at the end."""
    gen = torch.Generator().manual_seed(seed)
    num_q, num_kv = heads
    ctx = start_pos + num_tokens
    need = -(-ctx // block_size)
    num_blocks = need + 4
    k = torch.full((num_blocks, num_kv, block_size, head_dim), float("nan"))
    v = torch.full_like(k, float("nan"))
    blocks = torch.randperm(num_blocks, generator=gen)[: need + 1]
    for pos in range(ctx):
        block, row = blocks[pos // block_size], pos % block_size
        k[block, :, row] = torch.randn(num_kv, head_dim, generator=gen)
        v[block, :, row] = torch.randn(num_kv, head_dim, generator=gen)
    q = torch.randn(num_tokens, num_q, head_dim, generator=gen) * 2
    return q.to(dtype).to(device), k.to(dtype).to(device), v.to(dtype).to(device), blocks.int().to(device)


def reference(q, k, v, blocks, start_pos, scale) -> torch.Tensor:
    """float64 causal attention of positions start_pos.. over positions 0.. (gathered)."""
    num_tokens, num_q, head_dim = q.shape
    num_kv = k.shape[1]
    ctx = start_pos + num_tokens
    kb = k[blocks.long()].double().cpu().transpose(0, 1).reshape(num_kv, -1, head_dim)[:, :ctx]
    vb = v[blocks.long()].double().cpu().transpose(0, 1).reshape(num_kv, -1, head_dim)[:, :ctx]
    kb, vb = kb.repeat_interleave(num_q // num_kv, 0), vb.repeat_interleave(num_q // num_kv, 0)
    scores = torch.einsum("thd,hnd->htn", q.double().cpu(), kb) * scale
    q_pos = torch.arange(start_pos, ctx).view(-1, 1)
    scores.masked_fill_(torch.arange(ctx).view(1, -1) > q_pos, float("-inf"))
    return torch.einsum("htn,hnd->thd", torch.softmax(scores, -1), vb)


CASES = [((4, 4), 64), ((6, 2), 64), ((8, 2), 128)]  # G = 1, 3, 4
ATOL = {torch.float32: 2e-5, torch.float16: 1e-2, torch.bfloat16: 5e-2}


def check(start_pos, num_tokens, heads, head_dim, dtype, device="cpu"):
    seed = stable_seed(start_pos, num_tokens, heads, head_dim, str(dtype))
    q, k, v, blocks = make_case(seed, start_pos, num_tokens, heads, head_dim, dtype, device=device)
    scale = head_dim**-0.5
    out = torch.full(q.shape, float("nan"), device=device)
    paged_prefill(q, k, v, blocks, start_pos, scale, out)
    torch.testing.assert_close(out.double().cpu(), reference(q, k, v, blocks, start_pos, scale), rtol=0, atol=ATOL[dtype])


@triton_mode.interpreted
@pytest.mark.parametrize("heads,head_dim", CASES)
@pytest.mark.parametrize("start_pos,num_tokens", [(0, 21), (37, 19)])
def test_prefill_matches_float64(start_pos, num_tokens, heads, head_dim):
    check(start_pos, num_tokens, heads, head_dim, torch.float32)


@triton_mode.interpreted
@pytest.mark.parametrize("start_pos,num_tokens", [(32, 1), (16, 40)])
def test_prefill_at_block_boundaries(start_pos, num_tokens):
    check(start_pos, num_tokens, (6, 2), 64, torch.float32)


@triton_mode.interpreted
def test_prefill_16_bit_dots():
    check(20, 12, (8, 2), 64, torch.float16)


@triton_mode.interpreted
@pytest.mark.slow
@pytest.mark.parametrize("head_dim", [80, 256])
def test_prefill_padded_head_dims_and_long_prefix(head_dim):
    check(300, 70, (8, 2), head_dim, torch.float32)


def test_prefill_refuses_too_few_blocks():
    q, k, v, blocks = make_case(1, 20, 5, (4, 2), 64, torch.float32)
    with pytest.raises(ValueError, match="cover"):
        paged_prefill(q, k, v, blocks[:1], 20, 0.125, torch.empty(q.shape))


@triton_mode.cuda
@pytest.mark.parametrize("heads,head_dim", CASES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_prefill_on_gpu(heads, head_dim, dtype):
    for start_pos, num_tokens in [(0, 300), (1000, 77), (4096, 512)]:
        check(start_pos, num_tokens, heads, head_dim, dtype, device="cuda")


def test_prefill_in_interpreter():
    """On a GPU machine (triton compiled here), the interpreter cases in a child process."""
    if triton_mode.IN_PROCESS:
        pytest.skip("the interpreter cases run in this process")
    triton_mode.run_in_interpreter(__file__)
