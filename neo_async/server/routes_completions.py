"""POST /v1/completions: text or token-id prompts, one choice per (prompt, sample).

A server started with skip_tokenizer_init takes token-id prompts only; each choice then
carries its output as `token_ids` (vLLM's field), and `text` is empty.

`echo`: each choice's text starts with its prompt (the string given, or the ids detokenized),
and with `logprobs` its logprobs start with every prompt token's (the first null, as OpenAI and
vLLM do), computed by the prefill (SamplingParams.prompt_logprobs). Streaming sends them in the
choice's first chunk.
"""

from __future__ import annotations

import time
from typing import Any

import msgspec
from aiohttp import web

from neo_async.model.tokenizer import token_text
from neo_async.outputs import FinishReason, RequestDelta, TokenLogprob
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
from neo_async.server.unsupported import COMPLETIONS, refuse_unsupported

DEFAULT_MAX_TOKENS = 16  # OpenAI's default for this endpoint
OBJECT = "text_completion"

_DECODER = make_decoder(CompletionRequest)


def prompt_ids(prompt: str | list[Any], tokenizer: Any, vocab_size: int) -> list[tuple[list[int], str]]:
    """The prompts as (token ids, text): a string, a list of strings, a list of ids, or a list of
    id lists (their text detokenized; empty without a tokenizer)."""
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
        if isinstance(item, str):
            text = item
        else:
            text = "" if tokenizer is None else tokenizer.decode(ids, skip_special_tokens=False)
        prompts.append((ids, text))
    return prompts


def prepare(body: bytes, state: AppState, request_id: str) -> Prepared:
    req = decode_request(body, _DECODER)
    engine = state.engine
    assert engine is not None
    check_model(req, engine)
    refuse_unsupported(req, COMPLETIONS)
    n = check_n(req, state.config.server.max_n)
    if req.best_of is not None and req.best_of != n:
        raise invalid_value(f"best_of must equal n ({n}) when given: choosing the best of more samples is not supported", "best_of")
    vocab_size = prompt_vocab_size(engine)
    prompts = prompt_ids(req.prompt, engine.tokenizer, vocab_size)
    longest = max(len(ids) for ids, _ in prompts)
    max_tokens = resolve_max_tokens(req.max_tokens, DEFAULT_MAX_TOKENS, longest, engine.max_model_len, "prompt", "max_tokens")
    prompt_logprobs = req.logprobs if req.echo else None
    params = sampling_params(req, max_tokens, req.logprobs, "logprobs", vocab_size, prompt_logprobs)
    echo_texts = None
    if req.echo:
        echo_texts = [(text, token_text(engine.tokenizer, ids[0])) for ids, text in prompts for _ in range(n)]
    formatter = CompletionFormatter(
        request_id, int(time.time()), engine.model_name, req.logprobs, engine.tokenizer is None, echo_texts
    )
    return Prepared(
        specs=fan_out([ids for ids, _ in prompts], params, n),
        num_prompt_tokens=sum(len(ids) for ids, _ in prompts),
        stream=bool(req.stream),
        include_usage=bool(req.stream_options and req.stream_options.include_usage),
        formatter=formatter,
        user=req.user,
    )


class CompletionFormatter:
    def __init__(
        self,
        request_id: str,
        created: int,
        model: str,
        logprobs: int | None,
        with_token_ids: bool = False,
        echo_texts: list[tuple[str, str]] | None = None,
    ) -> None:
        self.request_id = request_id
        self.created = created
        self.model = model
        self.logprobs = logprobs
        self.with_token_ids = with_token_ids  # choices carry `token_ids` (no tokenizer)
        self.echo_texts = echo_texts  # per choice index, when echoing: (prompt text, first token's text)
        self._echoed: set[int] = set()  # choices whose prompt was streamed

    def _logprobs(self, choice: Choice, items: list[TokenLogprob | None]) -> CompletionLogprobs:
        """OpenAI's legacy logprobs for `items`, the next tokens of `choice` (advances its offset);
        None: an echoed prompt's first token (no logprob)."""
        offsets, tokens = [], []
        for item in items:
            token = item.token if item is not None else self.echo_texts[choice.index][1]  # type: ignore[index]
            offsets.append(choice.num_logprob_chars)
            tokens.append(token)
            choice.num_logprob_chars += len(token)
        return CompletionLogprobs(
            tokens=tokens,
            token_logprobs=[None if i is None else i.logprob for i in items],
            top_logprobs=[None if i is None else {text: lp for _, text, lp in i.top} for i in items],
            text_offset=offsets,
        )

    def _echo(self, choice: Choice) -> tuple[str, list[TokenLogprob | None]]:
        """The text and logprob items that precede the choice's output when echoing."""
        if self.echo_texts is None:
            return "", []
        return self.echo_texts[choice.index][0], list(choice.prompt_logprobs or [])

    def _chunk(self, choices: list[CompletionChoice], usage: Usage | None = None) -> bytes:
        return msgspec.json.encode(CompletionChunk(self.request_id, OBJECT, self.created, self.model, choices, usage))

    def stream_start(self, choices: list[Choice]) -> list[bytes]:
        return []

    def chunk(self, choice: Choice, delta: RequestDelta) -> bytes | None:
        reason = finish_reason_text(delta.finish_reason)
        text, items = "", list(delta.logprobs or [])
        if choice.index not in self._echoed and delta.finish_reason is not FinishReason.ABORT:
            self._echoed.add(choice.index)
            text, prompt_items = self._echo(choice)
            items = prompt_items + items
        text += delta.text
        logprobs = self._logprobs(choice, items) if self.logprobs is not None and items else None
        token_ids = delta.token_ids if self.with_token_ids else msgspec.UNSET
        if not text and not token_ids and reason is None and logprobs is None:
            return None
        stop_reason = delta.stop_reason if reason else None
        return self._chunk([CompletionChoice(choice.index, text, logprobs, reason, stop_reason, token_ids)])

    def usage_chunk(self, usage: Usage) -> bytes:
        return self._chunk([], usage)

    def response(self, choices: list[Choice], usage: Usage) -> bytes:
        out = []
        for c in choices:
            c.num_logprob_chars = 0
            echo_text, prompt_items = self._echo(c)
            logprobs = self._logprobs(c, prompt_items + c.logprobs) if self.logprobs is not None else None
            token_ids = c.token_ids if self.with_token_ids else msgspec.UNSET
            text = echo_text + c.text
            out.append(CompletionChoice(c.index, text, logprobs, finish_reason_text(c.finish_reason), c.stop_reason, token_ids))
        return msgspec.json.encode(Completion(self.request_id, OBJECT, self.created, self.model, out, usage))


async def create_completion(request: web.Request) -> web.StreamResponse:
    return await handle_generation(request, request.app[STATE], prepare, "completions", "cmpl")
