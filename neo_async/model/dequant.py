"""GGUF tensor bytes -> weights in the model's dtype, chunk by chunk, with vectorised torch.

Each block kernel maps uint8 [num_blocks, type_size] to float32 [num_blocks, block_size] with
the same float32 operations, in the same order, as the `gguf` package's numpy
`dequantize_blocks` (the reference): results are bit-identical in float32, and so after
rounding to bfloat16. F32/F16/BF16 tensors are copied (one exact conversion); other types
without a kernel here go through `gguf.quants.dequantize`.

A tensor is written in chunks, which keep the float32 intermediates near cache size and can
run on several threads at once. torch costs microseconds per call, and per row of an op's
innermost loop: kernels unpack bits in whole int64 words and move bytes in long rows.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterable

import numpy as np
import torch
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType as T
from gguf.quants import dequantize as gguf_dequantize

CHUNK_ELEMENTS = 1 << 19  # 2 MiB of float32 per chunk: a few torch calls per chunk, most of it in cache

# Bit fields are unpacked eight bytes at a time: in each int64 word, `>> shift` moves one
# field of every byte to the bottom of that byte, and a mask with the field's width in each
# byte keeps it (bits shifted in from the next byte land above the field and are masked off).
_NIBBLES = ((0, 4), 0x0F0F0F0F0F0F0F0F)
_CRUMBS = ((0, 2, 4, 6), 0x0303030303030303)
_BITS = (tuple(range(8)), 0x0101010101010101)
_BIT_INDEX = torch.arange(32, dtype=torch.int32)


def _f16(blocks: torch.Tensor, start: int) -> torch.Tensor:
    """The float16 at byte `start` of each block, as float32 [num_blocks, 1]."""
    return blocks[:, start : start + 2].view(torch.float16).float()


def _words(packed: torch.Tensor, num_groups: int) -> torch.Tensor:
    """uint8 [n, B] -> int64 [n, num_groups, B / (8 * num_groups)] over the same bytes."""
    if packed.storage_offset() % 8 or packed.stride(0) % 8:
        packed = packed.contiguous()
    return packed.view(torch.int64).view(packed.shape[0], num_groups, -1)


def _unpack(words: torch.Tensor, fields: tuple[tuple[int, ...], int]) -> torch.Tensor:
    """int64 [n, G, W] -> int64 [n, G, F, W]: field f of every byte, as bytes. Read as uint8,
    each group of 8W bytes becomes F runs of 8W values, field 0's first."""
    shifts, mask = fields
    return torch.stack([(words >> shift if shift else words) & mask for shift in shifts], dim=2)


def _nibbles(packed: torch.Tensor) -> torch.Tensor:
    """uint8 [n, 16] -> uint8 [n, 32]: the low nibbles, then the high nibbles.

    Each 16-byte half is moved as one complex128 element: a 1-D strided copy, where stacking
    [n, 2]-word rows would pay torch's per-row overhead.
    """
    words = _words(packed, 1).view(packed.shape[0], 2)
    mask = _NIBBLES[1]
    out = torch.empty(packed.shape[0], 32, dtype=torch.uint8)
    halves = out.view(torch.complex128)  # [n, 2]
    halves[:, 0].copy_((words & mask).view(torch.complex128)[:, 0])
    halves[:, 1].copy_(((words >> 4) & mask).view(torch.complex128)[:, 0])
    return out


def _u32_bits(qh: torch.Tensor) -> torch.Tensor:
    """uint8 [n, 4] (a little-endian u32) -> int32 [n, 32]: bit j of the u32 at j."""
    word = qh.contiguous().view(torch.int32)  # [n, 1]
    return (word >> _BIT_INDEX) & 1


def _as_bytes(words: torch.Tensor, *shape: int) -> torch.Tensor:
    return words.view(torch.uint8).view(*shape)


def _q4_0(b: torch.Tensor, out: torch.Tensor) -> None:
    out.copy_(_nibbles(b[:, 2:18])).sub_(8).mul_(_f16(b, 0))


def _q4_1(b: torch.Tensor, out: torch.Tensor) -> None:
    out.copy_(_nibbles(b[:, 4:20])).mul_(_f16(b, 0)).add_(_f16(b, 2))


def _q5_0(b: torch.Tensor, out: torch.Tensor) -> None:
    q = _nibbles(b[:, 6:22]) | (_u32_bits(b[:, 2:6]) << 4)  # int32 [n, 32]
    out.copy_(q).sub_(16).mul_(_f16(b, 0))


def _q5_1(b: torch.Tensor, out: torch.Tensor) -> None:
    q = _nibbles(b[:, 8:24]) | (_u32_bits(b[:, 4:8]) << 4)  # int32 [n, 32]
    out.copy_(q).mul_(_f16(b, 0)).add_(_f16(b, 2))


def _q8_0(b: torch.Tensor, out: torch.Tensor) -> None:
    out.copy_(b[:, 2:34].view(torch.int8)).mul_(_f16(b, 0))


