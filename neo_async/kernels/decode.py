"""Paged decode attention in Triton: split-KV with online softmax, GQA-aware.

One program per (request, KV head, split): it loads the G query heads sharing that KV head
once, walks its split's tokens BLOCK_N at a time (each token's block looked up in the table,
so the tile size does not depend on the pool's block size), and keeps a running max, sum and
float32 accumulator per query head. With several splits, a second kernel merges the partials
with log-sum-exp weights. The partition depends only on shapes, never on lengths read back
from the device (no host synchronisation). On a GPU the number of splits fills its SMs several
programs deep (64 requests x 8 KV heads is 512 programs: about 4 per SM on an H100, too few
to keep its memory busy); elsewhere a fixed target.

NOTE: a group of G < 16 query heads is padded to 16 rows for `tl.dot` (tensor cores take
at least 16). That costs no bandwidth: padded rows are masked loads, and a decode's scores
are 2 * G * D flops per 4 * D bytes of K/V read (bf16), far under the tensor cores' ridge
even at 16 rows; only registers grow (16 x D floats of accumulator).
"""

from __future__ import annotations

import torch
import triton.language as tl

from neo_async.kernels.launch import Kernel, next_pow2

BLOCK_N = 32  # tokens per inner step
MIN_SPLIT_TOKENS = 256  # a split covers at least this many tokens
TARGET_PROGRAMS = 256  # splits are added until B * Hkv * splits reaches this (or ctx runs out)
PROGRAMS_PER_SM = 8  # on a GPU the target is this many programs per SM
MAX_SPLITS = 64


