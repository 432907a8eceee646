"""Prompt log-probabilities (`SamplingParams.prompt_logprobs`) against transformers on the same
random weights (float32): from the prefill that runs anyway, chunk by chunk, with the prompt's KV
on the device or on the host, and unchanged by a recompute after preemption."""

from __future__ import annotations

import pytest
import torch

from neo_async.llm import LLM
from neo_async.sampling_params import SamplingParams
from tests.model_factory import VOCAB_SIZE, write_random_checkpoint

ATOL = 1e-4
NUM_TOP = 3


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("gqa")
    hf = write_random_checkpoint(path, "llama_gqa", seed=41)
    return path, hf


@pytest.fixture(scope="module")
def prompts() -> list[list[int]]:
    gen = torch.Generator().manual_seed(4242)
    return [torch.randint(3, VOCAB_SIZE, (n,), generator=gen).tolist() for n in (150, 37, 1, 90)]


def _reference(hf, prompt: list[int]) -> torch.Tensor:
    """[len(prompt) - 1, vocab] float64 log-probabilities of positions 1.. given the tokens before."""
    with torch.no_grad():
        logits = hf(torch.tensor([prompt])).logits[0, :-1].double()
    return torch.log_softmax(logits, dim=-1)


def _llm(path, **overrides) -> LLM:
    base = dict(dtype="float32", block_size=16, max_num_batched_tokens=48, max_num_seqs=8, cost_tables="none")
    return LLM(str(path), **{**base, **overrides})


def _check(outputs, prompts, hf) -> None:
    for out, prompt in zip(outputs, prompts, strict=True):
        scored = out.prompt_logprobs
        assert scored is not None and len(scored) == len(prompt) and scored[0] is None
        if len(prompt) == 1:
            continue
        ref = _reference(hf, prompt)
        ours = torch.tensor([item.logprob for item in scored[1:]], dtype=torch.float64)
        expected = ref.gather(1, torch.tensor(prompt[1:]).view(-1, 1))[:, 0]
        assert [item.token_id for item in scored[1:]] == prompt[1:]
        torch.testing.assert_close(ours, expected, atol=ATOL, rtol=0)
        top_ref = torch.topk(ref, NUM_TOP, dim=-1)
        for pos, item in enumerate(scored[1:]):
            assert len(item.top) == NUM_TOP
            torch.testing.assert_close(
                torch.tensor([lp for _, _, lp in item.top], dtype=torch.float64), top_ref.values[pos], atol=ATOL, rtol=0
            )
            near = (top_ref.values[pos, 0] - top_ref.values[pos, 1]) < 1e-5  # a tie may swap the order
            assert near or item.top[0][0] == int(top_ref.indices[pos, 0])


@pytest.mark.parametrize(
    "placement",
    [
        pytest.param(dict(offload="off", device_kv_tokens=4096), id="device"),
        pytest.param(dict(offload="full", device_kv_tokens=32, host_kv_tokens=4096), id="host"),
        pytest.param(dict(offload="neo", device_kv_tokens=160, host_kv_tokens=4096), id="both"),
        pytest.param(dict(offload="neo", device_kv_tokens=160, host_kv_tokens=4096, pipeline="on"), id="pipelined"),
    ],
)
def test_prompt_logprobs_match_transformers(checkpoint, prompts, placement):
    path, hf = checkpoint
    llm = _llm(path, **placement)
    params = SamplingParams(temperature=0.0, max_tokens=4, ignore_eos=True, prompt_logprobs=NUM_TOP)
    outputs = llm.generate(prompts, params)
    _check(outputs, prompts, hf)
    engine = llm.engine
    if placement["offload"] != "off":
        assert engine.recorder.num_host_prefill_tokens_total > 0  # a prompt was placed on the host
    if placement["offload"] == "neo":
        assert engine.device_pool.num_blocks * 16 < sum(len(p) for p in prompts)  # some on each side
    if placement.get("pipeline") == "on":
        assert engine.recorder.num_pipelined_iterations_total > 0
    engine.check()
    assert engine.device_pool.num_used == 0 and engine.host_pool.num_used == 0


def test_prompt_logprobs_survive_recompute(checkpoint, prompts):
    path, hf = checkpoint
    llm = _llm(path, offload="off", device_kv_tokens=192)  # 12 blocks for four growing requests
    params = SamplingParams(temperature=0.0, max_tokens=40, ignore_eos=True, prompt_logprobs=NUM_TOP)
    outputs = llm.generate(prompts[1:], params)
    assert llm.engine.scheduler.num_preemptions_total > 0
    _check(outputs, prompts[1:], hf)


def test_no_prompt_logprobs_unless_asked(checkpoint, prompts):
    path, _ = checkpoint
    out = _llm(path, offload="off", device_kv_tokens=4096).generate(prompts[:2], SamplingParams(max_tokens=2))
    assert all(o.prompt_logprobs is None for o in out)


@pytest.mark.parametrize("value", [-1, 21, 1.5])
def test_prompt_logprobs_out_of_range_is_a_value_error(value):
    with pytest.raises(ValueError, match="prompt_logprobs"):
        SamplingParams(prompt_logprobs=value).validate()
