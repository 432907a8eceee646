"""The target model's tokenizer, behind `encode(text) -> ids`, `decode(ids) -> text`, `vocab_size`.

A tokenizer.json file or an HF directory is read with the `tokenizers` library; a GGUF
file, or no path (the server's embedded model), goes through neo_async's own loader,
imported only then.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol


class Tokenizer(Protocol):
    vocab_size: int

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: list[int]) -> str: ...


class HFTokenizer:
    """A `tokenizers.Tokenizer`; encode adds no special tokens (a prompt's own tokens)."""

    def __init__(self, tokenizer) -> None:
        self._tokenizer = tokenizer
        self.vocab_size: int = tokenizer.get_vocab_size(with_added_tokens=True)
        self.special_ids = frozenset(i for i, t in tokenizer.get_added_tokens_decoder().items() if t.special)

    def encode(self, text: str) -> list[int]:
        return self._tokenizer.encode(text, add_special_tokens=False).ids

    def decode(self, ids: list[int]) -> str:
        return self._tokenizer.decode(list(ids), skip_special_tokens=False)


class ModelTokenizer:
    """neo_async's tokenizer; encode adds no BOS (a prompt's own tokens, as for HFTokenizer)."""

    def __init__(self, tokenizer) -> None:
        self._tokenizer = tokenizer
        self.vocab_size: int = tokenizer.vocab_size

    def encode(self, text: str) -> list[int]:
        return self._tokenizer.encode(text, add_special_tokens=False)

    def decode(self, ids: list[int]) -> str:
        return self._tokenizer.decode(list(ids))


def load_tokenizer(path: str | Path | None) -> Tokenizer:
    if path is None or str(path).endswith(".gguf"):
        from neo_async.model.tokenizer import load_tokenizer as load_model_tokenizer

        return ModelTokenizer(load_model_tokenizer(None if path is None else str(path)))
    from tokenizers import Tokenizer as RustTokenizer

    file = Path(path)
    if file.is_dir():
        file = file / "tokenizer.json"
    if not file.is_file():
        raise FileNotFoundError(f"no tokenizer at {path} (want tokenizer.json, an HF directory or a GGUF file)")
    return HFTokenizer(RustTokenizer.from_file(str(file)))
