"""Random-weight Hugging Face checkpoints written to disk, for checking our engine against
transformers on the same weights."""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers

VOCAB_SIZE = 320

ARCHS = {
    "llama_gqa": dict(model_type="llama", num_attention_heads=4, num_key_value_heads=2),
    "llama31_rope_scaling": dict(
        model_type="llama",
        num_attention_heads=4,
        num_key_value_heads=1,
        rope_theta=500000.0,
        rope_scaling=dict(
            rope_type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0, original_max_position_embeddings=64
        ),
    ),
    "qwen2_bias": dict(model_type="qwen2", num_attention_heads=6, num_key_value_heads=2),
    "llama_tied": dict(model_type="llama", num_attention_heads=4, num_key_value_heads=4, tie_word_embeddings=True),
    "mistral_g4": dict(model_type="mistral", num_attention_heads=8, num_key_value_heads=2, head_dim=16),
}


def _byte_tokenizer() -> Tokenizer:
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {ch: i for i, ch in enumerate(sorted(alphabet))}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    return tok


def write_random_checkpoint(path: Path, arch: str, seed: int) -> torch.nn.Module:
    """Build a small random model of `arch`, save it as an HF directory, return it (float32, eval)."""
    import transformers

    kwargs = dict(ARCHS[arch])
    model_type = kwargs.pop("model_type")
    config_cls = transformers.AutoConfig.for_model(model_type).__class__
    config = config_cls(
        vocab_size=VOCAB_SIZE,
        hidden_size=kwargs.pop("hidden_size", 96),
        intermediate_size=160,
        num_hidden_layers=3,
        max_position_embeddings=512,
        rms_norm_eps=1e-5,
        initializer_range=0.15,
        bos_token_id=1,
        eos_token_id=2,
        tie_word_embeddings=kwargs.pop("tie_word_embeddings", False),
        **kwargs,
    )
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
    with torch.no_grad():  # norms and biases away from their trivial init, so they are exercised
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(1.0 + 0.2 * torch.randn_like(p))
            elif name.endswith("bias"):
                p.copy_(0.3 * torch.randn_like(p))
    model.save_pretrained(path, safe_serialization=True)
    _byte_tokenizer().save(str(path / "tokenizer.json"))
    return model
