"""GGUF dequantisation (model/dequant.py) against the `gguf` package and a float64 reference
written from the per-block formulas of ggml's `dequantize_row_*`.

Every kernel's float32 result must equal both exactly: products of a float16 scale and a
small integer are exact in float32, so each element is rounded once, as in float64 then
rounded to float32.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType as T
from gguf.quants import dequantize as gguf_dequantize

from neo_async.bench.synthetic_gguf import random_blocks
from neo_async.model.dequant import BLOCK_KERNELS, chunks, dequantize_into

NUM_BLOCKS = 7


# Integer fields are read with .tolist(): Python ints, never wrapping uint8 arithmetic.
def _f16(block: np.ndarray, offset: int) -> float:
    return float(block[offset : offset + 2].view(np.float16)[0])


def _u32(block: np.ndarray, offset: int) -> int:
    return int(block[offset : offset + 4].view(np.uint32)[0])


def _ref_q4_0(x: np.ndarray) -> list[float]:
    d, qs = _f16(x, 0), x[2:18].tolist()
    return [d * ((qs[j] & 15) - 8) for j in range(16)] + [d * ((qs[j] >> 4) - 8) for j in range(16)]


def _ref_q4_1(x: np.ndarray) -> list[float]:
    d, m, qs = _f16(x, 0), _f16(x, 2), x[4:20].tolist()
    return [d * (qs[j] & 15) + m for j in range(16)] + [d * (qs[j] >> 4) + m for j in range(16)]


def _ref_q5(x: np.ndarray, has_min: bool) -> list[float]:
    d = _f16(x, 0)
    m = _f16(x, 2) if has_min else 0.0
    qh = _u32(x, 4 if has_min else 2)
    qs = (x[8:24] if has_min else x[6:22]).tolist()
    offset = 0 if has_min else 16
    low = [((qs[j] & 15) | (((qh >> j) & 1) << 4)) - offset for j in range(16)]
    high = [((qs[j] >> 4) | (((qh >> (j + 16)) & 1) << 4)) - offset for j in range(16)]
    return [d * q + m for q in low + high] if has_min else [d * q for q in low + high]  # -0.0 stays -0.0


def _ref_q8_0(x: np.ndarray) -> list[float]:
    d = _f16(x, 0)
    return [d * q for q in x[2:34].view(np.int8).tolist()]


def _ref_q2_k(x: np.ndarray) -> list[float]:
    scales, qs, d, dmin = x[0:16].tolist(), x[16:80].tolist(), _f16(x, 80), _f16(x, 82)
    y, index = [], 0
    for half in range(2):
        q = qs[32 * half : 32 * half + 32]
        for shift in (0, 2, 4, 6):
            for part in range(2):
                sc = scales[index]
                index += 1
                y += [d * (sc & 15) * ((q[16 * part + l] >> shift) & 3) - dmin * (sc >> 4) for l in range(16)]
    return y


def _ref_q3_k(x: np.ndarray) -> list[float]:
    hmask, qs, packed, d = x[0:32].tolist(), x[32:96].tolist(), x[96:108].tolist(), _f16(x, 108)
    scales = []
    for j in range(16):
        low = packed[j] & 15 if j < 8 else packed[j - 8] >> 4
        high = (packed[8 + j % 4] >> (2 * (j // 4))) & 3
        scales.append((low | (high << 4)) - 32)
    y, index, bit = [], 0, 0
    for half in range(2):
        q = qs[32 * half : 32 * half + 32]
        for shift in (0, 2, 4, 6):
            for part in range(2):
                dl = d * scales[index]
                index += 1
                for l in range(16 * part, 16 * part + 16):
                    y.append(dl * (((q[l] >> shift) & 3) - (0 if hmask[l] >> bit & 1 else 4)))
            bit += 1
    return y


def _k_scale_min(packed: list[int], j: int) -> tuple[int, int]:
    if j < 4:
        return packed[j] & 63, packed[j + 4] & 63
    return (packed[j + 4] & 15) | ((packed[j - 4] >> 6) << 4), (packed[j + 4] >> 4) | ((packed[j] >> 6) << 4)


def _ref_q45_k(x: np.ndarray, five_bits: bool) -> list[float]:
    d, dmin, packed = _f16(x, 0), _f16(x, 2), x[4:16].tolist()
    qh, qs = (x[16:48].tolist(), x[48:176].tolist()) if five_bits else ([], x[16:144].tolist())
    y = []
    for group in range(4):
        q = qs[32 * group : 32 * group + 32]
        for nibble in range(2):
            sub = 2 * group + nibble
            sc, m = _k_scale_min(packed, sub)
            for l in range(32):
                value = (q[l] >> 4) if nibble else (q[l] & 15)
                if five_bits:
                    value += 16 * ((qh[l] >> sub) & 1)
                y.append(d * sc * value - dmin * m)
    return y


def _ref_q6_k(x: np.ndarray) -> list[float]:
    ql, qh, scales, d = x[0:128].tolist(), x[128:192].tolist(), x[192:208].view(np.int8).tolist(), _f16(x, 208)
    y = [0.0] * 256
    for half in range(2):
        lo, hi, sc, out = ql[64 * half :], qh[32 * half :], scales[8 * half :], 128 * half
        for l in range(32):
            s = l // 16
            q1 = ((lo[l] & 15) | ((hi[l] & 3) << 4)) - 32
            q2 = ((lo[l + 32] & 15) | (((hi[l] >> 2) & 3) << 4)) - 32
            q3 = ((lo[l] >> 4) | (((hi[l] >> 4) & 3) << 4)) - 32
            q4 = ((lo[l + 32] >> 4) | (((hi[l] >> 6) & 3) << 4)) - 32
            y[out + l] = d * sc[s] * q1
            y[out + l + 32] = d * sc[s + 2] * q2
            y[out + l + 64] = d * sc[s + 4] * q3
            y[out + l + 96] = d * sc[s + 6] * q4
    return y


REFERENCES = {
    T.Q4_0: _ref_q4_0,
    T.Q4_1: _ref_q4_1,
    T.Q5_0: lambda x: _ref_q5(x, has_min=False),
    T.Q5_1: lambda x: _ref_q5(x, has_min=True),
    T.Q8_0: _ref_q8_0,
    T.Q2_K: _ref_q2_k,
    T.Q3_K: _ref_q3_k,
    T.Q4_K: lambda x: _ref_q45_k(x, five_bits=False),
    T.Q5_K: lambda x: _ref_q45_k(x, five_bits=True),
    T.Q6_K: _ref_q6_k,
}


def _reference(blocks: np.ndarray, ggml_type: T) -> torch.Tensor:
    """float64 per-block formulas, rounded once to float32 -> [num_blocks * block_size]."""
    values = [v for block in blocks for v in REFERENCES[ggml_type](block)]
    return torch.tensor(np.array(values, dtype=np.float64).astype(np.float32))


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.view({4: torch.int32, 2: torch.int16}[t.element_size()])


def _ours(blocks: np.ndarray, ggml_type: T, dtype: torch.dtype) -> torch.Tensor:
    out = torch.empty(blocks.shape[0] * GGML_QUANT_SIZES[ggml_type][0], dtype=dtype)
    dequantize_into(out, blocks.reshape(-1), ggml_type)
    return out


def test_every_kernel_has_a_reference():
    assert set(BLOCK_KERNELS) == set(REFERENCES)


@pytest.mark.parametrize("ggml_type", list(REFERENCES), ids=lambda t: t.name)
def test_kernel_equals_float64_reference_and_gguf_package(ggml_type: T):
    blocks = random_blocks(ggml_type, NUM_BLOCKS, np.random.default_rng(int(ggml_type)))
    ours = _ours(blocks, ggml_type, torch.float32)
    assert torch.equal(_bits(ours), _bits(_reference(blocks, ggml_type)))
    package = torch.from_numpy(gguf_dequantize(blocks, ggml_type).reshape(-1).copy())
    assert torch.equal(_bits(ours), _bits(package))


@pytest.mark.parametrize("ggml_type", [*REFERENCES, T.F32, T.F16, T.BF16, T.IQ4_NL, T.TQ2_0], ids=lambda t: t.name)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_many_blocks_in_chunks_match_gguf_package(ggml_type: T, dtype: torch.dtype, monkeypatch):
    """Chunked writes into bf16/f32 rows equal the package's float32 result, converted once;
    types without a kernel (IQ4_NL, TQ2_0) go through the package."""
    monkeypatch.setattr("neo_async.model.dequant.CHUNK_ELEMENTS", 1024)
    block_size = GGML_QUANT_SIZES[ggml_type][0]
    rows, cols = 24, max(256, block_size)
    blocks = random_blocks(ggml_type, rows * cols // block_size, np.random.default_rng(7))
    out = torch.empty(rows, cols, dtype=dtype)
    dequantize_into(out, blocks.reshape(-1), ggml_type)
    expected = torch.from_numpy(np.asarray(gguf_dequantize(blocks, ggml_type), dtype=np.float32).reshape(rows, cols).copy())
    assert torch.equal(_bits(out), _bits(expected.to(dtype)))


def test_strided_destination_receives_rows_in_storage_order(monkeypatch):
    """A permuted view of the destination (as for rotary rows) is filled in index order."""
    monkeypatch.setattr("neo_async.model.dequant.CHUNK_ELEMENTS", 64)
    blocks = random_blocks(T.Q8_0, 16, np.random.default_rng(3))  # 16 rows of 32
    plain = torch.empty(16, 32, dtype=torch.bfloat16)
    dequantize_into(plain, blocks.reshape(-1), T.Q8_0)
    dest = torch.empty(16, 32, dtype=torch.bfloat16)
    view = dest.view(2, 2, 4, 32).transpose(1, 2)  # [2, 4, 2, 32]: rows (h, i, j) -> (h, j, i)
    dequantize_into(view, blocks.reshape(-1), T.Q8_0)
    assert torch.equal(dest.view(2, 2, 4, 32), plain.view(2, 4, 2, 32).transpose(1, 2))


def test_chunks_cover_whole_rows_and_reject_a_wrong_size():
    blocks = random_blocks(T.Q4_1, 12, np.random.default_rng(0)).reshape(-1)
    pieces = chunks(torch.empty(3, 128), blocks, T.Q4_1)
    assert sum(d.numel() for d, _ in pieces) == 384
    assert all(b.shape[0] * 32 == d.numel() for d, b in pieces)
    with pytest.raises(ValueError, match="does not fill"):
        chunks(torch.empty(3, 96), blocks, T.Q4_1)
