"""OpenAI wire format: request and response structs (msgspec).

Requests: unknown fields are ignored; a wrong type is a 400 naming the field (`param`).
`None` everywhere means "not given": defaults are applied by the routes, not here, so one
struct serves both endpoints' defaults. Responses are encoded with every field present
(nulls included), as OpenAI does, except where a struct says `omit_defaults`.
"""

from __future__ import annotations

import re
from typing import Any, TypeVar

import msgspec

from neo_async.server.errors import APIError, invalid_type, missing_required

# ----------------------------------------------------------------------------- requests


class StreamOptions(msgspec.Struct):
    include_usage: bool | None = None


class GenerationRequest(msgspec.Struct, kw_only=True):
    """Fields shared by /v1/completions and /v1/chat/completions (vLLM's extras included)."""

    model: str | None = None
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    min_p: float | None = None
    seed: int | None = None
    stop: str | list[str] | None = None
    stop_token_ids: list[int] | None = None
    n: int | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    repetition_penalty: float | None = None
    ignore_eos: bool | None = None
    min_tokens: int | None = None
    include_stop_str_in_output: bool | None = None
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    user: str | None = None
    safety_identifier: str | None = None
    prompt_cache_key: str | None = None
    # token id (a decimal string, as JSON keys are) -> bias in [-100, 100]
    logit_bias: dict[str, float] | None = None
    # Refused unless absent or a no-op value (unsupported.py): typed loosely so that the refusal,
    # not a type error, names them.
    prompt_logprobs: Any = msgspec.UNSET
    guided_json: Any = msgspec.UNSET
    guided_regex: Any = msgspec.UNSET
    guided_choice: Any = msgspec.UNSET
    guided_grammar: Any = msgspec.UNSET
    structured_outputs: Any = msgspec.UNSET
    use_beam_search: Any = msgspec.UNSET
    allowed_token_ids: Any = msgspec.UNSET
    bad_words: Any = msgspec.UNSET
    truncate_prompt_tokens: Any = msgspec.UNSET


class CompletionRequest(GenerationRequest, kw_only=True):
    # A string, a list of strings, a list of token ids, or a list of lists of token ids.
    # msgspec allows one array type per union, so the list's shape is checked by the route.
    prompt: str | list[str | int | list[int]]
    logprobs: int | None = None  # top alternatives per token
    echo: bool | None = None  # the prompt (and, with logprobs, its tokens' logprobs) before the output
    best_of: int | None = None  # only best_of == n (or absent)
    suffix: Any = msgspec.UNSET


class ContentPart(msgspec.Struct):
    type: str
    text: str | None = None


class ChatMessage(msgspec.Struct):
    role: str
    # UNSET (absent) is not None (null): the route tells the two apart in its 400s.
    content: str | list[ContentPart] | None | msgspec.UnsetType = msgspec.UNSET
    name: str | None = None
    # An assistant message carrying either may omit content; only their presence is used.
    tool_calls: list[dict[str, Any]] | None = None
    function_call: dict[str, Any] | None = None

    @property
    def has_tool_calls(self) -> bool:
        return bool(self.tool_calls) or self.function_call is not None


class ChatCompletionRequest(GenerationRequest, kw_only=True):
    messages: list[ChatMessage]
    max_completion_tokens: int | None = None  # wins over max_tokens
    logprobs: bool | None = None
    top_logprobs: int | None = None
    add_generation_prompt: bool | None = None
    parallel_tool_calls: bool | None = None  # no tools are ever called, so either value holds
    echo: Any = msgspec.UNSET
    tools: Any = msgspec.UNSET
    tool_choice: Any = msgspec.UNSET
    functions: Any = msgspec.UNSET
    function_call: Any = msgspec.UNSET
    response_format: Any = msgspec.UNSET
    audio: Any = msgspec.UNSET
    modalities: Any = msgspec.UNSET
    prediction: Any = msgspec.UNSET
    reasoning_effort: Any = msgspec.UNSET
    verbosity: Any = msgspec.UNSET
    web_search_options: Any = msgspec.UNSET
    store: Any = msgspec.UNSET
    metadata: Any = msgspec.UNSET
    service_tier: Any = msgspec.UNSET


