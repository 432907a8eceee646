"""skip_tokenizer_init: a Hugging Face directory without tokenizer.json, served as token ids."""

from __future__ import annotations

import argparse

import pytest
import torch

from neo_async import LLM, SamplingParams
from neo_async.config import add_config_flags, config_from_args
from tests.model_factory import VOCAB_SIZE, write_random_checkpoint

ENGINE_ARGS = dict(dtype="float32", device_kv_tokens=1024, host_kv_tokens=0, offload="off", device_threads=1)
GREEDY = SamplingParams(temperature=0.0, max_tokens=12)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt")
    write_random_checkpoint(path, "llama_gqa", seed=21)
    return path


@pytest.fixture(scope="module")
def prompts():
    gen = torch.Generator().manual_seed(5)
    return [torch.randint(3, VOCAB_SIZE, (n,), generator=gen).tolist() for n in (7, 19, 3)]


@pytest.fixture(scope="module")
def with_tokenizer(checkpoint, prompts):
    """Outputs of the checkpoint loaded with its tokenizer, taken before tokenizer.json is removed."""
    llm = LLM(str(checkpoint), **ENGINE_ARGS)
    outs = llm.generate(prompts, GREEDY)
    return llm, outs


@pytest.fixture(scope="module")
def without_tokenizer(checkpoint, with_tokenizer):
    (checkpoint / "tokenizer.json").unlink()
    return LLM(str(checkpoint), skip_tokenizer_init=True, **ENGINE_ARGS)


def test_missing_tokenizer_json_names_the_file_and_the_flag(checkpoint, without_tokenizer):
    with pytest.raises(ValueError) as info:
        LLM(str(checkpoint), **ENGINE_ARGS)
    message = str(info.value)
    assert str(checkpoint / "tokenizer.json") in message
    assert "skip_tokenizer_init" in message and "--skip-tokenizer-init" in message


def test_token_ids_match_the_run_with_a_tokenizer(with_tokenizer, without_tokenizer, prompts):
    _, expected = with_tokenizer
    assert without_tokenizer.tokenizer is None
    outs = without_tokenizer.generate(prompts, GREEDY)
    assert [o.token_ids for o in outs] == [o.token_ids for o in expected]
    assert all(o.token_ids for o in outs)
    assert [o.prompt_token_ids for o in outs] == prompts
    assert [o.finish_reason for o in outs] == [o.finish_reason for o in expected]
    assert all(o.text == "" for o in outs)
    assert any(o.text for o in expected), "the run with a tokenizer has text, the run without has none"
    without_tokenizer.engine.check()


def test_stop_token_ids_and_logprobs_work_without_a_tokenizer(with_tokenizer, without_tokenizer, prompts):
    _, expected = with_tokenizer
    stop_at = expected[0].token_ids[4]
    first = expected[0].token_ids.index(stop_at)
    params = SamplingParams(temperature=0.0, max_tokens=12, stop_token_ids=[stop_at], logprobs=2)
    [out] = without_tokenizer.generate([prompts[0]], params)
    assert out.token_ids == expected[0].token_ids[: first + 1]
    assert out.stop_reason == stop_at and out.finish_reason.value == "stop"
    assert [lp.token for lp in out.logprobs] == [f"token_id:{t}" for t in out.token_ids]
    assert all(text == f"token_id:{t}" for lp in out.logprobs for t, text, _ in lp.top)


def test_text_prompts_chat_and_stop_strings_are_refused(without_tokenizer, prompts):
    with pytest.raises(ValueError, match="prompt must be token ids.*skip_tokenizer_init"):
        without_tokenizer.generate("Hello", GREEDY)
    with pytest.raises(ValueError, match="chat needs.*skip_tokenizer_init"):
        without_tokenizer.chat([{"role": "user", "content": "Hi"}], GREEDY)
    with pytest.raises(ValueError, match="stop strings need a tokenizer.*stop_token_ids"):
        without_tokenizer.generate([prompts[0]], SamplingParams(max_tokens=4, stop=["x"]))
    assert not without_tokenizer.engine.has_unfinished


def test_cli_flag_is_generated_from_the_field():
    parser = argparse.ArgumentParser()
    add_config_flags(parser)
    assert config_from_args(parser.parse_args(["--skip-tokenizer-init"])).model.skip_tokenizer_init is True
    assert config_from_args(parser.parse_args([])).model.skip_tokenizer_init is False
