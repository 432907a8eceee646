"""Weights of a Llama-family decoder, fused for the forward halves (QKV, gate+up)."""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

from neo_async.model.linear import Linear
from neo_async.model.spec import ModelSpec

_LAYER_RE = re.compile(r"^model\.layers\.(\d+)\.(.+)$")
_LAYER_PARTS = (
    "input_layernorm.weight",
    "self_attn.q_proj.weight",
    "self_attn.k_proj.weight",
    "self_attn.v_proj.weight",
    "self_attn.o_proj.weight",
    "post_attention_layernorm.weight",
    "mlp.gate_proj.weight",
    "mlp.up_proj.weight",
    "mlp.down_proj.weight",
)
_BIAS_PARTS = ("self_attn.q_proj.bias", "self_attn.k_proj.bias", "self_attn.v_proj.bias")


@dataclass
class LayerWeights:
    attn_norm: torch.Tensor  # [hidden] float32
    qkv: Linear  # [q_size + 2 * kv_size, hidden]
    qkv_bias: torch.Tensor | None  # [q_size + 2 * kv_size] float32
    o: Linear  # [hidden, q_size]
    mlp_norm: torch.Tensor  # [hidden] float32
    gate_up: Linear  # [2 * intermediate, hidden]
    down: Linear  # [hidden, intermediate]


@dataclass
class LlamaWeights:
    embed: torch.Tensor  # [vocab, hidden]
    layers: list[LayerWeights]
    final_norm: torch.Tensor  # [hidden] float32
    lm_head: Linear  # [vocab, hidden]; built from embed when tied

    @staticmethod
    def builder(spec: ModelSpec, dtype: torch.dtype, device: torch.device) -> "WeightsBuilder":
        return WeightsBuilder(spec, dtype, device)


class WeightsBuilder:
    """Collects canonical (HF-named) tensors one at a time, then fuses them."""

    def __init__(self, spec: ModelSpec, dtype: torch.dtype, device: torch.device) -> None:
        self.spec, self.dtype, self.device = spec, dtype, device
        self.layer_parts: list[dict[str, torch.Tensor]] = [{} for _ in range(spec.num_layers)]
        self.globals: dict[str, torch.Tensor] = {}

    def add(self, name: str, tensor: torch.Tensor) -> None:
        m = _LAYER_RE.match(name)
        if m:
            index, part = int(m.group(1)), m.group(2)
            if index >= self.spec.num_layers or part not in _LAYER_PARTS + _BIAS_PARTS:
                raise ValueError(f"unexpected weight {name!r}")
            keep_f32 = part.endswith("layernorm.weight") or part.endswith(".bias")
            self.layer_parts[index][part] = self._convert(tensor, keep_f32)
        elif name in ("model.embed_tokens.weight", "lm_head.weight"):
            self.globals[name] = self._convert(tensor, False)
        elif name == "model.norm.weight":
            self.globals[name] = self._convert(tensor, True)
        else:
            raise ValueError(f"unexpected weight {name!r}")

    def _convert(self, tensor: torch.Tensor, keep_f32: bool) -> torch.Tensor:
        dtype = torch.float32 if keep_f32 else self.dtype
        return tensor.to(device=self.device, dtype=dtype).contiguous()

    def finish(self) -> LlamaWeights:
        spec = self.spec
        layers = []
        for index, parts in enumerate(self.layer_parts):
            missing = [p for p in _LAYER_PARTS if p not in parts]
            if spec.attention_bias:
                missing += [p for p in _BIAS_PARTS if p not in parts]
            if missing:
                raise ValueError(f"layer {index} lacks weights {missing}")
            qkv = torch.cat([parts["self_attn.q_proj.weight"], parts["self_attn.k_proj.weight"], parts["self_attn.v_proj.weight"]])
            expected = (spec.q_size + 2 * spec.kv_size, spec.hidden_size)
            if tuple(qkv.shape) != expected:
                raise ValueError(f"layer {index}: fused qkv has shape {tuple(qkv.shape)}, expected {expected}")
            bias = None
            if spec.attention_bias:
                bias = torch.cat([parts[p] for p in _BIAS_PARTS])
            layers.append(
                LayerWeights(
                    attn_norm=parts["input_layernorm.weight"],
                    qkv=Linear(qkv),
                    qkv_bias=bias,
                    o=Linear(parts["self_attn.o_proj.weight"]),
                    mlp_norm=parts["post_attention_layernorm.weight"],
                    gate_up=Linear(torch.cat([parts["mlp.gate_proj.weight"], parts["mlp.up_proj.weight"]])),
                    down=Linear(parts["mlp.down_proj.weight"]),
                )
            )
            parts.clear()
        if "model.embed_tokens.weight" not in self.globals or "model.norm.weight" not in self.globals:
            raise ValueError("checkpoint lacks the embedding or the final norm")
        embed = self.globals["model.embed_tokens.weight"]
        lm_head = self.globals.get("lm_head.weight")
        if lm_head is None:
            if not spec.tie_word_embeddings:
                raise ValueError("checkpoint lacks lm_head.weight and embeddings are not tied")
            lm_head = embed
        return LlamaWeights(embed=embed, layers=layers, final_norm=self.globals["model.norm.weight"], lm_head=Linear(lm_head))
