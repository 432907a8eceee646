"""From a decoded OpenAI request to engine inputs: checks shared by both generation routes.

Order of checks (each raises a 400/404 APIError naming its `param`): model, n, prompt
(tokenised by the route), max_tokens, sampling ranges (SamplingParams.validate), context.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

from neo_async.sampling_params import SamplingParams
from neo_async.server.errors import (
    APIError,
    context_exceeded,
    from_engine_error,
    invalid_value,
)
from neo_async.server.openai_schema import GenerationRequest

if TYPE_CHECKING:
    from neo_async.async_engine import AsyncEngine

# Request fields a ValueError may name (SamplingParams messages start with the field name).
PARAM_NAMES = frozenset(f.name for f in dataclasses.fields(SamplingParams)) | {"n", "prompt", "messages", "top_logprobs"}


def check_model(req: GenerationRequest, engine: AsyncEngine) -> None:
    if req.model is not None and req.model != engine.model_name:
        raise APIError(
            404,
            f"the model {req.model!r} does not exist; this server serves {engine.model_name!r}",
            param="model",
            code="model_not_found",
        )


def check_n(req: GenerationRequest, max_n: int) -> int:
    n = 1 if req.n is None else req.n
    if not 1 <= n <= max_n:
        raise invalid_value(f"n must be in [1, {max_n}], got {n}", "n")
    return n


def prompt_vocab_size(engine: AsyncEngine) -> int:
    """Token ids a prompt may hold: the tokenizer's vocabulary, or the model's without one."""
    if engine.tokenizer is not None:
        return engine.tokenizer.vocab_size
    return engine.engine.spec.vocab_size


def check_token_ids(ids: list[int], vocab_size: int, param: str) -> None:
    if not ids:
        raise invalid_value("the prompt is empty", param)
    bad = next((t for t in ids if not 0 <= t < vocab_size), None)
    if bad is not None:
        raise invalid_value(f"token id {bad} is out of the vocabulary [0, {vocab_size})", param)


def resolve_max_tokens(
    requested: int | None, default: int | None, num_prompt_tokens: int, max_model_len: int, prompt_param: str, max_tokens_param: str
) -> int:
    """The max_tokens to run: the requested value, else `default` capped by the context left
    (None = all of it). Raises if the prompt leaves no room or the request does not fit."""
    room = max_model_len - num_prompt_tokens
    if room < 1:
        raise context_exceeded(
            f"this model's maximum context length is {max_model_len} tokens, but the prompt has "
            f"{num_prompt_tokens} tokens (and at least one must be generated)",
            prompt_param,
        )
    if requested is None:
        return room if default is None else min(default, room)
    if requested < 1:
        raise invalid_value(f"{max_tokens_param} must be an integer >= 1, got {requested}", max_tokens_param)
    if requested > room:
        raise context_exceeded(
            f"this model's maximum context length is {max_model_len} tokens, but {num_prompt_tokens + requested} "
            f"were requested ({num_prompt_tokens} in the prompt, {requested} to generate)",
            max_tokens_param,
        )
    return requested


def logit_bias(req: GenerationRequest, vocab_size: int) -> tuple[tuple[int, float], ...]:
    """The request's logit_bias as (token id, bias) pairs; a key that is not a token id is a 400."""
    pairs = []
    for key, bias in (req.logit_bias or {}).items():
        token = int(key) if key.strip().isdecimal() else -1
        if not 0 <= token < vocab_size:
            raise invalid_value(f"logit_bias keys must be token ids in [0, {vocab_size}), got {key!r}", "logit_bias")
        pairs.append((token, float(bias)))
    return tuple(pairs)


def sampling_params(
    req: GenerationRequest, max_tokens: int, logprobs: int | None, logprobs_param: str, vocab_size: int, prompt_logprobs: int | None = None
) -> SamplingParams:
    """SamplingParams from the request's fields (OpenAI defaults for what is not given), validated."""
    given = {
        "temperature": req.temperature,
        "top_p": req.top_p,
        "top_k": req.top_k,
        "min_p": req.min_p,
        "seed": req.seed,
        "presence_penalty": req.presence_penalty,
        "frequency_penalty": req.frequency_penalty,
        "repetition_penalty": req.repetition_penalty,
        "stop": [req.stop] if isinstance(req.stop, str) else req.stop,
        "stop_token_ids": req.stop_token_ids,
        "ignore_eos": req.ignore_eos,
        "include_stop_str_in_output": req.include_stop_str_in_output,
        "min_tokens": req.min_tokens,
        "logit_bias": logit_bias(req, vocab_size),
        "prompt_logprobs": prompt_logprobs,
    }
    kwargs = {k: v for k, v in given.items() if v is not None}
    try:
        params = SamplingParams(max_tokens=max_tokens, logprobs=logprobs, **kwargs)
        params.validate()
    except ValueError as exc:
        err = from_engine_error(exc, PARAM_NAMES)
        if err.param == "logprobs":
            err.param = logprobs_param
        raise err from None
    return params


def fan_out(prompts: list[list[int]], params: SamplingParams, n: int) -> list[tuple[list[int], SamplingParams]]:
    """One engine request per (prompt, sample): choice index = prompt index * n + sample.

    With a seed, sample j uses seed + j, so the n samples differ and every run repeats.
    """
    per_sample = [params if j == 0 or params.seed is None else dataclasses.replace(params, seed=params.seed + j) for j in range(n)]
    return [(ids, per_sample[j]) for ids in prompts for j in range(n)]
