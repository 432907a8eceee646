"""POST /v1/completions: text or token-id prompts, one choice per (prompt, sample).

A server started with skip_tokenizer_init takes token-id prompts only; each choice then
carries its output as `token_ids` (vLLM's field), and `text` is empty.
"""

from __future__ import annotations

import time
from typing import Any

import msgspec
from aiohttp import web

from neo_async.outputs import RequestDelta, TokenLogprob
from neo_async.server.errors import invalid_value
from neo_async.server.generation import Choice
from neo_async.server.openai_schema import (
    Completion,
    CompletionChoice,
    CompletionChunk,
    CompletionLogprobs,
    CompletionRequest,
    Usage,
    decode_request,
    make_decoder,
)
from neo_async.server.params import (
    check_model,
    check_n,
    check_token_ids,
    fan_out,
    prompt_vocab_size,
    resolve_max_tokens,
    sampling_params,
)
from neo_async.server.serving import Prepared, finish_reason_text, handle_generation
from neo_async.server.state import STATE, AppState

DEFAULT_MAX_TOKENS = 16  # OpenAI's default for this endpoint
OBJECT = "text_completion"

_DECODER = make_decoder(CompletionRequest)


def prompt_ids(prompt: str | list[Any], tokenizer: Any, vocab_size: int) -> list[list[int]]:
    """The prompts as token ids: a string, a list of strings, a list of ids, or a list of id lists."""
    if isinstance(prompt, str):
        items: list[Any] = [prompt]
    elif not prompt:
        raise invalid_value("prompt must not be an empty list", "prompt")
    elif all(isinstance(x, int) for x in prompt):
        items = [prompt]
    elif all(isinstance(x, str) for x in prompt) or all(isinstance(x, list) for x in prompt):
        items = prompt
    else:
        raise invalid_value(
            "prompt must be a string, a list of strings, a list of token ids or a list of lists of token ids", "prompt"
        )
    prompts = []
    for item in items:
        if isinstance(item, str) and tokenizer is None:
            raise invalid_value(
                "prompt must be token ids (a list of integers, or a list of such lists): "
                "this server runs with --skip-tokenizer-init and cannot tokenize text",
                "prompt",
            )
        ids = list(tokenizer.encode(item)) if isinstance(item, str) else item
        check_token_ids(ids, vocab_size, "prompt")
        prompts.append(ids)
    return prompts


def prepare(body: bytes, state: AppState, request_id: str) -> Prepared:
    req = decode_request(body, _DECODER)
    engine = state.engine
    assert engine is not None
    check_model(req, engine)
    n = check_n(req, state.config.server.max_n)
    prompts = prompt_ids(req.prompt, engine.tokenizer, prompt_vocab_size(engine))
    longest = max(len(ids) for ids in prompts)
    max_tokens = resolve_max_tokens(req.max_tokens, DEFAULT_MAX_TOKENS, longest, engine.max_model_len, "prompt", "max_tokens")
    params = sampling_params(req, max_tokens, req.logprobs, "logprobs")
    return Prepared(
        specs=fan_out(prompts, params, n),
        num_prompt_tokens=sum(len(ids) for ids in prompts),
        stream=bool(req.stream),
        include_usage=bool(req.stream_options and req.stream_options.include_usage),
        formatter=CompletionFormatter(request_id, int(time.time()), engine.model_name, req.logprobs, engine.tokenizer is None),
        user=req.user,
    )


class CompletionFormatter:
    def __init__(self, request_id: str, created: int, model: str, logprobs: int | None, with_token_ids: bool = False) -> None:
        self.request_id = request_id
        self.created = created
        self.model = model
        self.logprobs = logprobs
        self.with_token_ids = with_token_ids  # choices carry `token_ids` (no tokenizer)

    def _logprobs(self, choice: Choice, items: list[TokenLogprob]) -> CompletionLogprobs:
        """OpenAI's legacy logprobs for `items`, the next tokens of `choice` (advances its offset)."""
        offsets = []
        for item in items:
            offsets.append(choice.num_logprob_chars)
            choice.num_logprob_chars += len(item.token)
        return CompletionLogprobs(
            tokens=[i.token for i in items],
            token_logprobs=[i.logprob for i in items],
            top_logprobs=[{text: lp for _, text, lp in i.top} for i in items],
            text_offset=offsets,
        )

    def _chunk(self, choices: list[CompletionChoice], usage: Usage | None = None) -> bytes:
        return msgspec.json.encode(CompletionChunk(self.request_id, OBJECT, self.created, self.model, choices, usage))

    def stream_start(self, choices: list[Choice]) -> list[bytes]:
        return []

    def chunk(self, choice: Choice, delta: RequestDelta) -> bytes | None:
        reason = finish_reason_text(delta.finish_reason)
        logprobs = self._logprobs(choice, delta.logprobs) if self.logprobs is not None and delta.logprobs else None
        token_ids = delta.token_ids if self.with_token_ids else msgspec.UNSET
        if not delta.text and not token_ids and reason is None and logprobs is None:
            return None
        stop_reason = delta.stop_reason if reason else None
        return self._chunk([CompletionChoice(choice.index, delta.text, logprobs, reason, stop_reason, token_ids)])

    def usage_chunk(self, usage: Usage) -> bytes:
        return self._chunk([], usage)

    def response(self, choices: list[Choice], usage: Usage) -> bytes:
        out = []
        for c in choices:
            c.num_logprob_chars = 0
            logprobs = self._logprobs(c, c.logprobs) if self.logprobs is not None else None
            token_ids = c.token_ids if self.with_token_ids else msgspec.UNSET
            out.append(CompletionChoice(c.index, c.text, logprobs, finish_reason_text(c.finish_reason), c.stop_reason, token_ids))
        return msgspec.json.encode(Completion(self.request_id, OBJECT, self.created, self.model, out, usage))


async def create_completion(request: web.Request) -> web.StreamResponse:
    return await handle_generation(request, request.app[STATE], prepare, "completions", "cmpl")
