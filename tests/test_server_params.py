"""From request fields to engine inputs: max_tokens, sampling ranges, fan-out (no model needed)."""

from __future__ import annotations

import pytest

from neo_async.server.errors import APIError
from neo_async.server.openai_schema import ChatCompletionRequest, CompletionRequest
from neo_async.server.params import (
    check_n,
    check_token_ids,
    fan_out,
    resolve_max_tokens,
    sampling_params,
)


def test_max_tokens_default_is_capped_by_the_context_left():
    assert resolve_max_tokens(None, 16, 10, 100, "prompt", "max_tokens") == 16
    assert resolve_max_tokens(None, 16, 95, 100, "prompt", "max_tokens") == 5
    assert resolve_max_tokens(None, None, 30, 100, "messages", "max_tokens") == 70
    assert resolve_max_tokens(90, 16, 10, 100, "prompt", "max_tokens") == 90


@pytest.mark.parametrize(
    ("requested", "num_prompt", "param", "code"),
    [
        (0, 10, "max_tokens", "invalid_value"),
        (91, 10, "max_tokens", "context_length_exceeded"),
        (None, 100, "prompt", "context_length_exceeded"),
        (1, 150, "prompt", "context_length_exceeded"),
    ],
)
def test_max_tokens_errors(requested, num_prompt, param, code):
    with pytest.raises(APIError) as info:
        resolve_max_tokens(requested, 16, num_prompt, 100, "prompt", "max_tokens")
    assert (info.value.status, info.value.param, info.value.code) == (400, param, code)


def test_sampling_params_take_openai_defaults_and_given_values():
    req = CompletionRequest(prompt="x", temperature=0.5, stop="END", seed=3, ignore_eos=True)
    p = sampling_params(req, 7, 2, "logprobs", 100)
    assert (p.max_tokens, p.temperature, p.top_p, p.stop, p.seed, p.ignore_eos, p.logprobs) == (7, 0.5, 1.0, ("END",), 3, True, 2)
    assert sampling_params(CompletionRequest(prompt="x"), 1, None, "logprobs", 100).temperature == 1.0


@pytest.mark.parametrize(
    ("fields", "logprobs", "param"),
    [
        ({"top_p": 1.5}, None, "top_p"),
        ({"repetition_penalty": 0.0}, None, "repetition_penalty"),
        ({"min_p": 2.0}, None, "min_p"),
        ({"stop": ["", "x"]}, None, "stop"),
        ({}, 21, "top_logprobs"),  # chat names SamplingParams.logprobs top_logprobs
    ],
)
def test_out_of_range_values_name_the_request_field(fields, logprobs, param):
    with pytest.raises(APIError) as info:
        sampling_params(ChatCompletionRequest(messages=[], **fields), 4, logprobs, "top_logprobs", 100)
    assert (info.value.status, info.value.param) == (400, param)


def test_fan_out_is_prompt_major_with_seed_per_sample():
    p = sampling_params(CompletionRequest(prompt="x", seed=100), 4, None, "logprobs", 100)
    specs = fan_out([[1], [2, 3]], p, 3)
    assert [ids for ids, _ in specs] == [[1], [1], [1], [2, 3], [2, 3], [2, 3]]
    assert [sp.seed for _, sp in specs] == [100, 101, 102, 100, 101, 102]
    unseeded = fan_out([[1]], sampling_params(CompletionRequest(prompt="x"), 4, None, "logprobs", 100), 2)
    assert [sp.seed for _, sp in unseeded] == [None, None]


def test_n_and_token_id_checks():
    assert check_n(CompletionRequest(prompt="x"), 4) == 1
    for n in (0, 5):
        with pytest.raises(APIError):
            check_n(CompletionRequest(prompt="x", n=n), 4)
    check_token_ids([0, 9], 10, "prompt")
    for ids in ([], [10], [-1]):
        with pytest.raises(APIError) as info:
            check_token_ids(ids, 10, "prompt")
        assert info.value.param == "prompt"
