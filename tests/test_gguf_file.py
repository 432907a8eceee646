"""Loading GGUF files (model/gguf_file.py, model/loader.py): every weight equals the `gguf`
package's dequantisation, rotary rows un-permuted, fused and converted once, whatever the
order of the file's tensors."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType as T, GGUFReader
from gguf.quants import dequantize

from neo_async.bench.synthetic_gguf import TINY, LlamaShape, write_synthetic_gguf
from neo_async.model import linear as linear_module
from neo_async.model.gguf_file import load_gguf_weights, rotary_rows_view, spec_from_gguf
from neo_async.model.gguf_reader import GGUFFile
from neo_async.model.loader import load_model
from neo_async.model.weights import LlamaWeights
from tests.seeds import stable_seed

K_QUANT_SHAPE = LlamaShape(256, 512, 1, 4, 2, 300)  # rows of 256 for the K-quant blocks


def _reference_tensors(path, num_heads: int, num_kv_heads: int) -> dict[str, torch.Tensor]:
    """The package's float32 dequantisation, with Q/K rows un-permuted the plain way."""

    def unpermute(w: np.ndarray, heads: int) -> np.ndarray:
        rows, rest = w.shape[0], w.shape[1:]
        return w.reshape(heads, rows // heads // 2, 2, *rest).swapaxes(1, 2).reshape(rows, *rest)

    out = {}
    for tensor in GGUFReader(str(path)).tensors:
        array = np.asarray(dequantize(tensor.data, tensor.tensor_type), dtype=np.float32)
        kind = tensor.name.split(".")[2] if tensor.name.startswith("blk.") else ""
        if kind == "attn_q":
            array = unpermute(array, num_heads)
        elif kind == "attn_k":
            array = unpermute(array, num_kv_heads)
        out[tensor.name] = torch.from_numpy(np.array(array))  # a writable copy
    return out


def _same_bits(ours: torch.Tensor, expected: torch.Tensor) -> bool:
    view = {4: torch.int32, 2: torch.int16}[ours.element_size()]
    return ours.dtype == expected.dtype and ours.shape == expected.shape and torch.equal(ours.view(view), expected.view(view))


@pytest.mark.parametrize(
    "shape, ggml_type", [(TINY, T.Q4_1), (TINY, T.Q8_0), (TINY, T.F16), (K_QUANT_SHAPE, T.Q4_K), (K_QUANT_SHAPE, T.Q6_K)]
)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=str)
def test_loaded_weights_equal_the_package_dequantisation(tmp_path, shape, ggml_type, dtype):
    path = tmp_path / "m.gguf"
    write_synthetic_gguf(path, shape, ggml_type, seed=1)
    loaded = load_model(path, dtype, torch.device("cpu"))
    assert loaded.spec.num_layers == shape.num_layers and loaded.spec.head_dim == shape.head_dim
    _assert_equal_to_reference(loaded.weights, _reference_tensors(path, shape.num_heads, shape.num_kv_heads), dtype)


def _assert_equal_to_reference(w: LlamaWeights, ref: dict[str, torch.Tensor], dtype: torch.dtype) -> None:
    for i, layer in enumerate(w.layers):
        p = f"blk.{i}."
        assert _same_bits(layer.attn_norm, ref[p + "attn_norm.weight"])
        assert _same_bits(layer.mlp_norm, ref[p + "ffn_norm.weight"])
        fused = {
            "qkv": torch.cat([ref[p + "attn_q.weight"], ref[p + "attn_k.weight"], ref[p + "attn_v.weight"]]),
            "o": ref[p + "attn_output.weight"],
            "gate_up": torch.cat([ref[p + "ffn_gate.weight"], ref[p + "ffn_up.weight"]]),
            "down": ref[p + "ffn_down.weight"],
        }
        for key, expected in fused.items():
            linear = getattr(layer, key)
            if linear.is_packed:  # oneDNN's blocked layout: compare through a product with I
                eye = torch.eye(linear.in_features, dtype=dtype)
                assert torch.equal(linear.dense(eye).t(), expected.to(dtype)), key
            else:
                assert _same_bits(linear.weight, expected.to(dtype)), key
    assert _same_bits(w.embed, ref["token_embd.weight"].to(dtype))
    assert _same_bits(w.final_norm, ref["output_norm.weight"])


@pytest.mark.parametrize("is_packed", [True, False], ids=["packed", "plain"])
@pytest.mark.parametrize("shuffled", [False, True], ids=["file_order", "shuffled"])
def test_layers_built_as_they_complete_in_any_tensor_order(tmp_path, monkeypatch, is_packed, shuffled):
    """Packed layers hand their buffers to the next; plain ones keep them. Either way, in file
    order or with layers interleaved, every layer holds its own values."""
    if not is_packed:
        monkeypatch.setattr(linear_module, "_mkldnn_packing_available", lambda: False)
    shape = LlamaShape(64, 96, 4, 4, 2, 320)
    path = tmp_path / "m.gguf"
    write_synthetic_gguf(path, shape, T.Q8_0, seed=2)
    with GGUFFile(path) as file:
        spec = spec_from_gguf(file.metadata, set(file.tensors), "m")
        if shuffled:
            items = list(file.tensors.items())
            random.Random(stable_seed("gguf", "shuffle")).shuffle(items)
            file.tensors = dict(items)
        builder = LlamaWeights.builder(spec, torch.bfloat16, torch.device("cpu"))
        load_gguf_weights(file, spec, builder)
    weights = builder.finish()
    if not is_packed:
        assert not any(layer.qkv.is_packed or layer.down.is_packed for layer in weights.layers)
    _assert_equal_to_reference(weights, _reference_tensors(path, shape.num_heads, shape.num_kv_heads), torch.bfloat16)
    if is_packed and not shuffled and weights.layers[0].qkv.is_packed:
        assert builder.num_scratch_sets == 1


def test_rotary_rows_view_undoes_the_converter_permutation():
    heads, head_dim, cols = 3, 8, 5
    ours = torch.arange(heads * head_dim * cols, dtype=torch.float32).view(heads * head_dim, cols)
    # the converter's permutation: per head, row (j, i) of [2, head_dim/2] is stored at (i, j)
    stored = ours.view(heads, 2, head_dim // 2, cols).transpose(1, 2).reshape(heads * head_dim, cols)
    dest = torch.empty_like(ours)
    rotary_rows_view(dest, heads).copy_(stored.view(heads, head_dim // 2, 2, cols))
    assert torch.equal(dest, ours)


def test_a_tensor_of_the_wrong_shape_is_rejected(tmp_path):
    path = tmp_path / "m.gguf"
    write_synthetic_gguf(path, TINY, T.Q8_0)
    data = bytearray(path.read_bytes())
    ff = int(TINY.intermediate_size).to_bytes(8, "little")
    bad = int(TINY.intermediate_size - 32).to_bytes(8, "little")
    # feed_forward_length (u32 metadata) says 96; make the first ffn_gate tensor's `ne[1]` 64
    marker = data.index(b"blk.0.ffn_gate.weight")
    start = marker + len(b"blk.0.ffn_gate.weight") + 4 + 8  # past n_dims and ne[0]
    assert data[start : start + 8] == ff
    data[start : start + 8] = bad
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="ffn_gate|gate_proj"):
        load_model(path, torch.bfloat16, torch.device("cpu"))
