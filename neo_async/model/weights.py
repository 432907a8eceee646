"""Weights of a Llama-family decoder, fused for the forward halves (QKV, gate+up)."""

from __future__ import annotations

import re
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch

from neo_async.model import stored_linear
from neo_async.model.linear import Linear
from neo_async.model.spec import ModelSpec
from neo_async.model.tensor_parallel import Shard, is_split, shard_part

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
_PROJECTIONS = ("qkv", "o", "gate_up", "down")  # a layer's buffers that become `Linear`s


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
    def builder(
        spec: ModelSpec, dtype: torch.dtype, device: torch.device, widen: bool = False, shard: Shard | None = None
    ) -> "WeightsBuilder":
        """widen: projections stored and computed in float32 (see `Linear`); shard: keep one
        tensor-parallel rank's share (see `WeightsBuilder`)."""
        return WeightsBuilder(spec, dtype, device, widen, shard)


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


_ScratchSet = dict[str, torch.Tensor]  # a layer's projection buffers, by `_PROJECTIONS` key


class WeightsBuilder:
    """Collects canonical (HF-named) tensors into the fused buffers of the forward halves, and
    builds each layer's projections (`Linear`) as soon as all of its parts are written.

    Each tensor is written once, straight into its rows of the fused buffer (QKV, gate+up),
    already in its final dtype and device: `with target(name, shape) as dest:` hands out that
    destination, `add(name, tensor)` copies into it. Norms and biases stay float32.

    On the CPU a layer's projection buffers are scratch: packing copies them into oneDNN's
    layout, after which the next layer writes into them again. So the writes land in memory
    whose pages are already mapped, and only the packed weights take fresh memory. A layer
    whose parts arrive interleaved with another's takes a scratch set of its own.
    NOTE: packing runs on the writing thread: packing and the dequantisation each use every
    core, so a packing thread would only contend with the writes.

    Tensor parallelism (`shard`): `spec` is the whole model's and names and shapes given are the
    whole model's; the buffers hold the rank's share (`self.spec` is the rank's spec). A split
    part is written whole into a host tensor and the rank's rows or columns copied from it
    (after dequantisation: quantised blocks need not fall on the rank's boundaries).

    Invariant: a set is in `free_sets` only when no weight refers to its buffers: every
    `Linear` built from it holds its own copy. A plain (unpacked) weight is its buffer.
    """

    def __init__(
        self, spec: ModelSpec, dtype: torch.dtype, device: torch.device, widen: bool = False, shard: Shard | None = None
    ) -> None:
        self.full_spec, self.shard = spec, shard or Shard()
        spec = self.shard.spec(spec)  # the rank's: the buffers' shapes
        self.spec, self.dtype, self.device, self.widen = spec, dtype, device, widen
        self.projection_dtype = torch.float32 if widen else dtype
        self.slots = _layer_slots(spec)
        self.full_shapes = {part: slot.shape for part, slot in _layer_slots(self.full_spec).items()}
        self.parts = _LAYER_PARTS + (_BIAS_PARTS if spec.attention_bias else ())
        self.buffers: list[dict[str, torch.Tensor]] = [{} for _ in range(spec.num_layers)]
        self.written: list[set[str]] = [set() for _ in range(spec.num_layers)]
        self.layers: list[LayerWeights | None] = [None] * spec.num_layers
        self.globals: dict[str, torch.Tensor] = {}
        self.free_sets: list[_ScratchSet] = []
        self.num_scratch_sets = 0  # projection buffer sets allocated
        self.pack_seconds = 0.0  # building the layers' Linears
        # Weights also kept as stored (GGUF blocks), by name: (ggml type id, uint8 [rows, row_bytes])
        self.stored: dict[str, tuple[int, np.ndarray]] = {}
        self.keeps_stored = device.type == "cpu" and stored_linear.available()

    def keep_stored(self, name: str, raw: np.ndarray, ggml_type: int, shape: tuple[int, ...], dest_rows: np.ndarray | None = None) -> None:
        """Also keeps the 2-D weight `name` as stored (raw: its bytes, rows of blocks of
        `ggml_type`; stored row r is our row dest_rows[r]) for the few-row products. Call it
        before the weight's `target` block ends: the layer is built then."""
        if not self.keeps_stored or self.shard.is_sharded or len(shape) != 2 or int(ggml_type) not in stored_linear.KERNEL_TYPES:
            return  # NOTE: a tensor-parallel rank's slices stay dense
        rows = raw.reshape(shape[0], -1)
        if dest_rows is not None:
            permuted = np.empty_like(rows)
            permuted[dest_rows] = rows
            rows = permuted
        self.stored[name] = (int(ggml_type), rows)

    def _stored_parts(self, index: int, key: str, buffer: torch.Tensor) -> stored_linear.StoredParts | None:
        """The projection `key` of layer `index` as stored: from the file's blocks when every
        part was kept, else from the dense bf16/f16 values."""
        if not self.keeps_stored or self.shard.is_sharded:
            return None
        names = [f"model.layers.{index}.{part}" for part, slot in self.slots.items() if slot.buffer == key]
        parts = [self.stored.pop(name, None) for name in names]
        if all(p is not None for p in parts):
            return stored_linear.build(parts, buffer.shape[1], self.dtype)
        return stored_linear.from_dense(buffer, self.dtype)

    def add(self, name: str, tensor: torch.Tensor) -> None:
        with self.target(name, tuple(tensor.shape)) as dest:
            dest.copy_(tensor)

    @contextmanager
    def target(self, name: str, shape: tuple[int, ...]) -> Iterator[torch.Tensor]:
        """The tensor of `shape` that the weight `name` is to be written into, inside the block;
        the weight counts as written when the block ends without an exception."""
        m = _LAYER_RE.match(name)
        if not m:
            yield self._global_target(name, shape)
            return
        index, part = int(m.group(1)), m.group(2)
        slot = self.slots.get(part)
        if index >= self.spec.num_layers or slot is None:
            raise ValueError(f"unexpected weight {name!r}")
        if tuple(shape) != self.full_shapes[part]:
            raise ValueError(f"weight {name!r} has shape {tuple(shape)}, expected {self.full_shapes[part]}")
        if part in self.written[index]:
            raise ValueError(f"weight {name!r} is given twice")
        dest = self._layer_buffers(index)[slot.buffer][slot.start : slot.start + slot.shape[0]]
        if self.shard.is_sharded and is_split(part):
            whole = torch.empty(shape, dtype=dest.dtype)
            yield whole
            dest.copy_(shard_part(self.full_spec, self.shard, part, whole))
        else:
            yield dest
        self.written[index].add(part)
        if len(self.written[index]) == len(self.parts):
            self._build_layer(index)

    def _global_target(self, name: str, shape: tuple[int, ...]) -> torch.Tensor:
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
            shapes = _layer_buffer_shapes(self.spec, self.projection_dtype)
            buffers.update(self._scratch_set(shapes))
            for key, (shape, dtype) in shapes.items():
                if key not in buffers:  # norms and biases: kept as the layer's weights
                    buffers[key] = torch.empty(shape, dtype=dtype, device=self.device)
        return buffers

    def _scratch_set(self, shapes: dict[str, tuple[tuple[int, ...], torch.dtype]]) -> _ScratchSet:
        if self.free_sets:
            return self.free_sets.pop()
        self.num_scratch_sets += 1
        return {key: torch.empty(shapes[key][0], dtype=shapes[key][1], device=self.device) for key in _PROJECTIONS}

    def _build_layer(self, index: int) -> None:
        started = time.perf_counter()
        buffers, self.buffers[index] = self.buffers[index], {}
        linears = {key: Linear(buffers[key], self.widen, self._stored_parts(index, key, buffers[key])) for key in _PROJECTIONS}
        self.layers[index] = LayerWeights(
            attn_norm=buffers["attn_norm"],
            qkv=linears["qkv"],
            qkv_bias=buffers.get("qkv_bias"),
            o=linears["o"],
            mlp_norm=buffers["mlp_norm"],
            gate_up=linears["gate_up"],
            down=linears["down"],
        )
        if not any(linears[key].shares_memory_with(buffers[key]) for key in _PROJECTIONS):
            self.free_sets.append({key: buffers[key] for key in _PROJECTIONS})
        self.pack_seconds += time.perf_counter() - started

    def finish(self) -> LlamaWeights:
        self.free_sets.clear()
        for index, layer in enumerate(self.layers):
            if layer is None:
                missing = [p for p in self.parts if p not in self.written[index]]
                raise ValueError(f"layer {index} lacks weights {missing}")
        if "model.embed_tokens.weight" not in self.globals or "model.norm.weight" not in self.globals:
            raise ValueError("checkpoint lacks the embedding or the final norm")
        embed = self.globals["model.embed_tokens.weight"]
        lm_head = self.globals.get("lm_head.weight")
        stored_name = "lm_head.weight"
        if lm_head is None:
            if not self.spec.tie_word_embeddings:
                raise ValueError("checkpoint lacks lm_head.weight and embeddings are not tied")
            lm_head, stored_name = embed, "model.embed_tokens.weight"
        lm_stored = None
        if self.keeps_stored and not self.shard.is_sharded:
            kept = self.stored.pop(stored_name, None)
            lm_stored = stored_linear.build([kept], lm_head.shape[1], self.dtype) if kept else stored_linear.from_dense(lm_head, self.dtype)
        self.stored.clear()
        layers = [layer for layer in self.layers if layer is not None]
        final_norm = self.globals["model.norm.weight"]
        return LlamaWeights(embed=embed, layers=layers, final_norm=final_norm, lm_head=Linear(lm_head, self.widen, lm_stored))