# ---------------------------------------------------------------------------- responses


class Usage(msgspec.Struct):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class CompletionLogprobs(msgspec.Struct):
    tokens: list[str]
    token_logprobs: list[float | None]  # None: the echoed prompt's first token
    top_logprobs: list[dict[str, float] | None]
    text_offset: list[int]


class CompletionChoice(msgspec.Struct):
    index: int
    text: str
    logprobs: CompletionLogprobs | None
    finish_reason: str | None
    stop_reason: int | str | None = None
    # The output's token ids (this chunk's, when streaming); sent only by a server without a
    # tokenizer (skip_tokenizer_init), absent otherwise.
    token_ids: list[int] | msgspec.UnsetType = msgspec.UNSET


class Completion(msgspec.Struct):
    id: str
    object: str  # "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None


class CompletionChunk(msgspec.Struct, omit_defaults=True):
    id: str
    object: str  # "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None  # only on the final usage chunk


class ChatTopLogprob(msgspec.Struct):
    token: str
    logprob: float
    bytes: list[int] | None


class ChatTokenLogprob(msgspec.Struct):
    token: str
    logprob: float
    bytes: list[int] | None
    top_logprobs: list[ChatTopLogprob]


class ChatLogprobs(msgspec.Struct):
    content: list[ChatTokenLogprob] | None


class ChatResponseMessage(msgspec.Struct):
    role: str
    content: str | None


class ChatChoice(msgspec.Struct):
    index: int
    message: ChatResponseMessage
    logprobs: ChatLogprobs | None
    finish_reason: str | None
    stop_reason: int | str | None = None


class ChatCompletion(msgspec.Struct):
    id: str
    object: str  # "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage | None


class ChatDelta(msgspec.Struct, omit_defaults=True):
    role: str | None = None
    content: str | None = None


class ChatChunkChoice(msgspec.Struct):
    index: int
    delta: ChatDelta
    logprobs: ChatLogprobs | None
    finish_reason: str | None
    stop_reason: int | str | None = None


class ChatCompletionChunk(msgspec.Struct, omit_defaults=True):
    id: str
    object: str  # "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChatChunkChoice]
    usage: Usage | None = None  # only on the final usage chunk


class ModelCard(msgspec.Struct):
    id: str
    object: str  # "model"
    created: int
    owned_by: str
    root: str
    max_model_len: int


class ModelList(msgspec.Struct):
    object: str  # "list"
    data: list[ModelCard]


# ----------------------------------------------------------------------------- decoding

T = TypeVar("T")

_AT_PATH = re.compile(r" - at `\$\.?([^`]*)`$")
_MISSING = re.compile(r"^Object missing required field `([^`]*)`")


def make_decoder(cls: type[T]) -> msgspec.json.Decoder[T]:
    return msgspec.json.Decoder(cls)


def decode_request(body: bytes, decoder: msgspec.json.Decoder[T]) -> T:
    """Decode a request body, or raise a 400 APIError whose `param` names the offending field."""
    try:
        return decoder.decode(body)
    except msgspec.ValidationError as exc:
        message = str(exc)
        at = _AT_PATH.search(message)
        path = at.group(1) if at else ""
        missing = _MISSING.match(message)
        if missing:
            param = f"{path}.{missing.group(1)}" if path else missing.group(1)
            raise missing_required(param) from None
        if not path:  # the body itself (an array, a string, ...)
            raise APIError(400, f"the request body must be a JSON object: {message}", code="invalid_type") from None
        raise invalid_type(f"invalid type for {path}: {message}", path) from None
    except msgspec.DecodeError as exc:
        raise APIError(400, f"the request body is not valid JSON: {exc}", code="invalid_json") from None