def _q2_k(b: torch.Tensor, out: torch.Tensor) -> None:
    n = b.shape[0]
    scales = b[:, 0:16]
    dl = (_f16(b, 80) * (scales & 15).float()).view(n, 16, 1)
    ml = (_f16(b, 82) * (scales >> 4).float()).view(n, 16, 1)
    q = _unpack(_words(b[:, 16:80], 2), _CRUMBS)  # 2 runs of 32 bytes -> 4 crumbs each
    out.view(n, 16, 16).copy_(_as_bytes(q, n, 16, 16)).mul_(dl).sub_(ml)


def _q3_k(b: torch.Tensor, out: torch.Tensor) -> None:
    n = b.shape[0]
    packed = b[:, 96:108]
    low = torch.cat((packed[:, :8] & 15, packed[:, :8] >> 4), dim=1)  # [n, 16]
    high = torch.cat([(packed[:, 8:] >> shift) & 3 for shift in (0, 2, 4, 6)], dim=1)
    scales = (low | (high << 4)).view(torch.int8).float().sub_(32)
    dl = (_f16(b, 108) * scales).view(n, 16, 1)
    ql = _unpack(_words(b[:, 32:96], 2), _CRUMBS).view(n, 32)
    qh = _unpack(_words(b[:, 0:32], 1), _BITS).view(n, 32)
    # q = ql - 4 where the mask bit is 0: ql + 4 * bit - 4, with ql + 4 * bit = ql | bit << 2
    q = ql | (qh << 2)
    out.view(n, 16, 16).copy_(_as_bytes(q, n, 16, 16)).sub_(4).mul_(dl)


