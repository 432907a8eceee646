"""OpenAI parameters this server does not implement: refused with a 400 naming them, never ignored.

Each entry maps a request field to the values that mean "not asked for" (OpenAI's defaults and
their no-op spellings); any other value is refused. Fields that never change the output
(`user`, `safety_identifier`, `prompt_cache_key`: identifiers and routing hints) are accepted.
Unknown vendor fields are ignored, as vLLM does, except the vLLM extras listed here, which a
client would expect to take effect.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgspec

from neo_async.server.errors import invalid_value


def _absent(value: Any) -> bool:
    return value is None or value is msgspec.UNSET


def _empty(value: Any) -> bool:
    return _absent(value) or value == [] or value == {} or value == ""


def _one_of(*allowed: Any) -> Callable[[Any], bool]:
    return lambda value: _absent(value) or value in allowed


# Both endpoints.
_COMMON: dict[str, tuple[Callable[[Any], bool], str]] = {
    "prompt_logprobs": (_absent, "use echo with logprobs on /v1/completions for prompt log-probabilities"),
    "guided_json": (_absent, "guided decoding is not supported"),
    "guided_regex": (_absent, "guided decoding is not supported"),
    "guided_choice": (_absent, "guided decoding is not supported"),
    "guided_grammar": (_absent, "guided decoding is not supported"),
    "structured_outputs": (_absent, "structured outputs are not supported"),
    "use_beam_search": (_one_of(False), "beam search is not supported"),
    "allowed_token_ids": (_absent, "allowed_token_ids is not supported; use logit_bias"),
    "bad_words": (_empty, "bad_words is not supported; use logit_bias"),
    "truncate_prompt_tokens": (_absent, "prompt truncation is not supported"),
}

COMPLETIONS = {
    **_COMMON,
    "suffix": (_empty, "suffix (insertion) is not supported"),
}

CHAT = {
    **_COMMON,
    "echo": (_one_of(False), "echo is a /v1/completions parameter; chat completions do not echo"),
    "tools": (_empty, "tool calling is not supported"),
    "tool_choice": (_one_of("none"), "tool calling is not supported"),
    "functions": (_empty, "function calling is not supported"),
    "function_call": (_one_of("none"), "function calling is not supported"),
    "response_format": (lambda v: _absent(v) or v == {"type": "text"}, "only response_format {\"type\": \"text\"} is supported"),
    "audio": (_absent, "audio output is not supported"),
    "modalities": (lambda v: _absent(v) or v == ["text"], "only the text modality is supported"),
    "prediction": (_absent, "predicted outputs are not supported"),
    "reasoning_effort": (_absent, "this model does not reason; reasoning_effort is not supported"),
    "verbosity": (_absent, "verbosity is not supported"),
    "web_search_options": (_absent, "web search is not supported"),
    "store": (_one_of(False), "completions are not stored"),
    "metadata": (_empty, "metadata applies to stored completions, which are not supported"),
    "service_tier": (_one_of("auto", "default"), "only service_tier auto or default is supported"),
}


def refuse_unsupported(request: msgspec.Struct, table: dict[str, tuple[Callable[[Any], bool], str]]) -> None:
    """Raise a 400 naming the first field of `table` the request sets to a value we do not honour."""
    for name, (is_acceptable, why) in table.items():
        value = getattr(request, name, msgspec.UNSET)
        if not is_acceptable(value):
            raise invalid_value(f"{name}: {why}", name)
