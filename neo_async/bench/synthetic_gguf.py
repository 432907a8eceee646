"""Llama-shaped GGUF files of random weights, of any size and quant type, written with the
`gguf` package: for load benchmarks and tests, with nothing to download."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType as T, GGUFWriter
from tokenizers import pre_tokenizers

# Byte offsets of the float16 scales in each block: random bytes there could be inf or NaN.
F16_FIELDS: dict[T, tuple[int, ...]] = {
    T.Q4_0: (0,),
    T.Q4_1: (0, 2),
    T.Q5_0: (0,),
    T.Q5_1: (0, 2),
    T.Q8_0: (0,),
    T.Q2_K: (80, 82),
    T.Q3_K: (108,),
    T.Q4_K: (0, 2),
    T.Q5_K: (0, 2),
    T.Q6_K: (208,),
    T.IQ4_NL: (0,),
    T.TQ2_0: (64,),
}
_FLOATS = {T.F32: np.float32, T.F16: np.float16}


@dataclass(frozen=True)
class LlamaShape:
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    vocab_size: int

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads


LLAMA_7B = LlamaShape(4096, 11008, 32, 32, 32, 32000)
TINY = LlamaShape(64, 96, 2, 4, 2, 320)


def random_blocks(ggml_type: T, num_blocks: int, rng: np.random.Generator) -> np.ndarray:
    """uint8 [num_blocks, type_size]: random bits, with every float16 scale finite (normal
    and subnormal values of both signs; zero included)."""
    block_size, type_size = GGML_QUANT_SIZES[ggml_type]
    if ggml_type in _FLOATS:
        values = rng.standard_normal(num_blocks * block_size).astype(_FLOATS[ggml_type])
        return values.view(np.uint8).reshape(num_blocks, type_size)
    if ggml_type == T.BF16:
        values = rng.standard_normal(num_blocks).astype(np.float32).view(np.uint32) >> 16
        return values.astype(np.uint16).view(np.uint8).reshape(num_blocks, type_size)
    blocks = np.frombuffer(rng.bytes(num_blocks * type_size), dtype=np.uint8).reshape(num_blocks, type_size).copy()
    for offset in F16_FIELDS.get(ggml_type, ()):
        scales = (rng.standard_normal(num_blocks) * 0.02).astype(np.float16)
        scales[::97] = np.float16(3e-7)  # a subnormal
        scales[::101] = 0
        blocks[:, offset : offset + 2] = scales.view(np.uint8).reshape(num_blocks, 2)
    return blocks


def _tensor_shapes(shape: LlamaShape) -> list[tuple[str, tuple[int, ...]]]:
    """(GGUF name, numpy shape) in llama.cpp's file order."""
    h, kv = shape.hidden_size, shape.num_kv_heads * shape.head_dim
    tensors = [("token_embd.weight", (shape.vocab_size, h))]
    for i in range(shape.num_layers):
        tensors += [
            (f"blk.{i}.attn_norm.weight", (h,)),
            (f"blk.{i}.attn_q.weight", (h, h)),
            (f"blk.{i}.attn_k.weight", (kv, h)),
            (f"blk.{i}.attn_v.weight", (kv, h)),
            (f"blk.{i}.attn_output.weight", (h, h)),
            (f"blk.{i}.ffn_norm.weight", (h,)),
            (f"blk.{i}.ffn_gate.weight", (shape.intermediate_size, h)),
            (f"blk.{i}.ffn_up.weight", (shape.intermediate_size, h)),
            (f"blk.{i}.ffn_down.weight", (h, shape.intermediate_size)),
        ]
    return tensors + [("output_norm.weight", (h,)), ("output.weight", (shape.vocab_size, h))]


def _tokens(vocab_size: int) -> list[str]:
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    return alphabet + ["ab"] + [f"<extra_{i}>" for i in range(vocab_size - len(alphabet) - 1)]


def write_synthetic_gguf(path: Path, shape: LlamaShape, ggml_type: T, seed: int = 0, norm_type: T = T.F32) -> None:
    """Write a Llama GGUF of `shape`: matrices in `ggml_type`, norms in `norm_type`, a
    byte-level BPE vocabulary (one merge), streamed tensor by tensor."""
    rng = np.random.default_rng(seed)
    writer = GGUFWriter(path, "llama")
    writer.add_uint32("llama.block_count", shape.num_layers)
    writer.add_uint32("llama.context_length", 4096)
    writer.add_uint32("llama.embedding_length", shape.hidden_size)
    writer.add_uint32("llama.feed_forward_length", shape.intermediate_size)
    writer.add_uint32("llama.attention.head_count", shape.num_heads)
    writer.add_uint32("llama.attention.head_count_kv", shape.num_kv_heads)
    writer.add_float32("llama.rope.freq_base", 10000.0)
    writer.add_float32("llama.attention.layer_norm_rms_epsilon", 1e-5)
    writer.add_string("tokenizer.ggml.model", "gpt2")
    writer.add_string("tokenizer.ggml.pre", "default")
    writer.add_token_list(_tokens(shape.vocab_size))
    writer.add_token_merges(["a b"])
    writer.add_uint32("tokenizer.ggml.bos_token_id", 1)
    writer.add_uint32("tokenizer.ggml.eos_token_id", 2)
    tensors = _tensor_shapes(shape)
    types = [norm_type if len(s) == 1 else ggml_type for _, s in tensors]
    for (name, tensor_shape), ggml in zip(tensors, types):
        block_size, type_size = GGML_QUANT_SIZES[ggml]
        byte_shape = (*tensor_shape[:-1], tensor_shape[-1] // block_size * type_size)
        writer.add_tensor_info(name, byte_shape, np.dtype(np.uint8), int(np.prod(byte_shape)), raw_dtype=ggml)
    writer.write_header_to_file(path)
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    for (name, tensor_shape), ggml in zip(tensors, types):
        num_blocks = int(np.prod(tensor_shape)) // GGML_QUANT_SIZES[ggml][0]
        if len(tensor_shape) == 1 and ggml == T.F32:  # norms near 1, as trained ones are
            data = (1 + 0.1 * rng.standard_normal(tensor_shape)).astype(np.float32).view(np.uint8)
        else:
            data = random_blocks(ggml, num_blocks, rng)
        writer.write_tensor_data(data.reshape(-1))
    writer.close()
