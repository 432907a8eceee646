"""Detokenization and stop conditions on the embedded model's real tokenizer."""

from __future__ import annotations

import pytest

from neo_async.model.tokenizer import load_tokenizer
from neo_async.output_processor import OutputProcessor
from neo_async.outputs import FinishReason
from neo_async.sampling_params import SamplingParams
from neo_async.sched.request import Request


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer()


def feed(tokenizer, text: str, **params):
    """Feed `text`'s tokens one by one; return (deltas, request)."""
    proc = OutputProcessor(tokenizer, eos_token_ids=(2,))
    prompt = tokenizer.encode("Hi")
    p = SamplingParams(**{"max_tokens": 200, **params})
    req = Request("r", list(prompt), p, 0.0, len(prompt) + p.max_tokens)
    proc.add(req)
    deltas = []
    for token in tokenizer.encode(text) + [2]:
        req.token_ids.append(token)
        d = proc.on_token(req, None)
        if d is not None:
            deltas.append(d)
            if d.is_finished:
                break
    return deltas, req


def test_streamed_text_concatenates_to_the_decoded_text(tokenizer):
    text = "Héllo wörld — ünïcode ✓ 数字 123 and emoji 🙂 done."
    deltas, req = feed(tokenizer, text)
    assert "".join(d.text for d in deltas) == text
    assert deltas[-1].finish_reason is FinishReason.STOP and deltas[-1].stop_reason is None
    assert sum(len(d.token_ids) for d in deltas) == req.num_output_tokens


def test_stop_string_cuts_the_text_even_across_tokens(tokenizer):
    deltas, _ = feed(tokenizer, "The answer is forty-two. THE END and more", stop=["THE END", "zzz"])
    assert "".join(d.text for d in deltas) == "The answer is forty-two. "
    assert deltas[-1].finish_reason is FinishReason.STOP and deltas[-1].stop_reason == "THE END"
    deltas, _ = feed(tokenizer, "one two three", stop=["two"], include_stop_str_in_output=True)
    assert "".join(d.text for d in deltas) == "one two"


def test_no_stop_prefix_leaks_before_the_match(tokenizer):
    deltas, _ = feed(tokenizer, "abc STOPPER xyz", stop=["STOPPER"])
    assert not any("STOP" in d.text for d in deltas)


def test_max_tokens_and_stop_token_ids(tokenizer):
    deltas, req = feed(tokenizer, "a b c d e f g", max_tokens=3)
    assert deltas[-1].finish_reason is FinishReason.LENGTH and req.num_output_tokens == 3
    ids = tokenizer.encode(" c")
    deltas, _ = feed(tokenizer, "a b c d", stop_token_ids=tuple(ids))
    assert deltas[-1].stop_reason == ids[0] and "".join(d.text for d in deltas) == "a b"


def test_ignore_eos_keeps_going(tokenizer):
    deltas, req = feed(tokenizer, "x", ignore_eos=True, max_tokens=50)
    assert deltas[-1].finish_reason is None  # the fed eos did not stop it
