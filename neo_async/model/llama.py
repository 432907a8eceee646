"""The Llama-family decoder as two halves per layer, so that an executor can interleave
sub-batches: `pre` (norm, QKV projection, RoPE) and `post` (output projection, residual,
norm, MLP). Attention and the KV store between them belong to the executor."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from neo_async.model.rope import apply_rope, rope_table
from neo_async.model.spec import ModelSpec
from neo_async.model.weights import LlamaWeights


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """x [T, H] normalised in float32, scaled by weight [H] float32, returned in x's dtype."""
    xf = x.float()
    xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return (xf * weight).to(x.dtype)


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
        """positions [T] int64 -> (cos, sin) [T, 1, D/2], shared by every layer of a step."""
        return self.cos[positions].unsqueeze(1), self.sin[positions].unsqueeze(1)

    def pre(
        self, layer: int, hidden: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """hidden [T, hidden], rope from `rope(positions)` -> q [T, Hq, D], k [T, Hkv, D], v [T, Hkv, D].

        q and k may be non-contiguous views (they are rotated together, in one pass)."""
        s, w = self.spec, self.weights.layers[layer]
        x = rms_norm(hidden, w.attn_norm, s.rms_norm_eps)
        qkv = w.qkv(x)  # [T, q_size + 2 * kv_size]
        if w.qkv_bias is not None:
            qkv = (qkv.float() + w.qkv_bias).to(qkv.dtype)
        num_tokens = qkv.shape[0]
        qk = apply_rope(qkv[:, : s.q_size + s.kv_size].view(num_tokens, -1, s.head_dim), *rope)  # [T, Hq + Hkv, D]
        v = qkv[:, s.q_size + s.kv_size :].view(num_tokens, s.num_kv_heads, s.head_dim)
        return qk[:, : s.num_heads], qk[:, s.num_heads :], v

    def post(self, layer: int, hidden: torch.Tensor, attn_out: torch.Tensor) -> torch.Tensor:
        """hidden [T, hidden] (the layer's input), attn_out [T, Hq * D] -> the layer's output [T, hidden]."""
        s, w = self.spec, self.weights.layers[layer]
        hidden = hidden + w.o(attn_out.to(self.dtype))
        x = rms_norm(hidden, w.mlp_norm, s.rms_norm_eps)
        gate, up = w.gate_up(x).chunk(2, dim=-1)
        return hidden + w.down(F.silu(gate) * up)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden [N, hidden] of the tokens that sample -> logits [N, vocab] in the model's dtype."""
        x = rms_norm(hidden, self.weights.final_norm, self.spec.rms_norm_eps)
        return self.weights.lm_head(x)
