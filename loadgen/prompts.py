"""Prompts of exact token lengths, as text (needs the model's tokenizer) or as token ids.

Text prompts are drawn from a pool of "word" tokens: a space followed by lowercase letters,
each of which encodes back to itself alone. Byte-level BPE splits text at those spaces, so
a string of such words encodes to exactly the ids it was made from, and lengths add up
when blocks are joined (Mooncake prefixes). Every text prompt is still encoded once to
check; a tokenizer where that fails falls back to decode-encode-trim rounds.
"""

from __future__ import annotations

import re

import msgspec
import numpy as np
import structlog

from loadgen.tokenizer import Tokenizer
from loadgen.workload import RequestSpec

log = structlog.get_logger(__name__)

WORD = re.compile(r"^ [a-z]{2,}$")
SPECIAL_LOOKING = re.compile(r"^<.*>$|^\[.*\]$")
MIN_POOL = 32
MAX_FIXUPS = 8
IDS_ONLY_FIRST_ID = 256  # ids mode without a tokenizer: ids in [256, vocab_size)
PROMPT_FORMATS = ("text", "ids")


class Prompt(msgspec.Struct, frozen=True):
    prompt: str | list[int]
    prompt_len: int  # tokens, measured with the tokenizer (ids: len(prompt))


def word_pool(tokenizer: Tokenizer, seed: int = 0) -> np.ndarray:
    """[num_words] ids whose text is " letters", that round-trip alone and when joined."""
    special = getattr(tokenizer, "special_ids", frozenset())
    candidates = []
    for i in range(tokenizer.vocab_size):
        if i in special:
            continue
        text = tokenizer.decode([i])
        if WORD.match(text) and tokenizer.encode(text) == [i]:
            candidates.append(i)
    pool = np.asarray(candidates, dtype=np.int64)
    if len(pool) < MIN_POOL:
        return pool[:0]
    sample = np.random.default_rng(seed).choice(pool, 256).tolist()
    if tokenizer.encode(tokenizer.decode(sample)) != sample:
        log.info("word_pool_not_additive", num_words=len(pool))
        return pool[:0]
    return pool


def printable_pool(tokenizer: Tokenizer) -> np.ndarray:
    """[n] ids with non-empty printable text that does not look like a control token."""
    special = getattr(tokenizer, "special_ids", frozenset())
    ids = []
    for i in range(tokenizer.vocab_size):
        text = tokenizer.decode([i]) if i not in special else ""
        if text.strip() and text.isprintable() and not SPECIAL_LOOKING.match(text.strip()):
            ids.append(i)
    return np.asarray(ids, dtype=np.int64)


class PromptBuilder:
    """Deterministic: the prompt of request `index` depends only on (seed, index, spec)."""

    def __init__(
        self,
        tokenizer: Tokenizer | None,
        prompt_format: str = "text",
        seed: int = 0,
        block_size: int = 512,
        vocab_size: int | None = None,
    ) -> None:
        if prompt_format not in PROMPT_FORMATS:
            raise ValueError(f"prompt format must be one of {PROMPT_FORMATS}")
        if tokenizer is None and (prompt_format == "text" or vocab_size is None):
            raise ValueError("text prompts need a tokenizer; id prompts need a tokenizer or a vocab size")
        self.tokenizer = tokenizer
        self.prompt_format = prompt_format
        self.seed = seed
        self.block_size = block_size
        if tokenizer is None:
            self.pool = np.arange(min(IDS_ONLY_FIRST_ID, vocab_size // 2), vocab_size, dtype=np.int64)  # type: ignore[operator]
            self.is_additive = True
        else:
            self.pool = word_pool(tokenizer, seed)
            self.is_additive = len(self.pool) > 0
            if not self.is_additive:
                self.pool = printable_pool(tokenizer)
        log.debug("prompt_pool", num_ids=len(self.pool), is_additive=self.is_additive)

    def token_ids(self, spec: RequestSpec, index: int) -> list[int]:
        """[prompt_len] ids: the shared prefix (prefix_id), one random block per hash id (both
        shared across requests), then random."""
        ids: list[int] = []
        if spec.prefix_id is not None:
            ids.extend(np.random.default_rng([self.seed, 3, spec.prefix_id]).choice(self.pool, spec.prefix_len).tolist())
        for hash_id in spec.hash_ids:
            if len(ids) >= spec.prompt_len:
                break
            block_rng = np.random.default_rng([self.seed, 1, hash_id])
            ids.extend(block_rng.choice(self.pool, self.block_size).tolist())
        ids = ids[: spec.prompt_len]
        if len(ids) < spec.prompt_len:
            rng = np.random.default_rng([self.seed, 0, index])
            ids.extend(rng.choice(self.pool, spec.prompt_len - len(ids)).tolist())
        return ids

    def build(self, spec: RequestSpec, index: int) -> Prompt:
        if spec.prompt_text is not None:
            if self.prompt_format == "ids":
                ids = self.tokenizer.encode(spec.prompt_text)  # type: ignore[union-attr]
                return Prompt(ids, len(ids))
            return Prompt(spec.prompt_text, spec.prompt_len)
        ids = self.token_ids(spec, index)
        if self.prompt_format == "ids":
            return Prompt(ids, len(ids))
        return self._exact_text(ids, spec.prompt_len, index)

    def _exact_text(self, ids: list[int], n: int, index: int) -> Prompt:
        tokenizer = self.tokenizer
        assert tokenizer is not None
        rng = np.random.default_rng([self.seed, 2, index])
        text = tokenizer.decode(ids)
        for _ in range(MAX_FIXUPS):
            got = tokenizer.encode(text)
            if len(got) == n:
                return Prompt(text, n)
            ids = got[:n] if len(got) > n else got + rng.choice(self.pool, n - len(got)).tolist()
            text = tokenizer.decode(ids)
        measured = len(tokenizer.encode(text))
        log.warning("prompt_len_inexact", request_index=index, prompt_len=n, measured=measured)
        return Prompt(text, measured)
