"""Request decoding and response encoding of the OpenAI wire format (no model needed)."""

from __future__ import annotations

import json

import msgspec
import pytest

from neo_async.server import sse
from neo_async.server.errors import APIError
from neo_async.server.openai_schema import (
    ChatChunkChoice,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatDelta,
    Completion,
    CompletionChoice,
    CompletionChunk,
    CompletionRequest,
    Usage,
    decode_request,
    make_decoder,
)

COMPLETION = make_decoder(CompletionRequest)
CHAT = make_decoder(ChatCompletionRequest)


def test_unknown_fields_are_ignored_and_absent_ones_are_none():
    req = decode_request(b'{"prompt": "hi", "max_tokens": 3, "best_of": 2, "logit_bias": {"1": 2}}', COMPLETION)
    assert req.prompt == "hi" and req.max_tokens == 3
    assert req.temperature is None and req.n is None and req.stream is None


@pytest.mark.parametrize(
    "prompt", ["text", ["a", "b"], [1, 2, 3], [[1, 2], [3]]], ids=["string", "strings", "ids", "id-lists"]
)
def test_every_prompt_form_decodes(prompt):
    assert decode_request(json.dumps({"prompt": prompt}).encode(), COMPLETION).prompt == prompt


def test_chat_content_parts_decode():
    body = {"messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}], "logprobs": True, "top_logprobs": 2}
    req = decode_request(json.dumps(body).encode(), CHAT)
    assert req.messages[0].content[0].text == "hi" and req.top_logprobs == 2


@pytest.mark.parametrize(
    ("body", "param", "code"),
    [
        (b"{", None, "invalid_json"),
        (b"", None, "invalid_json"),
        (b"null", None, "invalid_type"),
        (b"[]", None, "invalid_type"),
        (b'{"max_tokens": 1}', "prompt", "missing_required_parameter"),
        (b'{"prompt": "x", "max_tokens": "1"}', "max_tokens", "invalid_type"),
        (b'{"prompt": "x", "max_tokens": true}', "max_tokens", "invalid_type"),
        (b'{"prompt": "x", "stop": 3}', "stop", "invalid_type"),
        (b'{"prompt": [[1, "a"]]}', "prompt[0][1]", "invalid_type"),
        (b'{"prompt": "x", "stream_options": {"include_usage": 1}}', "stream_options.include_usage", "invalid_type"),
    ],
)
def test_bad_completion_bodies_name_the_field(body, param, code):
    with pytest.raises(APIError) as info:
        decode_request(body, COMPLETION)
    assert (info.value.status, info.value.param, info.value.code) == (400, param, code)


def test_nested_missing_field_has_a_path():
    with pytest.raises(APIError) as info:
        decode_request(b'{"messages": [{"role": "user"}, {"content": "x"}]}', CHAT)
    assert info.value.param == "messages[1].role"


def test_absent_chat_content_is_not_null():
    req = decode_request(b'{"messages": [{"role": "user"}, {"role": "user", "content": null}, {"role": "assistant", "tool_calls": [{"id": "c"}]}]}', CHAT)
    absent, null, call = req.messages
    assert absent.content is msgspec.UNSET and null.content is None
    assert call.has_tool_calls and not absent.has_tool_calls


def test_responses_keep_nulls_and_chunks_omit_absent_usage():
    usage = Usage(prompt_tokens=2, completion_tokens=3, total_tokens=5)
    full = json.loads(msgspec.json.encode(Completion("c", "text_completion", 1, "m", [CompletionChoice(0, "t", None, "stop")], usage)))
    assert full["choices"][0]["logprobs"] is None and full["usage"]["total_tokens"] == 5
    chunk = json.loads(msgspec.json.encode(CompletionChunk("c", "text_completion", 1, "m", [CompletionChoice(0, "t", None, None)])))
    assert "usage" not in chunk and chunk["choices"][0]["finish_reason"] is None and chunk["object"] == "text_completion"
    chat = json.loads(msgspec.json.encode(ChatCompletionChunk("c", "chat.completion.chunk", 1, "m", [ChatChunkChoice(0, ChatDelta(), None, "stop")])))
    assert chat["choices"][0]["delta"] == {} and chat["choices"][0]["finish_reason"] == "stop"


def test_sse_event_is_one_data_line():
    frame = sse.event(CompletionChunk("c", "text_completion", 1, "m", [CompletionChoice(0, "a\nb\n\nc", None, None)]))
    assert frame.startswith(b"data: ") and frame.endswith(b"\n\n")
    assert frame.count(b"\n") == 2  # newlines inside the text stay escaped in the JSON
    assert json.loads(frame[len(b"data: ") :])["choices"][0]["text"] == "a\nb\n\nc"
    assert sse.event(b'{"x":1}') == b'data: {"x":1}\n\n'
    assert sse.DONE == b"data: [DONE]\n\n"
