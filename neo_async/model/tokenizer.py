"""Tokenizer and chat template, from a Hugging Face directory or GGUF metadata."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jinja2
import jinja2.sandbox
from tokenizers import Regex, Tokenizer as HFTokenizer, decoders, models, pre_tokenizers

# GGUF `tokenizer.ggml.pre` names whose pre-tokenizer splits digits one by one before the
# GPT-2 byte-level split (llama.cpp's table); every other gpt2-model file uses the plain split.
_DIGIT_SPLIT_PRE = {"smollm", "starcoder", "refact", "command-r", "codeshell", "exaone", "minerva-7b"}
_LLAMA3_PRE = {"llama-bpe", "llama3", "smaug-bpe", "falcon3"}
_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_CONTROL_TOKEN_TYPES = (3, 4)  # GGUF token types: CONTROL, USER_DEFINED


class Tokenizer:
    """Text <-> token ids, plus the model's chat template.

    Contract: `decode(encode(s)) == s` for text without special tokens; special tokens in
    input text are recognised (a chat template renders them as text).
    """

    def __init__(
        self,
        backend: HFTokenizer,
        chat_template: str | None,
        eos_token_id: int | None,
        bos_token_id: int | None = None,
        add_bos_token: bool = False,
    ) -> None:
        self._backend = backend
        self.chat_template = chat_template
        self.eos_token_id = eos_token_id
        self.bos_token_id = bos_token_id
        self.add_bos_token = add_bos_token
        self.vocab_size = backend.get_vocab_size(with_added_tokens=True)
        self._template: jinja2.Template | None = None

    def token_text(self, token_id: int) -> str:
        return self._backend.id_to_token(token_id) or ""

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        ids = self._backend.encode(text, add_special_tokens=False).ids
        if add_special_tokens and self.add_bos_token and self.bos_token_id is not None:
            if not ids or ids[0] != self.bos_token_id:
                ids = [self.bos_token_id, *ids]
        return ids

    def decode_stream(self) -> "DecodeStream":
        """Incremental detokenizer: feed one id at a time, get text once it is complete UTF-8."""
        return DecodeStream(self._backend)

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return self._backend.decode(ids, skip_special_tokens=skip_special_tokens)

    def apply_chat_template(self, messages: list[dict[str, Any]], add_generation_prompt: bool = True, **extra: Any) -> str:
        if not self.chat_template:
            raise ValueError("this model has no chat template; use a plain completion")
        if self._template is None:
            env = jinja2.sandbox.ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
            env.globals["raise_exception"] = _raise_template_error
            env.filters["tojson"] = lambda v, indent=None: json.dumps(v, ensure_ascii=False, indent=indent)
            self._template = env.from_string(self.chat_template)
        special = {
            "bos_token": self._token_or_empty(self.bos_token_id),
            "eos_token": self._token_or_empty(self.eos_token_id),
        }
        return self._template.render(messages=messages, add_generation_prompt=add_generation_prompt, **special, **extra)

    def _token_or_empty(self, token_id: int | None) -> str:
        return "" if token_id is None else self.token_text(token_id)

    @property
    def chat_template_adds_bos(self) -> bool:
        bos = self._token_or_empty(self.bos_token_id)
        return bool(bos) and bos in (self.chat_template or "")


class DecodeStream:
    def __init__(self, backend: HFTokenizer) -> None:
        self._backend = backend
        self._stream = decoders.DecodeStream(skip_special_tokens=True)

    def step(self, token_id: int) -> str:
        return self._stream.step(self._backend, token_id) or ""


def token_text(tokenizer: Tokenizer | None, token_id: int) -> str:
    """One token's text as logprobs report it (special tokens kept); `token_id:<id>` without a tokenizer."""
    if tokenizer is None:
        return f"token_id:{token_id}"
    return tokenizer.decode([token_id], skip_special_tokens=False)


def _raise_template_error(message: str) -> None:
    raise ValueError(f"chat template error: {message}")


