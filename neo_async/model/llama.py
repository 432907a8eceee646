"""The Llama-family decoder as two halves per layer, so that an executor can interleave
sub-batches: `pre` (norm, QKV projection, RoPE) and `post` (output projection, residual,
norm, MLP). Attention and the KV store between them belong to the executor."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from neo_async.model import ops
from neo_async.model.rope import rope_table
from neo_async.model.spec import ModelSpec
from neo_async.model.weights import LlamaWeights


class LlamaModel:
    def __init__(self, spec: ModelSpec, weights: LlamaWeights, max_positions: int) -> None:
        self.spec = spec
        self.weights = weights
        self.dtype = weights.embed.dtype
        self.device = weights.embed.device
        self.cos, self.sin = rope_table(spec, max_positions, self.device)  # [P, D/2] float32

    def embed(self, token_ids: torch.Tensor) -> torch.Tensor:
        """token_ids [T] int64 -> hidden [T, hidden]."""
        return F.embedding(token_ids, self.weights.embed)

    def rope(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """positions [T] int64 -> (cos, sin) [T, D/2] float32, shared by every layer of a step."""
        return self.cos[positions], self.sin[positions]

    def pre(
        self, layer: int, hidden: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """hidden [T, hidden], rope from `rope(positions)` -> q [T, Hq, D], k [T, Hkv, D], v [T, Hkv, D],
        views of one [T, (Hq + 2 Hkv) D] projection (q and k rotated in place, together)."""
        s, w = self.spec, self.weights.layers[layer]
        x = ops.rms_norm(hidden, w.attn_norm, s.rms_norm_eps)
        qkv = w.qkv(x)  # [T, q_size + 2 * kv_size]
        if w.qkv_bias is not None:
            qkv = (qkv.float() + w.qkv_bias).to(qkv.dtype)
        ops.rope_(qkv, *rope, s.num_heads + s.num_kv_heads)
        num_tokens = qkv.shape[0]
        q, k, v = qkv.split([s.q_size, s.kv_size, s.kv_size], dim=-1)
        return (
            q.view(num_tokens, s.num_heads, s.head_dim),
            k.view(num_tokens, s.num_kv_heads, s.head_dim),
            v.view(num_tokens, s.num_kv_heads, s.head_dim),
        )

    def post(self, layer: int, hidden: torch.Tensor, attn_out: torch.Tensor) -> torch.Tensor:
        """hidden [T, hidden] (the layer's input, updated in place), attn_out [T, Hq * D] -> the
        layer's output [T, hidden] (the same tensor)."""
        s, w = self.spec, self.weights.layers[layer]
        x = ops.add_rms_norm(hidden, w.o(attn_out.to(self.dtype)), w.mlp_norm, s.rms_norm_eps)
        return hidden.add_(w.down(ops.silu_mul(w.gate_up(x))))

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden [N, hidden] of the tokens that sample -> logits [N, vocab] in the model's dtype."""
        x = ops.rms_norm(hidden, self.weights.final_norm, self.spec.rms_norm_eps)
        return self.weights.lm_head(x)
