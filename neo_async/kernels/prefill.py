"""Chunked prefill attention over cached blocks, in Triton (causal, GQA-aware, online softmax).

A chunk's T query tokens sit at positions start_pos .. start_pos + T - 1; the keys and values
of positions 0 .. start_pos + T - 1 (the cached prefix and the chunk itself, already stored)
are read from the pool through the request's block list. One program per (BLOCK_M query
tokens, KV head): its rows are the BLOCK_M tokens times the G query heads sharing that KV
head, so each K/V tile is loaded once for the group. No [T, ctx] score matrix is ever
materialised.
"""

from __future__ import annotations

import torch
import triton.language as tl

from neo_async.kernels.launch import Kernel, next_pow2

ROWS = 64  # (query token, query head) rows per program
BLOCK_N = 32  # keys per inner step


def _prefill_kernel(
    q_ptr, k_ptr, v_ptr, blocks_ptr, out_ptr,
    stride_qt, stride_qh, stride_kb, stride_kh, stride_kt, stride_vb, stride_vh, stride_vt,
    stride_ot, stride_oh, num_tokens, start_pos, scale,
    GROUP: tl.constexpr, GROUP_PAD: tl.constexpr, HEAD_DIM: tl.constexpr, D_PAD: tl.constexpr,
    BLOCK_SIZE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, IS_FP32: tl.constexpr,
):
    tile = tl.program_id(0)
    kv_head = tl.program_id(1)
    r = tl.arange(0, BLOCK_M * GROUP_PAD)
    t = tile * BLOCK_M + r // GROUP_PAD  # query token of each row
    g = r % GROUP_PAD
    d = tl.arange(0, D_PAD)
    mask_r = (t < num_tokens) & (g < GROUP)
    mask_d = d < HEAD_DIM
    heads = kv_head * GROUP + g
    q = tl.load(q_ptr + t[:, None] * stride_qt + heads[:, None] * stride_qh + d[None, :],
                mask=mask_r[:, None] & mask_d[None, :], other=0.0)
    if IS_FP32:
        q = q.to(tl.float32) * scale
    else:
        q = q.to(k_ptr.dtype.element_ty)
    q_pos = start_pos + t
    m_i = tl.full([BLOCK_M * GROUP_PAD], float("-inf"), tl.float32)
    l_i = tl.full([BLOCK_M * GROUP_PAD], 0.0, tl.float32)
    acc = tl.full([BLOCK_M * GROUP_PAD, D_PAD], 0.0, tl.float32)
    end = start_pos + tl.minimum((tile + 1) * BLOCK_M, num_tokens)  # keys the tile's last token sees
    for n0 in range(0, end, BLOCK_N):
        n = n0 + tl.arange(0, BLOCK_N)
        mask_n = n < end
        block = tl.load(blocks_ptr + n // BLOCK_SIZE, mask=mask_n, other=0).to(tl.int64)
        row = n % BLOCK_SIZE
        kv_mask = mask_n[:, None] & mask_d[None, :]
        k = tl.load(k_ptr + (block * stride_kb + kv_head * stride_kh + row * stride_kt)[:, None] + d[None, :],
                    mask=kv_mask, other=0.0)
        if IS_FP32:
            s = tl.dot(q, tl.trans(k.to(tl.float32)), input_precision="ieee")
        else:
            s = tl.dot(q, tl.trans(k)) * scale
        visible = (n[None, :] <= q_pos[:, None]) & mask_n[None, :]
        s = tl.where(visible, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # padded rows see no key at all
        alpha = tl.exp(m_i - m_safe)
        p = tl.exp(s - m_safe[:, None])
        v = tl.load(v_ptr + (block * stride_vb + kv_head * stride_vh + row * stride_vt)[:, None] + d[None, :],
                    mask=kv_mask, other=0.0)
        l_i = l_i * alpha + tl.sum(p, 1)
        if IS_FP32:
            acc = acc * alpha[:, None] + tl.dot(p, v.to(tl.float32), input_precision="ieee")
        else:
            acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
        m_i = m_new
    l_i = tl.where(mask_r, l_i, 1.0)
    tl.store(out_ptr + t[:, None] * stride_ot + heads[:, None] * stride_oh + d[None, :], acc / l_i[:, None],
             mask=mask_r[:, None] & mask_d[None, :])


PREFILL = Kernel(_prefill_kernel)


def paged_prefill(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_ids: torch.Tensor,
    start_pos: int,
    scale: float,
    out: torch.Tensor,
) -> None:
    """Causal attention of one request's chunk over its cached blocks.

    q [T, Hq, D] at positions start_pos .. start_pos + T - 1 (in the pool's dtype or float32);
    k_cache, v_cache one layer of a pool, [num_blocks, Hkv, block_size, D], holding the
    request's positions 0 .. start_pos + T - 1 already; block_ids [>= ceil((start_pos + T) /
    block_size)] int32/int64; out [T, Hq, D] float32, written in place. A float32 pool is
    computed in float32 throughout; a 16-bit pool multiplies in its dtype (q rounded to it),
    accumulating in float32.
    """
    num_tokens, num_heads, head_dim = q.shape
    _, num_kv_heads, block_size, _ = k_cache.shape
    if num_tokens == 0:
        return
    if num_heads % num_kv_heads or head_dim > 256:
        raise ValueError(f"unsupported heads {num_heads}/{num_kv_heads} or head_dim {head_dim}")
    if block_ids.shape[0] * block_size < start_pos + num_tokens:
        raise ValueError("block_ids do not cover the chunk")
    for x in (q, k_cache, v_cache, out):
        if x.stride(-1) != 1:
            raise ValueError("the head dimension must be contiguous")
    group = num_heads // num_kv_heads
    group_pad = next_pow2(group)
    block_m = max(1, ROWS // group_pad)
    PREFILL.on(q)[(-(-num_tokens // block_m), num_kv_heads)](
        q, k_cache, v_cache, block_ids, out,
        q.stride(0), q.stride(1), *k_cache.stride()[:3], *v_cache.stride()[:3],
        out.stride(0), out.stride(1), num_tokens, start_pos, scale,
        GROUP=group, GROUP_PAD=group_pad, HEAD_DIM=head_dim, D_PAD=max(16, next_pow2(head_dim)),
        BLOCK_SIZE=block_size, BLOCK_M=block_m, BLOCK_N=BLOCK_N, IS_FP32=k_cache.dtype == torch.float32,
    )
