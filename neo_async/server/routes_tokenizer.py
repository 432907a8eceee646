"""vLLM's tokenizer routes: POST /tokenize (a prompt, or chat messages through the template),
POST /detokenize, GET /tokenizer_info. Evaluation clients (lm-evaluation-harness's remote
tokenizer) use them instead of downloading the model's tokenizer.
"""

from __future__ import annotations

from typing import Any

import msgspec
from aiohttp import web

from neo_async.model.tokenizer import Tokenizer
from neo_async.server.errors import invalid_value
from neo_async.server.openai_schema import ChatMessage, decode_request, make_decoder
from neo_async.server.params import check_model
from neo_async.server.routes_chat import template_messages
from neo_async.server.state import STATE


class TokenizeRequest(msgspec.Struct, kw_only=True):
    """Either `prompt` or `messages`; add_special_tokens defaults to True for a prompt and to
    False for messages (the template holds any BOS itself), as vLLM does."""

    model: str | None = None
    prompt: str | None = None
    messages: list[ChatMessage] | None = None
    add_special_tokens: bool | None = None
    add_generation_prompt: bool = True
    return_token_strs: bool = False


class TokenizeResponse(msgspec.Struct):
    count: int
    max_model_len: int
    tokens: list[int]
    token_strs: list[str] | None


class DetokenizeRequest(msgspec.Struct, kw_only=True):
    model: str | None = None
    tokens: list[int]


class DetokenizeResponse(msgspec.Struct):
    prompt: str


_TOKENIZE = make_decoder(TokenizeRequest)
_DETOKENIZE = make_decoder(DetokenizeRequest)


def _tokenizer(request: web.Request, param: str) -> Tokenizer:
    engine = request.app[STATE].engine
    assert engine is not None
    if engine.tokenizer is None:
        raise invalid_value("this server runs with --skip-tokenizer-init and has no tokenizer", param)
    return engine.tokenizer


def _json(struct: Any) -> web.Response:
    return web.Response(body=msgspec.json.encode(struct), content_type="application/json")


async def tokenize(request: web.Request) -> web.Response:
    req = decode_request(await request.read(), _TOKENIZE)
    engine = request.app[STATE].engine
    assert engine is not None
    check_model(req, engine)
    if (req.prompt is None) == (req.messages is None):
        raise invalid_value("give exactly one of prompt and messages", "prompt" if req.prompt is None else "messages")
    tokenizer = _tokenizer(request, "prompt" if req.prompt is not None else "messages")
    if req.prompt is not None:
        ids = tokenizer.encode(req.prompt, add_special_tokens=req.add_special_tokens is not False)
    else:
        assert req.messages is not None
        try:
            text = tokenizer.apply_chat_template(template_messages(req.messages), add_generation_prompt=req.add_generation_prompt)
        except Exception as exc:  # noqa: BLE001 - a template may reject a conversation (e.g. roles out of order)
            raise invalid_value(f"the chat template rejected the messages: {exc}", "messages") from None
        ids = tokenizer.encode(text, add_special_tokens=bool(req.add_special_tokens))
    token_strs = [tokenizer.token_text(t) for t in ids] if req.return_token_strs else None
    return _json(TokenizeResponse(len(ids), engine.max_model_len, list(ids), token_strs))


async def detokenize(request: web.Request) -> web.Response:
    req = decode_request(await request.read(), _DETOKENIZE)
    engine = request.app[STATE].engine
    assert engine is not None
    check_model(req, engine)
    tokenizer = _tokenizer(request, "tokens")
    bad = next((t for t in req.tokens if not 0 <= t < tokenizer.vocab_size), None)
    if bad is not None:
        raise invalid_value(f"token id {bad} is out of the vocabulary [0, {tokenizer.vocab_size})", "tokens")
    return _json(DetokenizeResponse(tokenizer.decode(req.tokens, skip_special_tokens=False)))


async def tokenizer_info(request: web.Request) -> web.Response:
    engine = request.app[STATE].engine
    assert engine is not None
    tokenizer = _tokenizer(request, None)

    def text(token_id: int | None) -> str | None:
        return None if token_id is None else tokenizer.token_text(token_id)

    info = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": text(tokenizer.bos_token_id),
        "eos_token": text(tokenizer.eos_token_id),
        "pad_token": None,
        "unk_token": None,
        "add_bos_token": tokenizer.add_bos_token,
        "chat_template": tokenizer.chat_template,
        "model_max_length": engine.max_model_len,
        "vocab_size": tokenizer.vocab_size,
    }
    return web.json_response(info)
