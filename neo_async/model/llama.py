"""The Llama-family decoder as two halves per layer, so that an executor can interleave
sub-batches: `pre` (norm, QKV projection, RoPE) and `post` (output projection, residual,
norm, MLP). Attention and the KV store between them belong to the executor.

Tensor parallelism: built with a rank's spec, weights and `Shard` (see `tensor_parallel`), the
model is that rank's: `pre` gives its query and KV heads only, the executor's attention runs
over them, and `post` sums the output projection's and the MLP's partial products over the
ranks (a collective: every rank calls it for the same layer and token count). `embed` and
`logits` are whole on every rank."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from neo_async.model import ops
from neo_async.model.fused_layer import fused_layer
from neo_async.model.rope import rope_table
from neo_async.model.spec import ModelSpec
from neo_async.model.tensor_parallel import Shard
from neo_async.model.weights import LlamaWeights


class LlamaModel:
    def __init__(self, spec: ModelSpec, weights: LlamaWeights, max_positions: int, shard: Shard | None = None) -> None:
        """spec: the rank's when sharded (`LoadedModel.spec`); shard: the rank, whose group
        `post` all-reduces over (None: the whole model)."""
        self.shard = shard or Shard()
        if (spec.tp_rank, spec.tp_size) != (self.shard.rank, self.shard.size):
            raise ValueError(
                f"spec is rank {spec.tp_rank} of {spec.tp_size}, shard is rank {self.shard.rank} of {self.shard.size}"
            )
        self.spec = spec
        self.weights = weights
        self.dtype = weights.embed.dtype
        self.device = weights.embed.device
        self.cos, self.sin = rope_table(spec, max_positions, self.device)  # [P, D/2] float32
        self.fused = [fused_layer(spec, w, self.dtype) for w in weights.layers]
        # post's fused half has no all-reduce between its projections: unsharded models only
        self.fused_post = self.shard.size == 1

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
        fused = self.fused[layer]
        num_tokens = hidden.shape[0]
        if fused is not None and num_tokens <= fused.max_rows:
            qkv = fused.pre(hidden, *rope)
        else:
            x = ops.rms_norm(hidden, w.attn_norm, s.rms_norm_eps)
            qkv = w.qkv(x)  # [T, q_size + 2 * kv_size]
            if w.qkv_bias is not None:
                qkv = (qkv.float() + w.qkv_bias).to(qkv.dtype)
            ops.rope_(qkv, *rope, s.num_heads + s.num_kv_heads)
        q, k, v = qkv.split([s.q_size, s.kv_size, s.kv_size], dim=-1)
        return (
            q.view(num_tokens, s.num_heads, s.head_dim),
            k.view(num_tokens, s.num_kv_heads, s.head_dim),
            v.view(num_tokens, s.num_kv_heads, s.head_dim),
        )

    def post(self, layer: int, hidden: torch.Tensor, attn_out: torch.Tensor) -> torch.Tensor:
        """hidden [T, hidden] (the layer's input, updated in place), attn_out [T, Hq * D] (the
        rank's heads) -> the layer's output [T, hidden] (the same tensor). Sharded: two
        all-reduces, of o's and of down's partial sums."""
        s, w = self.spec, self.weights.layers[layer]
        fused = self.fused[layer]
        if fused is not None and self.fused_post and hidden.shape[0] <= fused.max_rows and attn_out.dtype == torch.float32:
            fused.post(hidden, attn_out)
            return hidden
        if attn_out.dtype != self.dtype:
            attn_out = attn_out.to(self.dtype)
        o = self.shard.all_reduce_(w.o(attn_out))  # [T, hidden]
        x = ops.add_rms_norm(hidden, o, w.mlp_norm, s.rms_norm_eps)
        down = self.shard.all_reduce_(w.down(ops.silu_mul(w.gate_up(x))))  # [T, hidden]
        return hidden.add_(down)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden [N, hidden] of the tokens that sample -> logits [N, vocab] in the model's dtype."""
        x = ops.rms_norm(hidden, self.weights.final_norm, self.spec.rms_norm_eps)
        return self.weights.lm_head(x)