def _k_scales(b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Q4_K/Q5_K: d * scale and dmin * min of the 8 sub-blocks, float32 [n, 8, 1] each.

    The 12 bytes at 4 hold 8 six-bit scales and 8 six-bit mins, unpacked four at a time in
    int32 words over whole columns (1-D ops: no per-block overhead):
        scales 0-3 = D & 63,  4-7 = (MD & 15) | (D >> 6) << 4   (bytewise)
        mins   0-3 = M & 63,  4-7 = (MD >> 4) | (M >> 6) << 4
    with D, M, MD the words at bytes 4, 8, 12.
    """
    n = b.shape[0]
    words = b.view(torch.int32)  # [n, type_size / 4]
    d, m, md = words[:, 1], words[:, 2], words[:, 3]
    packed = torch.empty(n, 4, dtype=torch.int32)  # scales 0-3, 4-7, mins 0-3, 4-7
    torch.bitwise_and(d, 0x3F3F3F3F, out=packed[:, 0])
    torch.bitwise_or(md & 0x0F0F0F0F, (d >> 2) & 0x30303030, out=packed[:, 1])
    torch.bitwise_and(m, 0x3F3F3F3F, out=packed[:, 2])
    torch.bitwise_or((md >> 4) & 0x0F0F0F0F, (m >> 2) & 0x30303030, out=packed[:, 3])
    halves = b.view(torch.float16)
    factors = torch.stack((halves[:, 0].float(), halves[:, 1].float()), dim=1)  # [n, 2]: d, dmin
    products = packed.view(torch.uint8).view(n, 2, 8).float().mul_(factors.unsqueeze(-1))
    return products[:, 0].unsqueeze(-1), products[:, 1].unsqueeze(-1)


def _nibble_runs(words: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """words int64 [n, G, 4] (G runs of 32 bytes) -> out float32 [n, 2G, 32]: per run, its
    low nibbles then its high nibbles (written through strided views: no byte shuffle)."""
    n, groups = words.shape[:2]
    mask = _NIBBLES[1]
    halves = out.view(n, groups, 2, 32)
    halves[:, :, 0].copy_((words & mask).view(torch.uint8))
    halves[:, :, 1].copy_(((words >> 4) & mask).view(torch.uint8))
    return out


def _q4_k(b: torch.Tensor, out: torch.Tensor) -> None:
    n = b.shape[0]
    d, dm = _k_scales(b)
    _nibble_runs(_words(b[:, 16:144], 4), out.view(n, 8, 32)).mul_(d).sub_(dm)


def _q5_k(b: torch.Tensor, out: torch.Tensor) -> None:
    n = b.shape[0]
    d, dm = _k_scales(b)
    q = _unpack(_words(b[:, 48:176], 4), _NIBBLES).view(n, 32)
    qh = _unpack(_words(b[:, 16:48], 1), _BITS).view(n, 32)
    out.view(n, 8, 32).copy_(_as_bytes(q | (qh << 4), n, 8, 32)).mul_(d).sub_(dm)


def _q6_k(b: torch.Tensor, out: torch.Tensor) -> None:
    n = b.shape[0]
    d = (_f16(b, 208) * b[:, 192:208].view(torch.int8).float()).view(n, 16, 1)
    ql = _unpack(_words(b[:, 0:128], 2), _NIBBLES).view(n, 32)  # 2 runs of 64 bytes
    qh = _unpack(_words(b[:, 128:192], 2), _CRUMBS).view(n, 32)  # 2 runs of 32 bytes
    out.view(n, 16, 16).copy_(_as_bytes(ql | (qh << 4), n, 16, 16)).sub_(32).mul_(d)


# Stored as floats: viewed, not computed; copying them to any dtype is one exact conversion.
_FLOAT_TYPES = {T.F32: torch.float32, T.F16: torch.float16, T.BF16: torch.bfloat16}

BLOCK_KERNELS: dict[T, Callable[[torch.Tensor, torch.Tensor], None]] = {
    T.Q4_0: _q4_0,
    T.Q4_1: _q4_1,
    T.Q5_0: _q5_0,
    T.Q5_1: _q5_1,
    T.Q8_0: _q8_0,
    T.Q2_K: _q2_k,
    T.Q3_K: _q3_k,
    T.Q4_K: _q4_k,
    T.Q5_K: _q5_k,
    T.Q6_K: _q6_k,
}


def dequantize_blocks(blocks: torch.Tensor, ggml_type: T, out: torch.Tensor) -> torch.Tensor:
    """uint8 [num_blocks, type_size] -> out, float32 [num_blocks, block_size]; returns out."""
    kernel = BLOCK_KERNELS.get(ggml_type)
    if kernel is not None:
        kernel(blocks, out)
    elif ggml_type in _FLOAT_TYPES:
        out.copy_(blocks.view(_FLOAT_TYPES[ggml_type]))
    else:
        out.copy_(torch.from_numpy(gguf_dequantize(blocks.numpy(), ggml_type)).view(out.shape))
    return out


Chunk = tuple[torch.Tensor, torch.Tensor, T]  # (dest part, uint8 blocks [num_blocks, type_size], ggml type)


def dequantize_into(dest: torch.Tensor, raw: np.ndarray, ggml_type: T) -> None:
    """Write the tensor stored in `raw` (uint8, rows of blocks) into `dest`, converting to
    dest's dtype and device (see `chunks`)."""
    for dest_chunk, blocks in chunks(dest, raw, ggml_type):
        dequantize_chunk(dest_chunk, blocks, ggml_type)


def chunks(dest: torch.Tensor, raw: np.ndarray, ggml_type: T) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Split the writing of `raw` into `dest` into independent pieces (dest part, uint8 blocks
    [num_blocks, type_size]) of about CHUNK_ELEMENTS elements, for `dequantize_chunk`.

    dest's elements, in index order, are the stored elements in storage order; dest may be a
    strided view (a permutation of row groups) as long as each dest[i] covers whole rows.
    """
    block_size, type_size = GGML_QUANT_SIZES[ggml_type]
    if dest.dim() == 1:
        dest = dest.view(1, -1)
    per_item = dest[0].numel()  # elements under one index of dest's first dimension
    if dest.numel() * type_size != raw.size * block_size or per_item % block_size:
        raise ValueError(f"{ggml_type.name} data of {raw.size} bytes does not fill {tuple(dest.shape)}")
    blocks = torch.from_numpy(raw).view(-1, type_size)
    blocks_per_item = per_item // block_size
    step = max(1, CHUNK_ELEMENTS // per_item)
    return [
        (dest[start : start + step], blocks[start * blocks_per_item : (start + step) * blocks_per_item])
        for start in range(0, dest.shape[0], step)
    ]


def dequantize_chunks(work: Iterable[Chunk], num_threads: int) -> None:
    """Run `dequantize_chunk` over `work`, in order, on `num_threads` worker threads (whose
    scratch buffers go with them).

    torch runs single-threaded meanwhile (each thread is one core's worth of work): a
    thread never waits for another, as it would at every op's OpenMP barrier, which costs
    a scheduler time slice whenever another process holds a core.
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with ThreadPoolExecutor(max(1, num_threads), thread_name_prefix="dequantize") as pool:
            for _ in pool.map(lambda chunk: dequantize_chunk(*chunk), work):
                pass
    finally:
        torch.set_num_threads(previous)


def dequantize_chunk(dest: torch.Tensor, blocks: torch.Tensor, ggml_type: T) -> None:
    """blocks uint8 [num_blocks, type_size] -> dest (any dtype, device and strides), whose
    elements in index order are the blocks' elements in order."""
    if ggml_type in _FLOAT_TYPES:
        dest.copy_(blocks.view(_FLOAT_TYPES[ggml_type]).view(dest.shape))
    elif dest.dtype == torch.float32 and dest.device.type == "cpu" and dest.is_contiguous():
        dequantize_blocks(blocks, ggml_type, dest.view(blocks.shape[0], -1))
    else:
        values = _scratch(blocks.shape[0] * GGML_QUANT_SIZES[ggml_type][0]).view(blocks.shape[0], -1)
        dest.copy_(dequantize_blocks(blocks, ggml_type, values).view(dest.shape))


_local = threading.local()


def _scratch(num_elements: int) -> torch.Tensor:
    """This thread's float32 buffer of at least num_elements (a fresh one per chunk would
    be fresh memory each time: page faults on every chunk)."""
    buffer = getattr(_local, "buffer", None)
    if buffer is None or buffer.numel() < num_elements:
        buffer = _local.buffer = torch.empty(max(num_elements, CHUNK_ELEMENTS))
    return buffer[:num_elements]
