"""Tensor-parallel shards of the model (model/tensor_parallel.py, ModelSpec.shard, the weights
builder's and the loader's `shard`): ranks joined by gloo, each holding its heads and its slice
of the MLP, give the whole model's logits (float32); replicated KV heads when the ranks
outnumber them; sizes that do not split the model are refused, naming the counts."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from neo_async.model.llama import LlamaModel
from neo_async.model.loader import load_model
from neo_async.model.registry import default_model_path
from neo_async.model.spec import ModelSpec
from neo_async.model.tensor_parallel import Shard, destroy_process_group, free_init_method, init_process_group
from neo_async.model.weights import LlamaWeights
from tests.model_factory import VOCAB_SIZE, write_random_checkpoint
from tests.seeds import stable_seed

CPU = torch.device("cpu")
MAX_POSITIONS = 64
# (arch, ranks): GQA 4/2 heads; Qwen2 6/2 with q/k/v bias; 4 heads over 1 KV head (replicated on
# both ranks); tied embeddings with as many KV heads as heads
HF_CASES = (("llama_gqa", 2), ("qwen2_bias", 2), ("llama31_rope_scaling", 2), ("llama_tied", 2))


def _reference_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
    """q [T, Hq, D], k, v [T, Hkv, D] of one sequence -> causal attention [T, Hq * D] in float32."""
    num_tokens, num_heads, head_dim = q.shape
    group = num_heads // k.shape[1]
    k = k.float().repeat_interleave(group, dim=1)  # [T, Hq, D]
    v = v.float().repeat_interleave(group, dim=1)  # [T, Hq, D]
    scores = torch.einsum("thd,shd->hts", q.float(), k) * scale  # [Hq, T, T]
    future = torch.ones(num_tokens, num_tokens, dtype=torch.bool).triu(1)
    probs = scores.masked_fill(future, float("-inf")).softmax(-1)
    return torch.einsum("hts,shd->thd", probs, v).reshape(num_tokens, num_heads * head_dim)


def _forward(model: LlamaModel, token_ids: torch.Tensor) -> torch.Tensor:
    """token_ids [T] of one sequence from position 0 -> logits [T, vocab] float32."""
    rope = model.rope(torch.arange(len(token_ids)))
    hidden = model.embed(token_ids)  # [T, hidden]
    for layer in range(model.spec.num_layers):
        q, k, v = model.pre(layer, hidden, rope)
        hidden = model.post(layer, hidden, _reference_attention(q, k, v, model.spec.attn_scale))
    return model.logits(hidden).float()


def _whole_model_logits(path: Path, token_ids: torch.Tensor) -> torch.Tensor:
    loaded = load_model(path, torch.float32, CPU, skip_tokenizer_init=True)
    return _forward(LlamaModel(loaded.spec, loaded.weights, MAX_POSITIONS), token_ids)


def _rank_main(rank: int, size: int, init_method: str, cases: list[tuple[Path, torch.Tensor, torch.Tensor, float]]) -> None:
    """One rank (a spawned process): each case's shard gives the whole model's logits."""
    torch.set_num_threads(1)
    shard = init_process_group(rank, size, init_method, CPU, timeout_s=60.0)
    try:
        for path, token_ids, expected, tolerance in cases:
            loaded = load_model(path, torch.float32, CPU, skip_tokenizer_init=True, shard=shard)
            assert (loaded.spec.tp_rank, loaded.spec.tp_size) == (rank, size)
            logits = _forward(LlamaModel(loaded.spec, loaded.weights, MAX_POSITIONS, shard), token_ids)
            error = (logits - expected).abs().max().item()
            assert torch.allclose(logits, expected, atol=tolerance, rtol=tolerance), f"{path.name}: max error {error:.2e}"
    finally:
        destroy_process_group()


def _run_ranks(size: int, cases: list[tuple[Path, torch.Tensor, torch.Tensor, float]]) -> None:
    mp.spawn(_rank_main, args=(size, free_init_method(), cases), nprocs=size, join=True)


def _tokens(n: int, seed: int, vocab_size: int) -> torch.Tensor:
    return torch.randint(3, vocab_size, (n,), generator=torch.Generator().manual_seed(seed))


def test_two_ranks_give_the_whole_models_logits(tmp_path):
    cases = []
    for arch, size in HF_CASES:
        path = tmp_path / arch
        write_random_checkpoint(path, arch, seed=stable_seed(arch, "tp", modulo=1000))
        token_ids = _tokens(13, stable_seed(arch, modulo=1000), VOCAB_SIZE)
        cases.append((path, token_ids, _whole_model_logits(path, token_ids), 1e-5))
    _run_ranks(2, cases)


@pytest.mark.slow
def test_embedded_gguf_model_splits_over_three_ranks():
    """SmolLM2-135M: 9 heads, 3 KV heads, Q4_1 blocks sliced after dequantisation."""
    path = default_model_path()
    token_ids = _tokens(7, 5, 49152)
    _run_ranks(3, [(path, token_ids, _whole_model_logits(path, token_ids), 1e-4)])


def _spec(num_heads: int, num_kv_heads: int, intermediate_size: int = 96) -> ModelSpec:
    return ModelSpec(
        name="tiny", num_layers=2, hidden_size=64, intermediate_size=intermediate_size, num_heads=num_heads,
        num_kv_heads=num_kv_heads, head_dim=16, vocab_size=50, rms_norm_eps=1e-5, rope_theta=10000.0,
        max_position_embeddings=128, tie_word_embeddings=False, attention_bias=True,
    )  # fmt: skip


def test_rank_spec_divides_heads_and_intermediate_and_keeps_the_rest():
    spec = _spec(8, 4)
    rank = spec.shard(1, 2)
    assert (rank.num_heads, rank.num_kv_heads, rank.intermediate_size) == (4, 2, 48)
    assert (rank.tp_rank, rank.tp_size) == (1, 2)
    assert (rank.head_dim, rank.attn_scale, rank.hidden_size, rank.vocab_size) == (16, spec.attn_scale, 64, 50)
    assert rank.kv_bytes_per_token(2) * 2 == spec.kv_bytes_per_token(2)
    assert spec.shard(0, 1) is spec
    replicated = spec.shard(7, 8)  # 8 ranks over 4 KV heads: one each, on two ranks
    assert (replicated.num_heads, replicated.num_kv_heads, replicated.group_size) == (1, 1, 1)
    with pytest.raises(ValueError, match="already rank 1 of 2"):
        rank.shard(0, 2)
    with pytest.raises(ValueError, match="out of range"):
        Shard(2, 2)


@pytest.mark.parametrize(
    ("num_heads", "num_kv_heads", "intermediate_size", "size", "named"),
    [
        (9, 3, 96, 2, ("num_heads 9", "num_kv_heads 3")),
        (8, 4, 96, 3, ("num_heads 8", "num_kv_heads 4")),
        (12, 4, 96, 6, ("6 is not a multiple of num_kv_heads 4",)),
        (8, 2, 90, 4, ("intermediate_size 90",)),
    ],
)
def test_a_size_that_does_not_split_the_model_is_refused_naming_the_counts(
    num_heads, num_kv_heads, intermediate_size, size, named
):
    with pytest.raises(ValueError, match=f"tensor-parallel size {size} does not split tiny") as info:
        _spec(num_heads, num_kv_heads, intermediate_size).shard(0, size)
    for text in named:
        assert text in str(info.value)


def test_the_embedded_model_is_refused_over_two_ranks_before_loading():
    with pytest.raises(ValueError, match="num_heads 9 is not a multiple of 2; num_kv_heads 3 is not a multiple of 2"):
        load_model(None, torch.float32, CPU, skip_tokenizer_init=True, shard=Shard(0, 2))


@pytest.mark.parametrize(("num_kv_heads", "size"), [(2, 2), (1, 2), (2, 4)])
def test_rank_weights_are_the_whole_models_rows_and_columns(num_kv_heads, size):
    """The builder keeps rank r's rows of q/k/v (and bias) and gate/up, its columns of o and
    down; norms, embedding and head whole. KV rows: divided, or the one KV head the rank's
    query heads read (replicated)."""
    spec = _spec(4, num_kv_heads)
    gen = torch.Generator().manual_seed(stable_seed(num_kv_heads, size))
    h, q, kv, inter, d = spec.hidden_size, spec.q_size, spec.kv_size, spec.intermediate_size, spec.head_dim
    shapes = {"model.embed_tokens.weight": (spec.vocab_size, h), "model.norm.weight": (h,), "lm_head.weight": (spec.vocab_size, h)}
    for i in range(spec.num_layers):
        p = f"model.layers.{i}."
        shapes |= {
            p + "input_layernorm.weight": (h,), p + "post_attention_layernorm.weight": (h,),
            p + "self_attn.q_proj.weight": (q, h), p + "self_attn.k_proj.weight": (kv, h),
            p + "self_attn.v_proj.weight": (kv, h), p + "self_attn.o_proj.weight": (h, q),
            p + "self_attn.q_proj.bias": (q,), p + "self_attn.k_proj.bias": (kv,), p + "self_attn.v_proj.bias": (kv,),
            p + "mlp.gate_proj.weight": (inter, h), p + "mlp.up_proj.weight": (inter, h), p + "mlp.down_proj.weight": (h, inter),
        }  # fmt: skip
    tensors = {name: torch.randn(shape, generator=gen) for name, shape in shapes.items()}
    ranks = []
    for rank in range(size):
        builder = LlamaWeights.builder(spec, torch.float32, CPU, shard=Shard(rank, size))
        for name, tensor in tensors.items():
            builder.add(name, tensor)
        ranks.append(builder.finish())
    heads_per_rank = spec.num_heads // size
    for rank, weights in enumerate(ranks):
        torch.testing.assert_close(weights.embed, tensors["model.embed_tokens.weight"], atol=0, rtol=0)
        layer, p = weights.layers[1], "model.layers.1."
        kv_heads = [h_q * num_kv_heads // spec.num_heads for h_q in range(rank * heads_per_rank, (rank + 1) * heads_per_rank)]
        kv_heads = sorted(set(kv_heads))  # the KV heads this rank's query heads read
        q_rows = slice(rank * heads_per_rank * d, (rank + 1) * heads_per_rank * d)
        kv_rows = torch.cat([torch.arange(head * d, (head + 1) * d) for head in kv_heads])
        inter_rows = slice(rank * inter // size, (rank + 1) * inter // size)
        qkv = torch.cat([tensors[p + f"self_attn.{x}_proj.weight"][rows] for x, rows in (("q", q_rows), ("k", kv_rows), ("v", kv_rows))])
        bias = torch.cat([tensors[p + f"self_attn.{x}_proj.bias"][rows] for x, rows in (("q", q_rows), ("k", kv_rows), ("v", kv_rows))])
        x = torch.randn(3, h, generator=gen)
        torch.testing.assert_close(layer.qkv(x), x @ qkv.T)
        torch.testing.assert_close(layer.qkv_bias, bias, atol=0, rtol=0)
        gate_up = torch.cat([tensors[p + "mlp.gate_proj.weight"][inter_rows], tensors[p + "mlp.up_proj.weight"][inter_rows]])
        torch.testing.assert_close(layer.gate_up(x), x @ gate_up.T)
        attn = torch.randn(3, heads_per_rank * d, generator=gen)
        torch.testing.assert_close(layer.o(attn), attn @ tensors[p + "self_attn.o_proj.weight"][:, q_rows].T)
        act = torch.randn(3, inter // size, generator=gen)
        torch.testing.assert_close(layer.down(act), act @ tensors[p + "mlp.down_proj.weight"][:, inter_rows].T)


def _sum_rank_main(rank: int, size: int, init_method: str, dtype: torch.dtype) -> None:
    """Each rank's 16-bit partial sums add up to the float32 sum of all ranks', rounded once."""
    shard = init_process_group(rank, size, init_method, CPU, timeout_s=60.0)
    try:
        parts = [torch.randn(5, 64, generator=torch.Generator().manual_seed(r)).to(dtype) for r in range(size)]
        out = parts[rank].clone()
        assert shard.all_reduce_(out) is out and out.dtype == dtype
        assert torch.equal(out, sum(p.float() for p in parts).to(dtype))
    finally:
        destroy_process_group()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_sixteen_bit_partial_sums_are_added_in_float32(dtype):
    """Three ranks: summed in 16 bits, the first two partials would be rounded before the third
    is added (two roundings), so the check can tell the float32 sum from it."""
    mp.spawn(_sum_rank_main, args=(3, free_init_method(), dtype), nprocs=3, join=True)
