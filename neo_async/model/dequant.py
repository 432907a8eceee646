"""GGUF tensor bytes -> weights, written straight into their destination.

Types with a Rust kernel (`rust_cpuattn.dequantize`: F32/F16/BF16, Q4_0..Q8_0, Q2_K..Q6_K)
are read in place from the file's memory map and written into the destination tensor's memory
with the GIL released, on every core; the values are the `gguf` package's float32 results
(bit-identical), rounded once to the destination dtype. Other types, and builds without the
extension, go through the package's numpy dequantisation.
"""

from __future__ import annotations

import numpy as np
import torch
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType as T
from gguf.quants import dequantize as gguf_dequantize

from neo_async.native import rust_cpuattn

RUST_TYPES = frozenset(
    (T.F32, T.F16, T.BF16, T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q8_0, T.Q2_K, T.Q3_K, T.Q4_K, T.Q5_K, T.Q6_K)
)
_RUST_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def dequantize_into(dest: torch.Tensor, raw: np.ndarray, ggml_type: T, dest_rows: np.ndarray | None = None) -> None:
    """Write the tensor stored in `raw` (uint8, rows of blocks) into `dest` (contiguous; its
    last dimension is the row), converting to dest's dtype and device: stored row r becomes
    row `dest_rows[r]` (int64, a permutation of the rows) of dest, or row r."""
    block_size, type_size = GGML_QUANT_SIZES[ggml_type]
    row_len = dest.shape[-1] if dest.dim() else 1
    if not dest.is_contiguous() or row_len % block_size or dest.numel() * type_size != raw.size * block_size:
        raise ValueError(f"{ggml_type.name} data of {raw.size} bytes does not fill {tuple(dest.shape)} in whole rows")
    if rust_cpuattn is not None and ggml_type in RUST_TYPES and dest.dtype in _RUST_DTYPES:
        target = dest if dest.device.type == "cpu" else torch.empty(dest.shape, dtype=dest.dtype)
        rust_cpuattn.dequantize(int(ggml_type), raw, target, dest_rows)
        if target is not dest:
            dest.copy_(target)
        return
    values = gguf_dequantize(raw.reshape(-1, row_len // block_size * type_size), ggml_type)
    rows = torch.from_numpy(np.asarray(values, dtype=np.float32))  # [num_rows, row_len]
    if dest_rows is not None:
        rows = rows[torch.from_numpy(np.argsort(dest_rows))]
    dest.copy_(rows.view(dest.shape))
