"""POST /v1/chat/completions: messages through the model's chat template, n choices."""

from __future__ import annotations

import time

import msgspec
from aiohttp import web

from neo_async.outputs import RequestDelta, TokenLogprob
from neo_async.server.errors import invalid_type, invalid_value, missing_required
from neo_async.server.generation import Choice
from neo_async.server.openai_schema import (
    ChatChoice,
    ChatChunkChoice,
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatDelta,
    ChatLogprobs,
    ChatMessage,
    ChatResponseMessage,
    ChatTokenLogprob,
    ChatTopLogprob,
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
from neo_async.server.unsupported import CHAT, refuse_unsupported

OBJECT = "chat.completion"
CHUNK_OBJECT = "chat.completion.chunk"
ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant", "tool": "tool"}

_DECODER = make_decoder(ChatCompletionRequest)


def template_messages(messages: list[ChatMessage]) -> list[dict[str, str]]:
    """Messages as the chat template takes them: known roles, text content only."""
    if not messages:
        raise invalid_value("messages must hold at least one message", "messages")
    out = []
    for i, m in enumerate(messages):
        role = ROLES.get(m.role)
        if role is None:
            raise invalid_value(f"unknown role {m.role!r}; expected one of {sorted(ROLES)}", f"messages[{i}].role")
        out.append({"role": role, "content": message_text(m, f"messages[{i}].content")})
    return out


def message_text(m: ChatMessage, param: str) -> str:
    """A message's text; content is required, as OpenAI requires it, unless an assistant message
    carries tool calls."""
    if m.content is msgspec.UNSET or m.content is None:
        if m.role == "assistant" and m.has_tool_calls:
            return ""
        if m.content is None:
            raise invalid_type(f"{param} must be a string or a list of content parts, got null", param)
        raise missing_required(param)
    if isinstance(m.content, str):
        return m.content
    texts = []
    for part in m.content:
        if part.type != "text" or part.text is None:
            raise invalid_value(f"only text content parts are supported, got {part.type!r}", param)
        texts.append(part.text)
    return "\n".join(texts)


def prepare(body: bytes, state: AppState, request_id: str) -> Prepared:
    req = decode_request(body, _DECODER)
    engine = state.engine
    assert engine is not None
    check_model(req, engine)
    refuse_unsupported(req, CHAT)
    if engine.tokenizer is None:
        raise invalid_value(
            "chat needs the model's tokenizer and chat template, and this server runs with --skip-tokenizer-init; "
            "send token-id prompts to /v1/completions",
            "messages",
        )
    n = check_n(req, state.config.server.max_n)
    messages = template_messages(req.messages)
    add_generation_prompt = req.add_generation_prompt is not False
    try:
        text = engine.tokenizer.apply_chat_template(messages, add_generation_prompt=add_generation_prompt)
    except Exception as exc:  # a template may reject a conversation (e.g. roles out of order)
        raise invalid_value(f"the chat template rejected the messages: {exc}", "messages") from None
    ids = list(engine.tokenizer.encode(text, add_special_tokens=False))  # the template holds any BOS itself
    check_token_ids(ids, engine.tokenizer.vocab_size, "messages")
    if req.max_completion_tokens is not None:
        requested, param = req.max_completion_tokens, "max_completion_tokens"
    else:
        requested, param = req.max_tokens, "max_tokens"
    max_tokens = resolve_max_tokens(requested, None, len(ids), engine.max_model_len, "messages", param)
    if req.top_logprobs is not None and not req.logprobs:
        raise invalid_value("top_logprobs requires logprobs to be true", "top_logprobs")
    logprobs = (req.top_logprobs or 0) if req.logprobs else None
    params = sampling_params(req, max_tokens, logprobs, "top_logprobs", prompt_vocab_size(engine))
    return Prepared(
        specs=fan_out([ids], params, n),
        num_prompt_tokens=len(ids),
        stream=bool(req.stream),
        include_usage=bool(req.stream_options and req.stream_options.include_usage),
        formatter=ChatFormatter(request_id, int(time.time()), engine.model_name, logprobs is not None),
        user=req.user,
    )


def _token_bytes(token: str) -> list[int]:
    return list(token.encode("utf-8", errors="replace"))


def chat_logprobs(items: list[TokenLogprob]) -> ChatLogprobs:
    return ChatLogprobs(
        content=[
            ChatTokenLogprob(
                token=i.token,
                logprob=i.logprob,
                bytes=_token_bytes(i.token),
                top_logprobs=[ChatTopLogprob(text, lp, _token_bytes(text)) for _, text, lp in i.top],
            )
            for i in items
        ]
    )


class ChatFormatter:
    def __init__(self, request_id: str, created: int, model: str, logprobs: bool) -> None:
        self.request_id = request_id
        self.created = created
        self.model = model
        self.logprobs = logprobs

    def _chunk(self, choices: list[ChatChunkChoice], usage: Usage | None = None) -> bytes:
        return msgspec.json.encode(ChatCompletionChunk(self.request_id, CHUNK_OBJECT, self.created, self.model, choices, usage))

    def stream_start(self, choices: list[Choice]) -> list[bytes]:
        """OpenAI opens each choice with a chunk that carries only the role."""
        return [self._chunk([ChatChunkChoice(c.index, ChatDelta(role="assistant", content=""), None, None)]) for c in choices]

    def chunk(self, choice: Choice, delta: RequestDelta) -> bytes | None:
        reason = finish_reason_text(delta.finish_reason)
        logprobs = chat_logprobs(delta.logprobs) if self.logprobs and delta.logprobs else None
        if not delta.text and reason is None and logprobs is None:
            return None
        content = delta.text if delta.text else None
        stop_reason = delta.stop_reason if reason else None
        return self._chunk([ChatChunkChoice(choice.index, ChatDelta(content=content), logprobs, reason, stop_reason)])

    def usage_chunk(self, usage: Usage) -> bytes:
        return self._chunk([], usage)

    def response(self, choices: list[Choice], usage: Usage) -> bytes:
        out = [
            ChatChoice(
                index=c.index,
                message=ChatResponseMessage(role="assistant", content=c.text),
                logprobs=chat_logprobs(c.logprobs) if self.logprobs else None,
                finish_reason=finish_reason_text(c.finish_reason),
                stop_reason=c.stop_reason,
            )
            for c in choices
        ]
        return msgspec.json.encode(ChatCompletion(self.request_id, OBJECT, self.created, self.model, out, usage))


async def create_chat_completion(request: web.Request) -> web.StreamResponse:
    return await handle_generation(request, request.app[STATE], prepare, "chat", "chatcmpl")
