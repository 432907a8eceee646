"""The weights builder (model/weights.py): layers packed as they complete, from scratch buffers
that later layers write again, give the same projections as packing every layer at the end;
a plain (unpacked) weight is never written over; parts may arrive in any order."""

from __future__ import annotations

import random

import pytest
import torch

from neo_async.model import linear as linear_module
from neo_async.model.linear import Linear
from neo_async.model.spec import ModelSpec
from neo_async.model.weights import LlamaWeights
from tests.seeds import stable_seed

_PROJECTIONS = {
    "qkv": ("self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight"),
    "o": ("self_attn.o_proj.weight",),
    "gate_up": ("mlp.gate_proj.weight", "mlp.up_proj.weight"),
    "down": ("mlp.down_proj.weight",),
}


def _spec(attention_bias: bool = False) -> ModelSpec:
    return ModelSpec(
        name="tiny", num_layers=4, hidden_size=64, intermediate_size=96, num_heads=4, num_kv_heads=2, head_dim=16,
        vocab_size=50, rms_norm_eps=1e-5, rope_theta=10000.0, max_position_embeddings=128,
        tie_word_embeddings=False, attention_bias=attention_bias,
    )  # fmt: skip


def _tensors(spec: ModelSpec, seed: int) -> dict[str, torch.Tensor]:
    """Canonical (HF) names -> random float32 tensors, in layer order."""
    gen = torch.Generator().manual_seed(seed)
    h, q, kv, inter = spec.hidden_size, spec.q_size, spec.kv_size, spec.intermediate_size
    shapes = {"model.embed_tokens.weight": (spec.vocab_size, h)}
    for i in range(spec.num_layers):
        p = f"model.layers.{i}."
        shapes |= {
            p + "input_layernorm.weight": (h,),
            p + "self_attn.q_proj.weight": (q, h),
            p + "self_attn.k_proj.weight": (kv, h),
            p + "self_attn.v_proj.weight": (kv, h),
            p + "self_attn.o_proj.weight": (h, q),
            p + "post_attention_layernorm.weight": (h,),
            p + "mlp.gate_proj.weight": (inter, h),
            p + "mlp.up_proj.weight": (inter, h),
            p + "mlp.down_proj.weight": (h, inter),
        }
        if spec.attention_bias:
            shapes |= {p + f"self_attn.{x}_proj.bias": (q if x == "q" else kv,) for x in "qkv"}
    shapes |= {"model.norm.weight": (h,), "lm_head.weight": (spec.vocab_size, h)}
    return {name: torch.randn(shape, generator=gen) for name, shape in shapes.items()}


def _build(spec: ModelSpec, tensors: dict[str, torch.Tensor], order: list[str]) -> tuple[LlamaWeights, int]:
    builder = LlamaWeights.builder(spec, torch.bfloat16, torch.device("cpu"))
    for name in order:
        builder.add(name, tensors[name])
    return builder.finish(), builder.num_scratch_sets


def _expected(tensors: dict[str, torch.Tensor], index: int, key: str) -> torch.Tensor:
    """The layer's fused projection in bf16, [out, in]."""
    return torch.cat([tensors[f"model.layers.{index}.{part}"] for part in _PROJECTIONS[key]]).to(torch.bfloat16)


def _check_layers(weights: LlamaWeights, tensors: dict[str, torch.Tensor], spec: ModelSpec) -> None:
    """Every projection equals one packed at the end from its own values, bit for bit; norms
    and biases are the layer's own."""
    gen = torch.Generator().manual_seed(0)
    for i, layer in enumerate(weights.layers):
        p = f"model.layers.{i}."
        assert torch.equal(layer.attn_norm, tensors[p + "input_layernorm.weight"])
        assert torch.equal(layer.mlp_norm, tensors[p + "post_attention_layernorm.weight"])
        if spec.attention_bias:
            bias = torch.cat([tensors[p + f"self_attn.{x}_proj.bias"] for x in "qkv"])
            assert layer.qkv_bias is not None and torch.equal(layer.qkv_bias, bias)
        for key in _PROJECTIONS:
            ours, expected = getattr(layer, key), _expected(tensors, i, key)
            x = torch.randn(16, ours.in_features, generator=gen).to(torch.bfloat16)
            assert torch.equal(ours.dense(x), Linear(expected.contiguous()).dense(x)), (i, key)  # the packed copy
            if not ours.is_packed:
                assert torch.equal(ours.weight, expected), (i, key)


@pytest.mark.parametrize("attention_bias", [False, True])
def test_layers_packed_as_they_complete_equal_packing_at_the_end(attention_bias):
    spec = _spec(attention_bias)
    tensors = _tensors(spec, stable_seed("weights", attention_bias))
    weights, num_scratch_sets = _build(spec, tensors, list(tensors))
    _check_layers(weights, tensors, spec)
    x = weights.embed[:3]
    assert torch.equal(weights.lm_head.dense(x), Linear(tensors["lm_head.weight"].to(torch.bfloat16)).dense(x))
    if weights.layers[0].qkv.is_packed:  # every layer after the first reuses the first's buffers
        assert num_scratch_sets == 1


def test_plain_weights_are_never_written_over(monkeypatch):
    """Without packing a projection is its buffer: each layer needs buffers of its own."""
    monkeypatch.setattr(linear_module, "_mkldnn_packing_available", lambda: False)
    spec = _spec()
    tensors = _tensors(spec, stable_seed("weights", "plain"))
    weights, num_scratch_sets = _build(spec, tensors, list(tensors))
    assert not any(getattr(layer, key).is_packed for layer in weights.layers for key in _PROJECTIONS)
    _check_layers(weights, tensors, spec)
    assert num_scratch_sets == spec.num_layers


@pytest.mark.parametrize("is_packed", [True, False], ids=["packed", "plain"])
def test_parts_in_any_order(monkeypatch, is_packed):
    if not is_packed:
        monkeypatch.setattr(linear_module, "_mkldnn_packing_available", lambda: False)
    spec = _spec(attention_bias=True)
    tensors = _tensors(spec, stable_seed("weights", "order"))
    order = list(tensors)
    random.Random(stable_seed("weights", "shuffle")).shuffle(order)
    weights, _ = _build(spec, tensors, order)
    _check_layers(weights, tensors, spec)


def test_a_missing_or_repeated_part_is_rejected():
    spec = _spec()
    tensors = _tensors(spec, 1)
    missing = "model.layers.2.mlp.up_proj.weight"
    builder = LlamaWeights.builder(spec, torch.bfloat16, torch.device("cpu"))
    for name, tensor in tensors.items():
        if name != missing:
            builder.add(name, tensor)
    with pytest.raises(ValueError, match="given twice"):
        builder.add("model.layers.1.mlp.up_proj.weight", tensors["model.layers.1.mlp.up_proj.weight"])
    with pytest.raises(ValueError, match=r"layer 2 lacks weights \['mlp.up_proj.weight'\]"):
        builder.finish()


def test_a_failed_write_does_not_count():
    spec = _spec()
    tensors = _tensors(spec, 2)
    builder = LlamaWeights.builder(spec, torch.bfloat16, torch.device("cpu"))
    name = "model.layers.0.self_attn.o_proj.weight"
    with pytest.raises(RuntimeError, match="interrupted"):
        with builder.target(name, tuple(tensors[name].shape)):
            raise RuntimeError("interrupted")
    for name, tensor in tensors.items():
        builder.add(name, tensor)
    _check_layers(builder.finish(), tensors, spec)
