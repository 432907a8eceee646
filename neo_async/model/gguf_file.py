"""GGUF files: metadata, architecture facts and dequantised tensors (via the `gguf` package)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import numpy as np
from gguf import GGUFReader, GGUFValueType
from gguf.quants import dequantize

from neo_async.model.spec import ModelSpec, RopeScaling

SUPPORTED_ARCHS = ("llama", "mistral", "qwen2", "smollm")

# GGUF tensor name (after `blk.N.`) -> canonical (HF) name (after `model.layers.N.`)
_LAYER_NAMES = {
    "attn_norm.weight": "input_layernorm.weight",
    "attn_q.weight": "self_attn.q_proj.weight",
    "attn_k.weight": "self_attn.k_proj.weight",
    "attn_v.weight": "self_attn.v_proj.weight",
    "attn_q.bias": "self_attn.q_proj.bias",
    "attn_k.bias": "self_attn.k_proj.bias",
    "attn_v.bias": "self_attn.v_proj.bias",
    "attn_output.weight": "self_attn.o_proj.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "ffn_gate.weight": "mlp.gate_proj.weight",
    "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
}
_GLOBAL_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}


def _field_value(field: Any) -> Any:
    if field.types and field.types[0] == GGUFValueType.ARRAY and len(field.types) > 1:
        if field.types[1] == GGUFValueType.STRING:
            return [bytes(field.parts[i]).decode("utf-8", errors="replace") for i in field.data]
        return [field.parts[i].item() for i in field.data]
    return field.contents()


def read_gguf_metadata(path: Path, reader: GGUFReader | None = None) -> dict[str, Any]:
    reader = reader or GGUFReader(str(path))
    return {name: _field_value(field) for name, field in reader.fields.items() if not name.startswith("GGUF.")}


def spec_from_gguf(meta: dict[str, Any], tensor_names: set[str], name: str) -> ModelSpec:
    arch = meta.get("general.architecture")
    if arch not in SUPPORTED_ARCHS:
        raise ValueError(f"GGUF architecture {arch!r} is not supported (supported: {SUPPORTED_ARCHS})")

    def get(key: str, default: Any = None) -> Any:
        value = meta.get(f"{arch}.{key}", default)
        if value is None:
            raise ValueError(f"GGUF metadata lacks {arch}.{key}")
        return value

    hidden = int(get("embedding_length"))
    num_heads = int(get("attention.head_count"))
    scaling = None
    scaling_type = meta.get(f"{arch}.rope.scaling.type")
    if scaling_type == "linear":
        scaling = RopeScaling("linear", float(get("rope.scaling.factor")))
    eos = meta.get("tokenizer.ggml.eos_token_id")
    return ModelSpec(
        name=name,
        num_layers=int(get("block_count")),
        hidden_size=hidden,
        intermediate_size=int(get("feed_forward_length")),
        num_heads=num_heads,
        num_kv_heads=int(get("attention.head_count_kv", num_heads)),
        head_dim=int(get("attention.key_length", hidden // num_heads)),
        vocab_size=int(meta.get(f"{arch}.vocab_size") or len(meta["tokenizer.ggml.tokens"])),
        rms_norm_eps=float(get("attention.layer_norm_rms_epsilon")),
        rope_theta=float(get("rope.freq_base", 10000.0)),
        max_position_embeddings=int(get("context_length")),
        tie_word_embeddings="output.weight" not in tensor_names,
        attention_bias="blk.0.attn_q.bias" in tensor_names,
        rope_scaling=scaling,
        bos_token_id=meta.get("tokenizer.ggml.bos_token_id"),
        eos_token_ids=() if eos is None else (int(eos),),
    )


def unpermute_rotary_rows(weight: np.ndarray, num_heads: int) -> np.ndarray:
    """Undo the GGUF converter's reordering of Q/K projection rows.

    The converter stores each head's rows in interleaved rotary-pair order; we apply RoPE in
    the half-split order, so per head rows viewed as [head_dim/2, 2] are transposed back.
    Works for weights [out, in] and biases [out].
    """
    out = weight.shape[0]
    head_dim = out // num_heads
    rest = weight.shape[1:]
    w = weight.reshape(num_heads, head_dim // 2, 2, *rest)
    return np.ascontiguousarray(w.swapaxes(1, 2).reshape(out, *rest))


def iter_gguf_tensors(reader: GGUFReader, spec: ModelSpec) -> Iterator[tuple[str, np.ndarray]]:
    """(canonical name, float32 array) for every tensor; rope_freqs yields `rope_freqs`."""
    for tensor in reader.tensors:
        name = tensor.name
        if name == "rope_freqs.weight":
            yield "rope_freqs", np.asarray(dequantize(tensor.data, tensor.tensor_type), dtype=np.float32)
            continue
        if name.startswith("blk."):
            _, index, local = name.split(".", 2)
            if local not in _LAYER_NAMES:
                raise ValueError(f"unexpected GGUF tensor {name!r}")
            canonical = f"model.layers.{index}.{_LAYER_NAMES[local]}"
        elif name in _GLOBAL_NAMES:
            canonical = _GLOBAL_NAMES[name]
        else:
            raise ValueError(f"unexpected GGUF tensor {name!r}")
        array = np.asarray(dequantize(tensor.data, tensor.tensor_type), dtype=np.float32)
        if not array.flags.writeable:  # F32 tensors are read-only views of the memory-mapped file
            array = array.copy()
        if local_is(name, "attn_q"):
            array = unpermute_rotary_rows(array, spec.num_heads)
        elif local_is(name, "attn_k"):
            array = unpermute_rotary_rows(array, spec.num_kv_heads)
        yield canonical, array


def local_is(name: str, kind: str) -> bool:
    return name.startswith("blk.") and name.split(".")[2] == kind
