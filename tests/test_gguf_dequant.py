"""GGUF dequantisation (model/dequant.py, the Rust kernels of rust_cpuattn.dequantize) against
the `gguf` package and a float64 reference written from the per-block formulas of ggml's
`dequantize_row_*`.

Every float32 result must equal both exactly: products of a float16 scale and a small integer
are exact in float32, so each element is rounded once, as in float64 then rounded to float32;
float16/bfloat16 results are those values rounded once more.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType as T
from gguf.quants import dequantize as gguf_dequantize

from neo_async.bench.synthetic_gguf import random_blocks
from neo_async.model.dequant import RUST_TYPES, dequantize_into
from neo_async.native import rust_cpuattn
from tests.seeds import stable_seed

NUM_BLOCKS = 7
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
needs_rust = pytest.mark.skipif(rust_cpuattn is None, reason="the rust_cpuattn extension is not built")


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


def _package(blocks: np.ndarray, ggml_type: T) -> torch.Tensor:
    return torch.from_numpy(np.asarray(gguf_dequantize(blocks, ggml_type), dtype=np.float32).reshape(-1).copy())


def test_every_quantised_rust_type_has_a_reference():
    assert {t for t in RUST_TYPES if GGML_QUANT_SIZES[t][0] > 1} == set(REFERENCES)


@needs_rust
@pytest.mark.parametrize("ggml_type", list(REFERENCES), ids=lambda t: t.name)
def test_kernel_equals_float64_reference_and_gguf_package(ggml_type: T):
    blocks = random_blocks(ggml_type, NUM_BLOCKS, np.random.default_rng(stable_seed("blocks", ggml_type.name)))
    ours = torch.empty(NUM_BLOCKS * GGML_QUANT_SIZES[ggml_type][0])
    dequantize_into(ours, blocks.reshape(-1), ggml_type)
    assert torch.equal(_bits(ours), _bits(_reference(blocks, ggml_type)))
    assert torch.equal(_bits(ours), _bits(_package(blocks, ggml_type)))


@pytest.mark.parametrize("ggml_type", [*REFERENCES, T.F32, T.F16, T.BF16, T.IQ4_NL, T.TQ2_0], ids=lambda t: t.name)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_many_rows_match_gguf_package(ggml_type: T, dtype: torch.dtype):
    """Rows of many blocks (several of the kernel's parallel chunks, one ending inside a row)
    in every output dtype equal the package's float32 result converted once; types without
    a Rust kernel (IQ4_NL, TQ2_0) go through the package."""
    block_size = GGML_QUANT_SIZES[ggml_type][0]
    rows, cols = 40, 5 * max(256, block_size)
    rng = np.random.default_rng(stable_seed("rows", ggml_type.name, str(dtype)))
    blocks = random_blocks(ggml_type, rows * cols // block_size, rng)
    out = torch.empty(rows, cols, dtype=dtype)
    dequantize_into(out, blocks.reshape(-1), ggml_type)
    expected = _package(blocks, ggml_type).view(rows, cols)
    assert torch.equal(_bits(out), _bits(expected.to(dtype)))


@pytest.mark.parametrize("ggml_type", [T.Q4_1, T.Q6_K, T.F32, T.IQ4_NL], ids=lambda t: t.name)
def test_dest_rows_place_each_stored_row(ggml_type: T):
    """Stored row r lands in row dest_rows[r], on the Rust and the package path alike."""
    block_size = GGML_QUANT_SIZES[ggml_type][0]
    rows, cols = 12, max(256, block_size)
    rng = np.random.default_rng(stable_seed("permuted", ggml_type.name))
    blocks = random_blocks(ggml_type, rows * cols // block_size, rng)
    dest_rows = rng.permutation(rows).astype(np.int64)
    out = torch.empty(rows, cols, dtype=torch.bfloat16)
    dequantize_into(out, blocks.reshape(-1), ggml_type, dest_rows)
    expected = torch.empty(rows, cols)
    expected[torch.from_numpy(dest_rows)] = _package(blocks, ggml_type).view(rows, cols)
    assert torch.equal(_bits(out), _bits(expected.bfloat16()))


def test_a_wrong_size_or_layout_is_rejected():
    blocks = random_blocks(T.Q4_1, 12, np.random.default_rng(0)).reshape(-1)  # 384 values
    with pytest.raises(ValueError, match="does not fill"):
        dequantize_into(torch.empty(3, 96), blocks, T.Q4_1)
    with pytest.raises(ValueError, match="does not fill"):
        dequantize_into(torch.empty(8, 48), blocks, T.Q4_1)  # rows of 48: not whole blocks
    with pytest.raises(ValueError, match="does not fill"):
        dequantize_into(torch.empty(128, 3).t(), blocks, T.Q4_1)  # not contiguous


@needs_rust
def test_binding_rejects_bad_arguments_with_value_errors():
    src = random_blocks(T.Q8_0, 4, np.random.default_rng(1)).reshape(-1)  # 128 values
    out = torch.empty(2, 64, dtype=torch.bfloat16)
    cases = [
        ((99, src, out), "no dequantisation kernel"),
        ((-1, src, out), "not a ggml type"),
        ((int(T.Q8_0), src[:-1], out), "does not fill"),
        ((int(T.Q8_0), src, torch.empty(2, 48)), "multiple"),
        ((int(T.Q8_0), src, torch.empty(2, 64, dtype=torch.int32)), "dtype|float32"),
        ((int(T.Q8_0), src, torch.empty(64, 2).t()), "contiguous"),
        ((int(T.Q8_0), src.reshape(4, 34)[:, :32], out), "contiguous"),
        ((int(T.Q8_0), [1, 2, 3], out), "buffer"),
        ((int(T.Q8_0), src, out, np.array([0, 0])), "permutation"),
        ((int(T.Q8_0), src, out, np.array([0, 1], dtype=np.int32)), "dest_rows"),
    ]
    for args, message in cases:
        with pytest.raises(ValueError, match=message):
            rust_cpuattn.dequantize(*args)
    overlapping = np.zeros(1024, dtype=np.uint8)
    with pytest.raises(ValueError, match="overlaps"):
        rust_cpuattn.dequantize(int(T.Q8_0), overlapping[:136], torch.from_numpy(overlapping[:512].view(np.float32)).view(2, 64))
