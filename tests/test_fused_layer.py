"""A decoder layer's fused halves (`model/fused_layer.py`, rust_cpuattn.DecoderLayer) against the
op-by-op path of `LlamaModel` on the same weights: bit-identical q/k/v and layer outputs for
stored weights of mixed block types (a projection of several runs included), float32 and
bfloat16 activations, both arithmetics, with and without a QKV bias, 1 to 16 rows; which calls
take the fused path; bad inputs raise ValueError."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType as T
from gguf.quants import dequantize

from neo_async.model import stored_linear
from neo_async.model.fused_layer import FusedLayer, fused_layer
from neo_async.model.linear import Linear
from neo_async.model.llama import LlamaModel
from neo_async.model.spec import ModelSpec
from neo_async.model.weights import LayerWeights, LlamaWeights
from neo_async.native import rust_cpuattn
from tests.seeds import stable_seed
from tests.test_stored_linear import random_weight

pytestmark = pytest.mark.skipif(
    not stored_linear.available() or not hasattr(rust_cpuattn, "DecoderLayer"), reason="needs the rust_cpuattn extension"
)

SPEC = ModelSpec(
    name="fused-test", num_layers=1, hidden_size=256, intermediate_size=256, num_heads=4, num_kv_heads=2, head_dim=64,
    vocab_size=64, rms_norm_eps=1e-5, rope_theta=10000.0, max_position_embeddings=256, tie_word_embeddings=False,
)


def stored_projection(types: list[T], rows: list[int], cols: int, dtype: torch.dtype, arith: str, seed: int) -> Linear:
    """A projection of len(types) parts (part i: rows[i] rows of types[i]), dense and stored."""
    parts = [(int(t), random_weight(t, r, cols, seed + i)) for i, (t, r) in enumerate(zip(types, rows))]
    dense = torch.cat([torch.from_numpy(np.asarray(dequantize(raw, T(t)), dtype=np.float32)) for t, raw in parts])
    stored = stored_linear.build(parts, cols, dtype)
    stored.arith = arith
    linear = Linear(dense.to(dtype), stored=stored)
    stored.max_rows = 16  # the crossover measured above does not matter here
    return linear


def random_model(dtype: torch.dtype, arith: str, bias: bool, seed: int) -> LlamaModel:
    s = SPEC if not bias else ModelSpec(**{**SPEC.__dict__, "attention_bias": True})
    gen = torch.Generator().manual_seed(seed)
    h, q, kv, inter = s.hidden_size, s.q_size, s.kv_size, s.intermediate_size
    layer = LayerWeights(
        attn_norm=torch.rand(h, generator=gen) + 0.5,
        qkv=stored_projection([T.Q4_0, T.Q4_0, T.Q8_0], [q, kv, kv], h, dtype, arith, seed),  # two runs
        qkv_bias=torch.randn(q + 2 * kv, generator=gen) if bias else None,
        o=stored_projection([T.Q4_1], [h], q, dtype, arith, seed + 10),
        mlp_norm=torch.rand(h, generator=gen) + 0.5,
        gate_up=stored_projection([T.Q8_0, T.Q4_K], [inter, inter], h, dtype, arith, seed + 20),
        down=stored_projection([T.Q6_K if inter % 256 == 0 else T.Q8_0], [h], inter, dtype, arith, seed + 30),
    )
    weights = LlamaWeights(
        embed=torch.randn(s.vocab_size, h, generator=gen).to(dtype), layers=[layer],
        final_norm=torch.ones(h), lm_head=Linear(torch.randn(s.vocab_size, h, generator=gen).to(dtype)),
    )
    return LlamaModel(s, weights, max_positions=s.max_position_embeddings)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("arith", ["f32", "int8"])
@pytest.mark.parametrize("bias", [False, True])
def test_fused_halves_equal_op_by_op(dtype: torch.dtype, arith: str, bias: bool) -> None:
    model = random_model(dtype, arith, bias, stable_seed(f"fused-{dtype}-{arith}-{bias}"))
    fused = model.fused[0]
    assert isinstance(fused, FusedLayer) and fused.max_rows == 16
    gen = torch.Generator().manual_seed(stable_seed(f"fused-inputs-{dtype}-{arith}-{bias}"))
    for rows in (1, 3, 16):
        hidden = (torch.randn(rows, SPEC.hidden_size, generator=gen) * 2).to(dtype)
        positions = torch.randint(0, SPEC.max_position_embeddings, (rows,), generator=gen)
        rope = model.rope(positions)
        attn = torch.randn(rows, SPEC.q_size, generator=gen)
        fused_qkv = model.pre(0, hidden.clone(), rope)
        fused_out = model.post(0, hidden.clone(), attn)
        model.fused[0] = None
        try:
            plain_qkv = model.pre(0, hidden.clone(), rope)
            plain_out = model.post(0, hidden.clone(), attn)
        finally:
            model.fused[0] = fused
        for a, b in zip(fused_qkv, plain_qkv):
            assert torch.equal(a, b)
        assert torch.equal(fused_out, plain_out)
        assert not torch.equal(plain_out, hidden)  # the layer did something


def test_which_calls_are_fused(monkeypatch: pytest.MonkeyPatch) -> None:
    model = random_model(torch.bfloat16, "int8", False, stable_seed("fused-which"))
    fused = model.fused[0]
    calls: list[str] = []
    for name in ("pre", "post"):
        method = getattr(fused, name)
        monkeypatch.setattr(fused, name, lambda *a, _m=method, _n=name: calls.append(_n) or _m(*a))
    bf = torch.bfloat16
    model.pre(0, torch.randn(16, SPEC.hidden_size).to(bf), model.rope(torch.arange(16)))
    model.post(0, torch.randn(16, SPEC.hidden_size).to(bf), torch.randn(16, SPEC.q_size))
    assert calls == ["pre", "post"]
    # more rows than the stored weights' crossover: op by op (dense products)
    model.pre(0, torch.randn(17, SPEC.hidden_size).to(bf), model.rope(torch.arange(17)))
    model.post(0, torch.randn(17, SPEC.hidden_size).to(bf), torch.randn(17, SPEC.q_size))
    # an attention output not in float32: op by op
    model.post(0, torch.randn(2, SPEC.hidden_size).to(bf), torch.randn(2, SPEC.q_size).to(bf))
    assert calls == ["pre", "post"]
    # a sharded model's post all-reduces between its projections: op by op
    model.fused_post = False
    model.post(0, torch.randn(2, SPEC.hidden_size).to(bf), torch.randn(2, SPEC.q_size))
    assert calls == ["pre", "post"]


def test_layers_without_stored_weights_have_no_fused_halves() -> None:
    model = random_model(torch.bfloat16, "int8", False, stable_seed("fused-none"))
    w = model.weights.layers[0]
    dense_o = Linear(torch.randn(SPEC.hidden_size, SPEC.q_size).to(torch.bfloat16))
    assert fused_layer(SPEC, LayerWeights(**{**w.__dict__, "o": dense_o}), torch.bfloat16) is None
    assert fused_layer(SPEC, w, torch.float16) is None
    w.gate_up.stored.arith = "f32"  # arithmetics differ between projections
    assert fused_layer(SPEC, w, torch.bfloat16) is None


def test_bad_inputs_raise_value_error() -> None:
    model = random_model(torch.bfloat16, "int8", False, stable_seed("fused-bad"))
    layer = model.fused[0].layer
    h, bf = SPEC.hidden_size, torch.bfloat16
    cos, sin = model.rope(torch.arange(2))
    qkv = torch.empty(2, SPEC.q_size + 2 * SPEC.kv_size, dtype=bf)
    with pytest.raises(ValueError, match="hidden"):
        layer.pre(torch.randn(2, h + 1).to(bf), cos, sin, qkv)
    with pytest.raises(ValueError, match="qkv"):
        layer.pre(torch.randn(2, h).to(bf), cos, sin, qkv.float())
    with pytest.raises(ValueError, match="cos"):
        layer.pre(torch.randn(2, h).to(bf), cos[:1], sin[:1], qkv)
    with pytest.raises(ValueError, match="overlaps"):
        width = qkv.shape[1]
        flat = torch.empty(2 * h + 2 * width, dtype=bf)
        layer.pre(flat[: 2 * h].view(2, h), cos, sin, flat[h : h + 2 * width].view(2, width))
    with pytest.raises(ValueError, match="attn"):
        layer.post(torch.randn(2, h).to(bf), torch.randn(3, SPEC.q_size))
    with pytest.raises(ValueError, match="attn"):
        layer.post(torch.randn(2, h).to(bf), torch.randn(2, SPEC.q_size).to(bf))
    with pytest.raises(ValueError, match="contiguous"):
        layer.post(torch.randn(2, 2 * h).to(bf)[:, :h], torch.randn(2, SPEC.q_size))
    w = model.weights.layers[0]
    with pytest.raises(ValueError, match="do not chain"):
        rust_cpuattn.DecoderLayer(
            w.attn_norm, w.qkv.stored.runs, w.o.stored.runs, w.mlp_norm, w.gate_up.stored.runs, w.gate_up.stored.runs,
            1e-5, 6,
        )
    with pytest.raises(ValueError, match="tile"):
        rust_cpuattn.DecoderLayer(
            w.attn_norm, w.qkv.stored.runs[1:], w.o.stored.runs, w.mlp_norm, w.gate_up.stored.runs, w.down.stored.runs,
            1e-5, 6,
        )
    with pytest.raises(ValueError, match="arith"):
        rust_cpuattn.DecoderLayer(
            w.attn_norm, w.qkv.stored.runs, w.o.stored.runs, w.mlp_norm, w.gate_up.stored.runs, w.down.stored.runs,
            1e-5, 6, arith="int4",
        )
