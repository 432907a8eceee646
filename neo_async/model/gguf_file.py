"""GGUF files: metadata, architecture facts, and tensors dequantised into the model's weights."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from neo_async.model.dequant import dequantize_into
from neo_async.model.gguf_reader import GGUFFile
from neo_async.model.spec import ModelSpec, RopeScaling
from neo_async.model.weights import WeightsBuilder

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


def read_gguf_metadata(path: Path) -> dict[str, Any]:
    with GGUFFile(path) as f:
        return f.metadata


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


def rotary_rows_view(dest: torch.Tensor, num_heads: int) -> torch.Tensor:
    """The view of Q/K projection rows dest [out, in] (or a bias [out]) whose index order is
    the GGUF file's row order.

    The converter stores each head's rows in interleaved rotary-pair order; we apply RoPE in
    the half-split order. Per head, the file's row (i, j) of [head_dim/2, 2] is our row (j, i)
    of [2, head_dim/2]: writing the file's rows in order through this view undoes the reorder.
    """
    head_dim = dest.shape[0] // num_heads
    return dest.view(num_heads, 2, head_dim // 2, *dest.shape[1:]).transpose(1, 2)


def rotary_dest_rows(num_rows: int, num_heads: int) -> np.ndarray:
    """int64 [num_rows]: the row of ours that each of the file's Q/K rows goes to (the
    index order of `rotary_rows_view`)."""
    return rotary_rows_view(torch.arange(num_rows), num_heads).reshape(-1).numpy()


def canonical_name(name: str) -> str:
    """GGUF tensor name -> canonical (HF) name; raises ValueError on names we do not know."""
    if name.startswith("blk."):
        _, index, local = name.split(".", 2)
        if local in _LAYER_NAMES:
            return f"model.layers.{index}.{_LAYER_NAMES[local]}"
    elif name in _GLOBAL_NAMES:
        return _GLOBAL_NAMES[name]
    raise ValueError(f"unexpected GGUF tensor {name!r}")


def load_gguf_weights(file: GGUFFile, spec: ModelSpec, builder: WeightsBuilder) -> tuple[float, ...] | None:
    """Dequantise every tensor of `file` straight into its place in `builder`, in file order
    (the builder packs each layer once it is complete); returns the `rope_freqs` factors if
    the file has them."""
    rope_freqs = None
    for info in file.tensors.values():
        raw = file.raw(info)
        if info.name == "rope_freqs.weight":
            factors = torch.empty(info.shape, dtype=torch.float32)
            dequantize_into(factors, raw, info.ggml_type)
            rope_freqs = tuple(factors.tolist())
            continue
        with builder.target(canonical_name(info.name), info.shape) as dest:
            kind = info.name.split(".")[2] if info.name.startswith("blk.") else ""
            dest_rows = None
            if kind in ("attn_q", "attn_k"):
                dest_rows = rotary_dest_rows(dest.shape[0], spec.num_heads if kind == "attn_q" else spec.num_kv_heads)
                if dest.dim() == 1:  # a bias: every entry is a row
                    dest = dest.view(-1, 1)
            builder.keep_stored(canonical_name(info.name), raw, info.ggml_type, info.shape, dest_rows)
            dequantize_into(dest, raw, info.ggml_type, dest_rows)
    return rope_freqs
