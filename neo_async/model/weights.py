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
    def builder(spec: ModelSpec, dtype: torch.dtype, device: torch.device, widen: bool = False) -> "WeightsBuilder":
        """widen: projections stored and computed in float32 (see `Linear`)."""
        return WeightsBuilder(spec, dtype, device, widen)


@dataclass(frozen=True)
class _Slot:
    buffer: str  # the layer's fused buffer the part lives in
    start: int  # its first row there
    shape: tuple[int, ...]


def _layer_buffer_shapes(spec: ModelSpec, dtype: torch.dtype) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    qkv_rows = spec.q_size + 2 * spec.kv_size
    shapes = {
        "attn_norm": ((spec.hidden_size,), torch.float32),
        "qkv": ((qkv_rows, spec.hidden_size), dtype),
        "o": ((spec.hidden_size, spec.q_size), dtype),
        "mlp_norm": ((spec.hidden_size,), torch.float32),
        "gate_up": ((2 * spec.intermediate_size, spec.hidden_size), dtype),
        "down": ((spec.hidden_size, spec.intermediate_size), dtype),
    }
    if spec.attention_bias:
        shapes["qkv_bias"] = ((qkv_rows,), torch.float32)
    return shapes


def _layer_slots(spec: ModelSpec) -> dict[str, _Slot]:
    h, q, kv, inter = spec.hidden_size, spec.q_size, spec.kv_size, spec.intermediate_size
    slots = {
        "input_layernorm.weight": _Slot("attn_norm", 0, (h,)),
        "self_attn.q_proj.weight": _Slot("qkv", 0, (q, h)),
        "self_attn.k_proj.weight": _Slot("qkv", q, (kv, h)),
        "self_attn.v_proj.weight": _Slot("qkv", q + kv, (kv, h)),
        "self_attn.o_proj.weight": _Slot("o", 0, (h, q)),
        "post_attention_layernorm.weight": _Slot("mlp_norm", 0, (h,)),
        "mlp.gate_proj.weight": _Slot("gate_up", 0, (inter, h)),
        "mlp.up_proj.weight": _Slot("gate_up", inter, (inter, h)),
        "mlp.down_proj.weight": _Slot("down", 0, (h, inter)),
    }
    if spec.attention_bias:
        slots["self_attn.q_proj.bias"] = _Slot("qkv_bias", 0, (q,))
        slots["self_attn.k_proj.bias"] = _Slot("qkv_bias", q, (kv,))
        slots["self_attn.v_proj.bias"] = _Slot("qkv_bias", q + kv, (kv,))
    return slots


class WeightsBuilder:
    """Collects canonical (HF-named) tensors into the fused buffers of the forward halves.

    Each tensor is written once, straight into its rows of the fused buffer (QKV, gate+up),
    already in its final dtype and device: `target(name, shape)` hands out that destination,
    `add(name, tensor)` copies into it. Norms and biases stay float32.
    """

    def __init__(self, spec: ModelSpec, dtype: torch.dtype, device: torch.device, widen: bool = False) -> None:
        self.spec, self.dtype, self.device, self.widen = spec, dtype, device, widen
        self.projection_dtype = torch.float32 if widen else dtype
        self.slots = _layer_slots(spec)
        self.buffers: list[dict[str, torch.Tensor]] = [{} for _ in range(spec.num_layers)]
        self.written: list[set[str]] = [set() for _ in range(spec.num_layers)]
        self.globals: dict[str, torch.Tensor] = {}

    def add(self, name: str, tensor: torch.Tensor) -> None:
        self.target(name, tuple(tensor.shape)).copy_(tensor)

    def target(self, name: str, shape: tuple[int, ...]) -> torch.Tensor:
        """The tensor of `shape` that the weight `name` is to be written into."""
        m = _LAYER_RE.match(name)
        if m:
            index, part = int(m.group(1)), m.group(2)
            slot = self.slots.get(part)
            if index >= self.spec.num_layers or slot is None:
                raise ValueError(f"unexpected weight {name!r}")
            if tuple(shape) != slot.shape:
                raise ValueError(f"weight {name!r} has shape {tuple(shape)}, expected {slot.shape}")
            self.written[index].add(part)
            return self._layer_buffers(index)[slot.buffer][slot.start : slot.start + slot.shape[0]]
        if name in ("model.embed_tokens.weight", "lm_head.weight"):
            if len(shape) != 2 or shape[1] != self.spec.hidden_size:
                raise ValueError(f"weight {name!r} has shape {tuple(shape)}, expected [vocab, {self.spec.hidden_size}]")
            dtype = self.projection_dtype if name == "lm_head.weight" else self.dtype
        elif name == "model.norm.weight":
            if tuple(shape) != (self.spec.hidden_size,):
                raise ValueError(f"weight {name!r} has shape {tuple(shape)}, expected ({self.spec.hidden_size},)")
            dtype = torch.float32
        else:
            raise ValueError(f"unexpected weight {name!r}")
        self.globals[name] = torch.empty(shape, dtype=dtype, device=self.device)
        return self.globals[name]

    def _layer_buffers(self, index: int) -> dict[str, torch.Tensor]:
        buffers = self.buffers[index]
        if not buffers:  # NOTE: torch.empty: the writes touch each page once, with no zeroing pass
            for key, (shape, dtype) in _layer_buffer_shapes(self.spec, self.projection_dtype).items():
                buffers[key] = torch.empty(shape, dtype=dtype, device=self.device)
        return buffers

    def finish(self) -> LlamaWeights:
        spec = self.spec
        widen = self.widen
        layers = []
        for index, (buffers, written) in enumerate(zip(self.buffers, self.written)):
            missing = [p for p in _LAYER_PARTS if p not in written]
            if spec.attention_bias:
                missing += [p for p in _BIAS_PARTS if p not in written]
            if missing:
                raise ValueError(f"layer {index} lacks weights {missing}")
            layers.append(
                LayerWeights(
                    attn_norm=buffers["attn_norm"],
                    qkv=Linear(buffers["qkv"], widen),
                    qkv_bias=buffers.get("qkv_bias"),
                    o=Linear(buffers["o"], widen),
                    mlp_norm=buffers["mlp_norm"],
                    gate_up=Linear(buffers["gate_up"], widen),
                    down=Linear(buffers["down"], widen),
                )
            )
            buffers.clear()
        if "model.embed_tokens.weight" not in self.globals or "model.norm.weight" not in self.globals:
            raise ValueError("checkpoint lacks the embedding or the final norm")
        embed = self.globals["model.embed_tokens.weight"]
        lm_head = self.globals.get("lm_head.weight")
        if lm_head is None:
            if not spec.tie_word_embeddings:
                raise ValueError("checkpoint lacks lm_head.weight and embeddings are not tied")
            lm_head = embed
        return LlamaWeights(embed=embed, layers=layers, final_norm=self.globals["model.norm.weight"], lm_head=Linear(lm_head, widen))
