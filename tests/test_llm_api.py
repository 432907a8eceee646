"""The embedding API: LLM.generate / LLM.chat on the embedded model."""

from __future__ import annotations

import pytest

from neo_async import LLM, SamplingParams


@pytest.fixture(scope="module")
def llm():
    return LLM(device_kv_tokens=2048, max_num_batched_tokens=64)


def test_generate_keeps_order_and_accepts_token_ids(llm):
    prompts = ["The sky is", "One plus one equals", "Paris is the capital of"]
    params = SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True)
    outs = llm.generate(prompts, params)
    assert [len(o.token_ids) for o in outs] == [8, 8, 8]
    by_ids = llm.generate([llm.tokenizer.encode(p) for p in prompts], params)
    assert [o.text for o in by_ids] == [o.text for o in outs]
    assert outs[0].prompt_token_ids == llm.tokenizer.encode(prompts[0])
    assert outs[0].text == llm.tokenizer.decode(outs[0].token_ids)
    llm.engine.check()


def test_logprobs_and_stop_strings(llm):
    out = llm.generate("Count: 1, 2, 3,", SamplingParams(temperature=0.0, max_tokens=20, logprobs=2, stop=[" 6"]))[0]
    assert out.stop_reason == " 6" and " 6" not in out.text and out.finish_reason.value == "stop"
    assert len(out.logprobs) == len(out.token_ids)
    assert all(lp.logprob <= 0 and len(lp.top) == 2 and lp.top[0][2] >= lp.logprob for lp in out.logprobs)


def test_bad_arguments_raise_value_error(llm):
    with pytest.raises(ValueError):
        llm.generate(["a", "b"], [SamplingParams()])
    with pytest.raises(ValueError):
        llm.generate("a", SamplingParams(top_p=2.0))
    with pytest.raises(ValueError):
        LLM(dtype="float64")
    with pytest.raises(ValueError, match="unknown config field"):
        LLM(not_a_field=3)
