"""A decoder layer's two halves around attention as one host call each
(`rust_cpuattn.DecoderLayer`): `pre` (RMSNorm, QKV projection, bias, RoPE) and `post` (output
projection, residual add + RMSNorm, gate+up, SiLU-gated product, down, residual add).

For the few-row (decode) calls where every projection runs its stored weight: the same
kernels, in the same order, with the same rounding as the op-by-op path in `LlamaModel`
(bit-identical results), without a Python call, a tensor allocation and an argument
conversion per operation. Larger calls, CUDA, float16 and layers with a dense projection take
the op-by-op path.
"""

from __future__ import annotations

import torch

from neo_async.model.spec import ModelSpec
from neo_async.model.weights import LayerWeights
from neo_async.native import rust_cpuattn

_DTYPES = (torch.float32, torch.bfloat16)


class FusedLayer:
    def __init__(self, spec: ModelSpec, w: LayerWeights) -> None:
        parts = [w.qkv.stored, w.o.stored, w.gate_up.stored, w.down.stored]
        self.max_rows = min(p.max_rows for p in parts)  # calls of more rows take the op-by-op path
        self.qkv_rows = w.qkv.out_features
        self.layer = rust_cpuattn.DecoderLayer(
            w.attn_norm, parts[0].runs, parts[1].runs, w.mlp_norm, parts[2].runs, parts[3].runs,
            spec.rms_norm_eps, spec.num_heads + spec.num_kv_heads, qkv_bias=w.qkv_bias, arith=parts[0].arith,
        )

    def pre(self, hidden: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """hidden [T, hidden] contiguous, cos, sin [T, D/2] float32 -> qkv [T, qkv rows]."""
        qkv = torch.empty(hidden.shape[0], self.qkv_rows, dtype=hidden.dtype)
        self.layer.pre(hidden, cos, sin, qkv)
        return qkv

    def post(self, hidden: torch.Tensor, attn: torch.Tensor) -> None:
        """hidden [T, hidden] contiguous, updated in place; attn [T, q_size] float32 contiguous."""
        self.layer.post(hidden, attn)


def fused_layer(spec: ModelSpec, w: LayerWeights, dtype: torch.dtype) -> FusedLayer | None:
    """The layer's fused halves, or None when it cannot have them (no extension, a projection
    without a stored weight, different arithmetics, an activation dtype the call lacks)."""
    if rust_cpuattn is None or not hasattr(rust_cpuattn, "DecoderLayer") or dtype not in _DTYPES:
        return None
    parts = [w.qkv.stored, w.o.stored, w.gate_up.stored, w.down.stored]
    if any(p is None for p in parts) or len({p.arith for p in parts}) != 1:
        return None
    return FusedLayer(spec, w)
