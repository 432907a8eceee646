"""A projection's weight in its stored format (GGUF blocks, or bf16/f16 values), multiplied by
`rust_cpuattn.StoredWeight` for the few-row (decode) calls, and the measured row count up to
which that beats the dense (oneDNN) product.

Arithmetic (`arith`): "f32" multiplies ggml's dequantised f32 weight values exactly (up to f32
rounding); "int8" (Q4_0/Q4_1/Q8_0 runs only) quantises each activation row once per call to
8-bit blocks of 32 values and multiplies with integer dots, as llama.cpp does: per 32-value
block the error is at most max|x| / 254 times the block's sum of |w| (rust_cpuattn's
linear/q8.rs), well under a bf16 activation's own rounding in practice. Default: "int8" for
16-bit models (their activations already carry 8 significant bits), "f32" for float32 models
(which ask for exactness); `NEO_ASYNC_STORED_ARITH` forces either.

A fused projection (QKV, gate+up) is one run of rows per stored type: a file whose parts share
a type (the common case) gives a single run, so one kernel call per projection. Each run
writes its columns of one output.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence

import numpy as np
import structlog
import torch

from neo_async.native import rust_cpuattn

log = structlog.get_logger("neo_async.model.stored_linear")

# ggml type ids the kernel takes (rust_cpuattn::dequant::GgmlType): F32, F16, Q4_0, Q4_1,
# Q5_0, Q5_1, Q8_0, Q2_K..Q6_K, BF16.
KERNEL_TYPES = frozenset((0, 1, 2, 3, 6, 7, 8, 10, 11, 12, 13, 14, 30))
GGML_F16, GGML_BF16 = 1, 30

# Forces the arithmetic ("f32" or "int8") whatever the model's dtype.
ARITH_ENV = "NEO_ASYNC_STORED_ARITH"
ARITHS = ("f32", "int8")
# Forces the crossover (rows up to which the stored weight runs; 0 = never) instead of measuring.
MAX_ROWS_ENV = "NEO_ASYNC_STORED_MAX_ROWS"
_CANDIDATE_ROWS = (1, 2, 4, 8, 16, 32, 64, 128)
_crossovers: dict[tuple, int] = {}  # by (rows, cols, run types, activation dtype, arith, threads)


def default_arith(act_dtype: torch.dtype) -> str:
    """The arithmetic for a model whose activations are `act_dtype` (see the module doc)."""
    forced = os.environ.get(ARITH_ENV, "").strip()
    if forced:
        if forced not in ARITHS:
            raise ValueError(f"{ARITH_ENV}={forced!r}: expected one of {ARITHS}")
        return forced
    return "f32" if act_dtype == torch.float32 else "int8"


def available() -> bool:
    return rust_cpuattn is not None and hasattr(rust_cpuattn, "StoredWeight")


class StoredParts:
    """Row runs [start, start + w.rows) of one output, each a `StoredWeight` of its own type."""

    def __init__(
        self, runs: Sequence[tuple[int, object]], rows: int, cols: int, act_dtype: torch.dtype, arith: str | None = None
    ) -> None:
        self.runs = list(runs)
        self.rows, self.cols = rows, cols
        self.act_dtype = act_dtype  # the activations' dtype (the model's), for calibration
        self.arith = arith or default_arith(act_dtype)
        if self.arith not in ARITHS:
            raise ValueError(f"arith must be one of {ARITHS}, got {self.arith!r}")
        self.max_rows = 0  # calls with more rows go dense; set by `calibrate`
        if sum(w.rows for _, w in self.runs) != rows or any(w.cols != cols for _, w in self.runs):
            raise ValueError("stored runs do not tile the weight")

    @property
    def nbytes(self) -> int:
        return sum(w.nbytes for _, w in self.runs)

    @property
    def ggml_types(self) -> tuple[int, ...]:
        return tuple(w.ggml_type for _, w in self.runs)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """x [T, cols] (float32, float16 or bfloat16) -> [T, rows] in x's dtype."""
        x = x.contiguous()  # no copy when it already is
        y = torch.empty(x.shape[0], self.rows, dtype=x.dtype)
        if len(self.runs) == 1:  # the common case: one kernel call, no loop
            self.runs[0][1].matmul(x, y, 0, None, False, self.arith)
            return y
        for start, w in self.runs:
            w.matmul(x, y, start, None, False, self.arith)
        return y

    def calibrate(self, dense: Callable[[torch.Tensor], torch.Tensor]) -> None:
        """Sets `max_rows`: the largest row count up to which the stored product was measured
        faster than `dense` at every candidate count (once per shape and process)."""
        forced = os.environ.get(MAX_ROWS_ENV, "").strip()
        if forced:
            self.max_rows = int(forced)
            return
        key = (self.rows, self.cols, self.ggml_types, self.act_dtype, self.arith, rust_cpuattn.get_linear_threads(), torch.get_num_threads())
        if key not in _crossovers:
            _crossovers[key] = _measure(self, dense)
            log.debug("stored_linear_crossover", shape=[self.rows, self.cols], types=list(self.ggml_types), max_rows=_crossovers[key])
        self.max_rows = _crossovers[key]


def _best_seconds(fn: Callable[[], object], reps: int) -> float:
    fn()
    best = float("inf")
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def _measure(stored: StoredParts, dense: Callable[[torch.Tensor], torch.Tensor]) -> int:
    gen = torch.Generator().manual_seed(0)
    max_rows = 0
    for rows in _CANDIDATE_ROWS:
        x = torch.randn(rows, stored.cols, generator=gen).to(stored.act_dtype)
        reps = 5 if stored.nbytes * rows < (64 << 20) else 2
        if _best_seconds(lambda: stored(x), reps) > _best_seconds(lambda: dense(x), reps):
            break
        max_rows = rows
    return max_rows


def build(parts: Sequence[tuple[int, np.ndarray]], cols: int, act_dtype: torch.dtype) -> StoredParts | None:
    """parts: (ggml type id, uint8 [rows, row_bytes]) in row order -> the runs of equal type;
    None when the kernel lacks a part's type or the extension is missing."""
    if not available() or not parts or any(t not in KERNEL_TYPES for t, _ in parts):
        return None
    runs: list[tuple[int, object]] = []
    start = 0
    i = 0
    while i < len(parts):
        j = i
        while j + 1 < len(parts) and parts[j + 1][0] == parts[i][0]:
            j += 1
        group = [p for _, p in parts[i : j + 1]]
        data = group[0] if len(group) == 1 else np.concatenate(group, axis=0)
        num_rows = sum(p.shape[0] for p in group)
        runs.append((start, rust_cpuattn.StoredWeight(parts[i][0], np.ascontiguousarray(data), num_rows, cols)))
        start += num_rows
        i = j + 1
    return StoredParts(runs, start, cols, act_dtype)


def from_dense(weight: torch.Tensor, act_dtype: torch.dtype) -> StoredParts | None:
    """A bf16 or f16 weight [rows, cols] (values of that type, whatever weight's dtype) kept as
    16-bit values; None for other dtypes (float32 weights gain nothing over the dense path)."""
    if not available() or act_dtype not in (torch.bfloat16, torch.float16):
        return None
    ggml_type = GGML_BF16 if act_dtype == torch.bfloat16 else GGML_F16
    bits = weight.to(act_dtype).contiguous().view(torch.int16).numpy().view(np.uint8)
    return build([(ggml_type, bits.reshape(weight.shape[0], -1))], weight.shape[1], act_dtype)