def _split_kernel(
    q_ptr, k_ptr, v_ptr, table_ptr, lens_ptr, out_ptr, part_ptr, stat_ptr,
    stride_qb, stride_qh, stride_kb, stride_kh, stride_kt, stride_vb, stride_vh, stride_vt, stride_tb,
    stride_ob, stride_oh, scale, tokens_per_split, num_splits,
    GROUP: tl.constexpr, GROUP_PAD: tl.constexpr, HEAD_DIM: tl.constexpr, D_PAD: tl.constexpr,
    BLOCK_SIZE: tl.constexpr, BLOCK_N: tl.constexpr, DIRECT: tl.constexpr,
):
    b = tl.program_id(0)
    kv_head = tl.program_id(1)
    split = tl.program_id(2)
    seq_len = tl.load(lens_ptr + b)
    start = split * tokens_per_split
    end = tl.minimum(start + tokens_per_split, seq_len)
    g = tl.arange(0, GROUP_PAD)
    d = tl.arange(0, D_PAD)
    heads = kv_head * GROUP + g
    mask_g = g < GROUP
    mask_d = d < HEAD_DIM
    q = tl.load(q_ptr + b * stride_qb + heads[:, None] * stride_qh + d[None, :],
                mask=mask_g[:, None] & mask_d[None, :], other=0.0).to(tl.float32) * scale
    m_i = tl.full([GROUP_PAD], float("-inf"), tl.float32)
    l_i = tl.zeros([GROUP_PAD], tl.float32)
    acc = tl.zeros([GROUP_PAD, D_PAD], tl.float32)
    for n0 in range(start, end, BLOCK_N):
        n = n0 + tl.arange(0, BLOCK_N)
        mask_n = n < end
        block = tl.load(table_ptr + b * stride_tb + n // BLOCK_SIZE, mask=mask_n, other=0).to(tl.int64)
        row = n % BLOCK_SIZE
        kv_mask = mask_n[:, None] & mask_d[None, :]
        k = tl.load(k_ptr + (block * stride_kb + kv_head * stride_kh + row * stride_kt)[:, None] + d[None, :],
                    mask=kv_mask, other=0.0).to(tl.float32)
        s = tl.dot(q, tl.trans(k), input_precision="ieee")  # [GROUP_PAD, BLOCK_N]
        s = tl.where(mask_n[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        alpha = tl.exp(m_i - m_new)
        p = tl.exp(s - m_new[:, None])
        v = tl.load(v_ptr + (block * stride_vb + kv_head * stride_vh + row * stride_vt)[:, None] + d[None, :],
                    mask=kv_mask, other=0.0).to(tl.float32)
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + tl.dot(p, v, input_precision="ieee")
        m_i = m_new
    if DIRECT:
        tl.store(out_ptr + b * stride_ob + heads[:, None] * stride_oh + d[None, :], acc / l_i[:, None],
                 mask=mask_g[:, None] & mask_d[None, :])
    else:
        # partials [B, Hq, S, HEAD_DIM] and stats [B, Hq, S, 2] (max, sum), contiguous
        row_id = (b * (tl.num_programs(1) * GROUP) + heads) * num_splits + split
        tl.store(part_ptr + row_id[:, None] * HEAD_DIM + d[None, :], acc, mask=mask_g[:, None] & mask_d[None, :])
        tl.store(stat_ptr + row_id * 2, m_i, mask=mask_g)
        tl.store(stat_ptr + row_id * 2 + 1, l_i, mask=mask_g)


def _merge_kernel(
    part_ptr, stat_ptr, out_ptr, stride_ob, stride_oh, num_heads, num_splits,
    HEAD_DIM: tl.constexpr, D_PAD: tl.constexpr, S_PAD: tl.constexpr,
):
    b = tl.program_id(0)
    h = tl.program_id(1)
    s = tl.arange(0, S_PAD)
    d = tl.arange(0, D_PAD)
    mask_s = s < num_splits
    rows = (b * num_heads + h) * num_splits + s
    m = tl.load(stat_ptr + rows * 2, mask=mask_s, other=float("-inf"))
    l_s = tl.load(stat_ptr + rows * 2 + 1, mask=mask_s, other=0.0)
    m_max = tl.max(m, 0)  # finite: split 0 always holds token 0
    w = tl.where(mask_s, tl.exp(m - m_max), 0.0)  # empty splits: exp(-inf) = 0
    acc = tl.load(part_ptr + rows[:, None] * HEAD_DIM + d[None, :], mask=mask_s[:, None] & (d[None, :] < HEAD_DIM),
                  other=0.0)
    o = tl.sum(acc * w[:, None], 0) / tl.sum(l_s * w, 0)
    tl.store(out_ptr + b * stride_ob + h * stride_oh + d, o, mask=d < HEAD_DIM)


SPLIT = Kernel(_split_kernel)
MERGE = Kernel(_merge_kernel)


def plan_splits(batch: int, num_kv_heads: int, max_tokens: int, num_sms: int | None = None) -> tuple[int, int]:
    """(num_splits, tokens_per_split) for contexts of at most max_tokens (a shape-derived bound),
    on a GPU of num_sms multiprocessors (None: not a GPU)."""
    target = TARGET_PROGRAMS if num_sms is None else max(TARGET_PROGRAMS, PROGRAMS_PER_SM * num_sms)
    by_work = -(-target // max(1, batch * num_kv_heads))
    by_ctx = -(-max_tokens // MIN_SPLIT_TOKENS)
    num_splits = max(1, min(by_work, by_ctx, MAX_SPLITS))
    tokens = -(-max_tokens // num_splits)
    tokens = -(-tokens // BLOCK_N) * BLOCK_N
    return -(-max_tokens // tokens), tokens


_NUM_SMS: dict[torch.device, int] = {}


def _num_sms(device: torch.device) -> int | None:
    if device.type != "cuda":
        return None
    if device not in _NUM_SMS:
        _NUM_SMS[device] = torch.cuda.get_device_properties(device).multi_processor_count
    return _NUM_SMS[device]


def paged_decode(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    seq_lens: torch.Tensor,
    scale: float,
    out: torch.Tensor,
    num_splits: int | None = None,
) -> None:
    """out[b] = attention of q[b] over request b's first seq_lens[b] tokens.

    q [B, Hq, D] (any float dtype, last dim contiguous); k_cache, v_cache one layer of a pool,
    [num_blocks, Hkv, block_size, D]; block_tables [B, W] int32/int64 (W * block_size >= every
    length, padding entries any valid id); seq_lens [B] int32, each in 1..W * block_size;
    out [B, Hq, D] float32 (written in place). All on one device. D in 1..256.
    """
    batch, num_heads, head_dim = q.shape
    _, num_kv_heads, block_size, _ = k_cache.shape
    if batch == 0:
        return
    if num_heads % num_kv_heads or head_dim > 256:
        raise ValueError(f"unsupported heads {num_heads}/{num_kv_heads} or head_dim {head_dim}")
    for x in (q, k_cache, v_cache, out):
        if x.stride(-1) != 1:
            raise ValueError("the head dimension must be contiguous")
    group = num_heads // num_kv_heads
    max_tokens = block_tables.shape[1] * block_size
    if num_splits is None:
        num_splits, tokens_per_split = plan_splits(batch, num_kv_heads, max_tokens, _num_sms(q.device))
    else:
        tokens_per_split = -(-max_tokens // num_splits)
    direct = num_splits == 1
    d_pad = max(16, next_pow2(head_dim))
    if direct:
        part = stats = out  # unused
    else:
        part = torch.empty(batch, num_heads, num_splits, head_dim, dtype=torch.float32, device=q.device)
        stats = torch.empty(batch, num_heads, num_splits, 2, dtype=torch.float32, device=q.device)
    SPLIT.on(q)[(batch, num_kv_heads, num_splits)](
        q, k_cache, v_cache, block_tables, seq_lens, out, part, stats,
        q.stride(0), q.stride(1), *k_cache.stride()[:3], *v_cache.stride()[:3], block_tables.stride(0),
        out.stride(0), out.stride(1), scale, tokens_per_split, num_splits,
        GROUP=group, GROUP_PAD=max(16, next_pow2(group)), HEAD_DIM=head_dim, D_PAD=d_pad,
        BLOCK_SIZE=block_size, BLOCK_N=BLOCK_N, DIRECT=direct,
    )
    if not direct:
        MERGE.on(q)[(batch, num_heads)](
            part, stats, out, out.stride(0), out.stride(1), num_heads, num_splits,
            HEAD_DIM=head_dim, D_PAD=d_pad, S_PAD=max(2, next_pow2(num_splits)),
        )