def tokenizer_from_hf_dir(path: Path) -> Tokenizer:
    """Raises ValueError naming the file when the directory has no tokenizer.json."""
    tokenizer_file = path / "tokenizer.json"
    if not tokenizer_file.is_file():
        raise ValueError(
            f"{tokenizer_file} does not exist: the tokenizer is read from it. Copy the model's tokenizer.json "
            "there, or pass skip_tokenizer_init=True (--skip-tokenizer-init) to serve token-id prompts "
            "without a tokenizer (outputs are then token ids only)"
        )
    backend = HFTokenizer.from_file(str(tokenizer_file))
    cfg: dict[str, Any] = {}
    if (path / "tokenizer_config.json").exists():
        cfg = json.loads((path / "tokenizer_config.json").read_text())
    template = cfg.get("chat_template")
    if template is None and (path / "chat_template.jinja").exists():
        template = (path / "chat_template.jinja").read_text()
    if isinstance(template, list):  # named templates: take the default one
        template = next((t["template"] for t in template if t.get("name") == "default"), template[0]["template"])

    def token_id(key: str) -> int | None:
        tok = cfg.get(key)
        if isinstance(tok, dict):
            tok = tok.get("content")
        return backend.token_to_id(tok) if isinstance(tok, str) else None

    return Tokenizer(
        backend,
        template,
        eos_token_id=token_id("eos_token"),
        bos_token_id=token_id("bos_token"),
        add_bos_token=bool(cfg.get("add_bos_token", False)),
    )


def tokenizer_from_gguf_fields(fields: dict[str, Any]) -> Tokenizer:
    """Build a byte-level BPE tokenizer from `tokenizer.ggml.*` metadata (GPT-2 style models)."""
    kind = fields.get("tokenizer.ggml.model")
    if kind != "gpt2":
        raise ValueError(f"GGUF tokenizer model {kind!r} is not supported (only byte-level BPE, 'gpt2')")
    tokens: list[str] = fields["tokenizer.ggml.tokens"]
    merges = [tuple(m.split(" ", 1)) for m in fields["tokenizer.ggml.merges"]]
    token_types: list[int] = fields.get("tokenizer.ggml.token_type") or [1] * len(tokens)
    vocab = {tok: i for i, tok in enumerate(tokens)}
    backend = HFTokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False, byte_fallback=False))
    pre = fields.get("tokenizer.ggml.pre", "default")
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=pre not in _LLAMA3_PRE | {"qwen2"})
    if pre in _LLAMA3_PRE or pre == "qwen2":
        split = pre_tokenizers.Split(Regex(_QWEN2_SPLIT if pre == "qwen2" else _LLAMA3_SPLIT), behavior="isolated")
        backend.pre_tokenizer = pre_tokenizers.Sequence([split, byte_level])
    elif pre in _DIGIT_SPLIT_PRE:
        backend.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
    else:
        backend.pre_tokenizer = byte_level
    backend.decoder = decoders.ByteLevel()
    special = [tokens[i] for i, t in enumerate(token_types) if t in _CONTROL_TOKEN_TYPES]
    backend.add_special_tokens(special)
    return Tokenizer(
        backend,
        fields.get("tokenizer.chat_template"),
        eos_token_id=fields.get("tokenizer.ggml.eos_token_id"),
        bos_token_id=fields.get("tokenizer.ggml.bos_token_id"),
        add_bos_token=bool(fields.get("tokenizer.ggml.add_bos_token", False)),
    )


def load_tokenizer(path: str | Path | None = None) -> Tokenizer:
    """Tokenizer of a GGUF file, an HF directory (or its tokenizer.json), or the embedded default."""
    from neo_async.model.gguf_file import read_gguf_metadata
    from neo_async.model.registry import resolve_model_path

    resolved = resolve_model_path(path)
    if resolved.is_dir():
        return tokenizer_from_hf_dir(resolved)
    if resolved.name.endswith(".json"):
        return tokenizer_from_hf_dir(resolved.parent)
    return tokenizer_from_gguf_fields(read_gguf_metadata(resolved))
