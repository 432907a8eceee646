"""Model shapes the simulator prices (no weights needed): the project's `ModelSpec`, filled in
from each checkpoint's published config.json."""

from __future__ import annotations

from neo_async.model.spec import ModelSpec


def _llama(name: str, layers: int, hidden: int, ffn: int, heads: int, kv_heads: int, vocab: int, ctx: int) -> ModelSpec:
    return ModelSpec(
        name=name,
        num_layers=layers,
        hidden_size=hidden,
        intermediate_size=ffn,
        num_heads=heads,
        num_kv_heads=kv_heads,
        head_dim=hidden // heads,
        vocab_size=vocab,
        rms_norm_eps=1e-5,
        rope_theta=10000.0,
        max_position_embeddings=ctx,
        tie_word_embeddings=False,
    )


MODELS = {
    # meta-llama/Llama-2-7b-hf config.json
    "llama-2-7b": _llama("llama-2-7b", 32, 4096, 11008, 32, 32, 32000, 4096),
    # meta-llama/Meta-Llama-3-8B config.json
    "llama-3-8b": _llama("llama-3-8b", 32, 4096, 14336, 32, 8, 128256, 8192),
    # meta-llama/Llama-2-13b-hf config.json
    "llama-2-13b": _llama("llama-2-13b", 40, 5120, 13824, 40, 40, 32000, 4096),
    # meta-llama/Meta-Llama-3-70B config.json (Llama-2-70B has the same layers, vocab 32000)
    "llama-3-70b": _llama("llama-3-70b", 80, 8192, 28672, 64, 8, 128256, 8192),
    # HuggingFaceTB/SmolLM2-135M-Instruct, the embedded model (for this machine's runs)
    "smollm2-135m": ModelSpec("smollm2-135m", 30, 576, 1536, 9, 3, 64, 49152, 1e-5, 100000.0, 8192, True),
}


def load_model_spec(name: str) -> ModelSpec:
    key = name.lower()
    if key not in MODELS:
        raise ValueError(f"unknown model {name!r}; known: {', '.join(MODELS)}")
    return MODELS[key]


def layer_params(spec: ModelSpec) -> int:
    """Weights of one decoder layer's linear layers (QKV, O, gate, up, down)."""
    h = spec.hidden_size
    return h * (spec.q_size + 2 * spec.kv_size) + spec.q_size * h + 3 * h * spec.intermediate_size


def num_params(spec: ModelSpec) -> int:
    """All weights: layers, embedding and (untied) LM head."""
    embeddings = spec.vocab_size * spec.hidden_size * (1 if spec.tie_word_embeddings else 2)
    return spec.num_layers * layer_params(spec) + embeddings
