"""Prompts of exact token lengths: text through the tokenizer, token ids, Mooncake prefixes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from loadgen.prompts import PromptBuilder, word_pool
from loadgen.tokenizer import HFTokenizer, load_tokenizer
from loadgen.workload import RequestSpec

FIXTURES = Path(__file__).parent / "fixtures" / "loadgen"


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(FIXTURES / "tokenizer.json")


def test_fixture_tokenizer_loads_from_file_and_dir(tokenizer):
    assert isinstance(tokenizer, HFTokenizer)
    assert tokenizer.vocab_size == 536
    assert tokenizer.special_ids == {0, 1, 2}
    assert load_tokenizer(FIXTURES).vocab_size == 536  # a directory holding tokenizer.json
    with pytest.raises(FileNotFoundError):
        load_tokenizer(FIXTURES / "missing")


def test_word_pool_is_words_that_round_trip(tokenizer):
    pool = word_pool(tokenizer)
    assert len(pool) >= 32
    for token_id in pool.tolist():
        text = tokenizer.decode([token_id])
        assert text.startswith(" ") and text[1:].isalpha() and text[1:].islower()
        assert tokenizer.encode(text) == [token_id]


@pytest.mark.parametrize("n", [1, 2, 7, 100, 513])
def test_text_prompts_have_exact_lengths(tokenizer, n):
    builder = PromptBuilder(tokenizer, "text", seed=1)
    prompt = builder.build(RequestSpec(n, 4), index=3)
    assert isinstance(prompt.prompt, str)
    assert prompt.prompt_len == n
    assert len(tokenizer.encode(prompt.prompt)) == n


def test_prompts_are_deterministic_and_differ_per_request(tokenizer):
    a = PromptBuilder(tokenizer, "text", seed=5)
    b = PromptBuilder(tokenizer, "text", seed=5)
    spec = RequestSpec(50, 4)
    assert a.build(spec, 0) == b.build(spec, 0)
    assert a.build(spec, 0).prompt != a.build(spec, 1).prompt
    assert a.build(spec, 0).prompt != PromptBuilder(tokenizer, "text", seed=6).build(spec, 0).prompt


def test_id_prompts(tokenizer):
    builder = PromptBuilder(tokenizer, "ids", seed=0)
    prompt = builder.build(RequestSpec(33, 4), 0)
    assert isinstance(prompt.prompt, list) and len(prompt.prompt) == 33 and prompt.prompt_len == 33
    assert set(prompt.prompt) <= set(word_pool(tokenizer).tolist())


def test_id_prompts_without_tokenizer_use_vocab_range():
    builder = PromptBuilder(None, "ids", seed=0, vocab_size=1000)
    ids = builder.build(RequestSpec(500, 1), 0).prompt
    assert len(ids) == 500 and min(ids) >= 256 and max(ids) < 1000
    with pytest.raises(ValueError, match="tokenizer"):
        PromptBuilder(None, "text")
    with pytest.raises(ValueError, match="vocab size"):
        PromptBuilder(None, "ids")


def test_mooncake_blocks_share_prefixes(tokenizer):
    builder = PromptBuilder(tokenizer, "ids", seed=0, block_size=16)
    a = builder.build(RequestSpec(40, 1, hash_ids=(7, 8, 9)), 0).prompt
    b = builder.build(RequestSpec(20, 1, hash_ids=(7, 3)), 1).prompt
    c = builder.build(RequestSpec(50, 1, hash_ids=(7,)), 2).prompt
    assert len(a) == 40 and len(b) == 20 and len(c) == 50
    assert a[:16] == b[:16] == c[:16]  # hash 7
    assert a[16:20] != b[16:20]  # hash 8 vs hash 3
    assert c[16:] != a[16:50]  # past its blocks, request 2 is its own
    text = PromptBuilder(tokenizer, "text", seed=0, block_size=16)
    ta = text.build(RequestSpec(40, 1, hash_ids=(7, 8, 9)), 0)
    tb = text.build(RequestSpec(20, 1, hash_ids=(7, 3)), 1)
    assert ta.prompt_len == 40 and tb.prompt_len == 20
    assert tokenizer.encode(ta.prompt)[:16] == tokenizer.encode(tb.prompt)[:16]


def test_prefix_repetition_prompts_share_their_group_prefix(tokenizer):
    builder = PromptBuilder(tokenizer, "ids", seed=0)
    a = builder.build(RequestSpec(30, 1, prefix_id=1, prefix_len=24), 0).prompt
    b = builder.build(RequestSpec(30, 1, prefix_id=1, prefix_len=24), 1).prompt
    c = builder.build(RequestSpec(30, 1, prefix_id=2, prefix_len=24), 2).prompt
    assert len(a) == len(b) == len(c) == 30
    assert a[:24] == b[:24] and a[24:] != b[24:]  # one prefix, own suffixes
    assert a[:24] != c[:24]
    text = PromptBuilder(tokenizer, "text", seed=0)
    ta = text.build(RequestSpec(30, 1, prefix_id=1, prefix_len=24), 0)
    tb = text.build(RequestSpec(30, 1, prefix_id=1, prefix_len=24), 1)
    assert ta.prompt_len == tb.prompt_len == 30
    assert tokenizer.encode(ta.prompt)[:24] == tokenizer.encode(tb.prompt)[:24]


def test_real_text_prompts(tokenizer):
    text = "what is the model cache"
    builder = PromptBuilder(tokenizer, "ids")
    prompt = builder.build(RequestSpec(5, 8, prompt_text=text), 0)
    assert prompt.prompt == tokenizer.encode(text) and prompt.prompt_len == 5
    assert PromptBuilder(tokenizer, "text").build(RequestSpec(5, 8, prompt_text=text), 0).prompt == text


class CharTokenizer:
    """One id per character of 'abc ' (a tokenizer with no word tokens: the fallback path)."""

    vocab_size = 4
    alphabet = "abc "

    def encode(self, text: str) -> list[int]:
        return [self.alphabet.index(ch) for ch in text]

    def decode(self, ids: list[int]) -> str:
        return "".join(self.alphabet[i] for i in ids)


class PairTokenizer(CharTokenizer):
    """Merges "ab" into one id 4, so decoding random ids does not round-trip."""

    vocab_size = 5

    def encode(self, text: str) -> list[int]:
        ids, i = [], 0
        while i < len(text):
            if text.startswith("ab", i):
                ids.append(4)
                i += 2
            else:
                ids.append(self.alphabet.index(text[i]))
                i += 1
        return ids

    def decode(self, ids: list[int]) -> str:
        return "".join("ab" if i == 4 else self.alphabet[i] for i in ids)


@pytest.mark.parametrize("tok", [CharTokenizer(), PairTokenizer()])
def test_fallback_reaches_exact_length(tok):
    builder = PromptBuilder(tok, "text", seed=2)
    assert not builder.is_additive
    for n in (1, 10, 64):
        prompt = builder.build(RequestSpec(n, 1), n)
        assert prompt.prompt_len == n == len(tok.encode(prompt.prompt))


def test_embedded_model_tokenizer():
    tokenizer = load_tokenizer(None)
    assert tokenizer.vocab_size == 49152
    builder = PromptBuilder(tokenizer, "text", seed=0)
    assert builder.is_additive and len(builder.pool) > 10000
    lengths = np.random.default_rng(0).integers(1, 2000, size=20).tolist()
    for i, n in enumerate(lengths):
        prompt = builder.build(RequestSpec(n, 1), i)
        assert len(tokenizer.encode(prompt.prompt)) == n == prompt.prompt_len
