"""y = x @ W^T for the model's projections, with the weight prepared once for the device.

Two ways to run on the CPU, chosen per call by the number of rows:
- few rows (decode): `rust_cpuattn.StoredWeight`, the weight kept in its stored format (a GGUF
  file's quantised blocks, or bf16/f16 values) and decoded inside the kernel, which reads each
  weight byte once per call and is bound by read bandwidth. Either exact (every weight value
  ggml's dequantised f32 value, every product f32) or, for Q4_0/Q4_1/Q8_0 in 16-bit models,
  integer dots against the activation quantised to Q8 blocks (`stored_linear.py`: the choice
  and its documented error).
- many rows (prefill): oneDNN on a dense copy packed once into its blocked layout
  (`onednn_weight.pack`): plain-layout bf16 weights are re-laid-out inside every call, which
  halves small-batch throughput. Where oneDNN refuses the reorder (bf16 on a CPU without
  AVX-512 or AVX-NE-CONVERT), and on CUDA, the weight stays plain and F.linear runs.
The row count where oneDNN starts to win is measured per weight shape (`stored_linear.
crossover`), never guessed.

`widen`: a bf16 dense weight is kept as float32 (the same values, exactly) and the product runs
in float32, its result rounded back to the input's dtype. For CPUs without native bf16 products
(no AVX512_BF16 or AMX), where torch emulates them several times slower than float32.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from neo_async.model import onednn_weight
from neo_async.model.stored_linear import StoredParts

_PACKABLE = (torch.bfloat16, torch.float32)
_BATCH_HINT = 16  # a decode batch; the packed layout serves every batch size


def _mkldnn_packing_available() -> bool:
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")


def cpu_has_native_bf16() -> bool:
    """Whether this CPU multiplies bf16 natively (AVX512_BF16 or AMX-BF16)."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line for line in f if line.startswith("flags")), "").split()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


class Linear:
    def __init__(self, weight: torch.Tensor, widen: bool = False, stored: StoredParts | None = None) -> None:
        """weight [out_features, in_features], contiguous, on its device. stored: the same
        weight in its stored format (CPU only), used for calls of at most `stored.max_rows`
        rows."""
        self.out_features, self.in_features = weight.shape
        self.is_packed = False
        self.compute_dtype = torch.float32 if widen and weight.dtype == torch.bfloat16 else weight.dtype
        self.stored = stored if weight.device.type == "cpu" else None
        weight = weight.to(self.compute_dtype)
        self.weight = weight
        if weight.device.type == "cpu" and weight.dtype in _PACKABLE and _mkldnn_packing_available():
            try:
                self.weight = onednn_weight.pack(weight, _BATCH_HINT).tensor
                self.is_packed = True
            except RuntimeError:  # this CPU lacks the ISA oneDNN's packed path needs for this dtype
                pass
        if self.stored is not None:
            if (self.stored.rows, self.stored.cols) != (self.out_features, self.in_features):
                raise ValueError(f"stored weight {self.stored.rows}x{self.stored.cols} != {tuple(weight.shape)}")
            self.stored.calibrate(self.dense)

    def shares_memory_with(self, tensor: torch.Tensor) -> bool:
        """Whether this projection's weight is `tensor`'s memory (a plain weight kept as given)."""
        if self.is_packed:  # packing writes a buffer of its own
            return False
        return self.weight.untyped_storage().data_ptr() == tensor.untyped_storage().data_ptr()

    def dense(self, x: torch.Tensor) -> torch.Tensor:
        """The dense (oneDNN or F.linear) product, whatever the row count."""
        dtype = x.dtype
        if dtype != self.compute_dtype:
            x = x.to(self.compute_dtype)
        if self.is_packed:
            y = torch.ops.mkldnn._linear_pointwise(x.contiguous(), self.weight, None, "none", [], "")
        else:
            y = F.linear(x, self.weight)
        return y if y.dtype == dtype else y.to(dtype)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """x [T, in_features] -> [T, out_features] in x's dtype."""
        stored = self.stored
        if stored is not None and x.shape[0] <= stored.max_rows:
            return stored(x)
        return self.dense(x)
