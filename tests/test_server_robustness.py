"""The real server under bad input and rude clients: malformed requests get the documented
status and error body, disconnects abort at once and free every KV block, and the server
keeps serving through all of it."""

from __future__ import annotations

import asyncio
import json
import random

import aiohttp
import pytest

from tests.server_fixtures import (
    ServerProcess,
    http,
    metric,
    metrics,
    sse_events,
    wait_until,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

C = "/v1/completions"
H = "/v1/chat/completions"
CHAT = [{"role": "user", "content": "hi"}]
LONG = "hello " * 9000  # more tokens than the 8192-token context

# (id, method, path, body, status, param, code)
MALFORMED = [
    ("truncated-json", "POST", C, b'{"prompt": "hi", "max_tokens": 4', 400, None, "invalid_json"),
    ("empty-body", "POST", C, b"", 400, None, "invalid_json"),
    ("body-is-array", "POST", C, b"[1, 2]", 400, None, "invalid_type"),
    ("body-is-string", "POST", H, b'"hi"', 400, None, "invalid_type"),
    ("no-prompt", "POST", C, {"max_tokens": 4}, 400, "prompt", "missing_required_parameter"),
    ("no-messages", "POST", H, {"max_tokens": 4}, 400, "messages", "missing_required_parameter"),
    ("max-tokens-string", "POST", C, {"prompt": "hi", "max_tokens": "ten"}, 400, "max_tokens", "invalid_type"),
    ("max-tokens-float", "POST", C, {"prompt": "hi", "max_tokens": 2.5}, 400, "max_tokens", "invalid_type"),
    ("temperature-string", "POST", C, {"prompt": "hi", "temperature": "hot"}, 400, "temperature", "invalid_type"),
    ("stream-string", "POST", C, {"prompt": "hi", "stream": "yes"}, 400, "stream", "invalid_type"),
    ("seed-float", "POST", C, {"prompt": "hi", "seed": 1.5}, 400, "seed", "invalid_type"),
    ("nested-type", "POST", C, {"prompt": "hi", "stream_options": {"include_usage": "y"}}, 400, "stream_options.include_usage", "invalid_type"),
    ("prompt-number", "POST", C, {"prompt": 42}, 400, "prompt", "invalid_type"),
    ("prompt-mixed-list", "POST", C, {"prompt": [1, "a"]}, 400, "prompt", "invalid_value"),
    ("prompt-empty-string", "POST", C, {"prompt": ""}, 400, "prompt", "invalid_value"),
    ("prompt-empty-list", "POST", C, {"prompt": []}, 400, "prompt", "invalid_value"),
    ("token-id-too-big", "POST", C, {"prompt": [1, 49152]}, 400, "prompt", "invalid_value"),
    ("token-id-negative", "POST", C, {"prompt": [-1]}, 400, "prompt", "invalid_value"),
    ("max-tokens-zero", "POST", C, {"prompt": "hi", "max_tokens": 0}, 400, "max_tokens", "invalid_value"),
    ("max-tokens-negative", "POST", C, {"prompt": "hi", "max_tokens": -5}, 400, "max_tokens", "invalid_value"),
    ("max-tokens-past-context", "POST", C, {"prompt": "hi", "max_tokens": 100000}, 400, "max_tokens", "context_length_exceeded"),
    ("chat-max-completion-tokens", "POST", H, {"messages": CHAT, "max_completion_tokens": 100000}, 400, "max_completion_tokens", "context_length_exceeded"),
    ("prompt-past-context", "POST", C, {"prompt": LONG}, 400, "prompt", "context_length_exceeded"),
    ("messages-past-context", "POST", H, {"messages": [{"role": "user", "content": LONG}]}, 400, "messages", "context_length_exceeded"),
    ("temperature-negative", "POST", C, {"prompt": "hi", "temperature": -1}, 400, "temperature", "invalid_value"),
    ("top-p-zero", "POST", C, {"prompt": "hi", "top_p": 0}, 400, "top_p", "invalid_value"),
    ("presence-penalty", "POST", C, {"prompt": "hi", "presence_penalty": 3}, 400, "presence_penalty", "invalid_value"),
    ("n-zero", "POST", C, {"prompt": "hi", "n": 0}, 400, "n", "invalid_value"),
    ("n-too-large", "POST", C, {"prompt": "hi", "n": 17}, 400, "n", "invalid_value"),
    ("chat-n-too-large", "POST", H, {"messages": CHAT, "n": 1000}, 400, "n", "invalid_value"),
    ("logprobs-too-many", "POST", C, {"prompt": "hi", "logprobs": 21}, 400, "logprobs", "invalid_value"),
    ("top-logprobs-alone", "POST", H, {"messages": CHAT, "top_logprobs": 2}, 400, "top_logprobs", "invalid_value"),
    ("top-logprobs-too-many", "POST", H, {"messages": CHAT, "logprobs": True, "top_logprobs": 50}, 400, "top_logprobs", "invalid_value"),
    ("too-many-stops", "POST", C, {"prompt": "hi", "stop": ["a"] * 17}, 400, "stop", "invalid_value"),
    ("messages-string", "POST", H, {"messages": "hi"}, 400, "messages", "invalid_type"),
    ("messages-empty", "POST", H, {"messages": []}, 400, "messages", "invalid_value"),
    ("unknown-role", "POST", H, {"messages": [{"role": "robot", "content": "hi"}]}, 400, "messages[0].role", "invalid_value"),
    ("message-without-role", "POST", H, {"messages": [{"content": "hi"}]}, 400, "messages[0].role", "missing_required_parameter"),
    ("message-without-content", "POST", H, {"messages": [{"role": "user"}]}, 400, "messages[0].content", "missing_required_parameter"),
    ("message-content-null", "POST", H, {"messages": [{"role": "system", "content": None}, *CHAT]}, 400, "messages[0].content", "invalid_type"),
    ("assistant-without-content", "POST", H, {"messages": [*CHAT, {"role": "assistant"}, *CHAT]}, 400, "messages[1].content", "missing_required_parameter"),
    ("image-content", "POST", H, {"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}, 400, "messages[0].content", "invalid_value"),
    ("unknown-model", "POST", C, {"prompt": "hi", "model": "gpt-4"}, 404, "model", "model_not_found"),
    ("chat-unknown-model", "POST", H, {"messages": CHAT, "model": "gpt-4"}, 404, "model", "model_not_found"),
    ("wrong-method", "GET", C, None, 405, None, "method_not_allowed"),
    ("unknown-path", "POST", "/v1/nothing", {"prompt": "hi"}, 404, None, "not_found"),
]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    proc = ServerProcess(tmp_path_factory.mktemp("server") / "server.log")
    yield proc
    assert proc.stop() == 0, proc.log_text()


@pytest.mark.parametrize(("method", "path", "body", "status", "param", "code"), [c[1:] for c in MALFORMED], ids=[c[0] for c in MALFORMED])
def test_malformed_request_gets_documented_error(server, method, path, body, status, param, code):
    got_status, headers, raw = http(method, server.base_url + path, body)
    assert got_status == status, raw
    assert headers["Content-Type"].startswith("application/json")
    error = json.loads(raw)["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param and error["code"] == code
    assert error["message"]
    assert http("GET", server.base_url + "/health")[0] == 200  # still serving


def test_unknown_fields_are_ignored(server):
    body = {"prompt": "hi", "max_tokens": 2, "frobnicate": {"x": [1, 2]}, "logit_bias": {"1": 5}}
    status, _, raw = http("POST", server.base_url + C, body)
    assert status == 200, raw
    assert json.loads(raw)["usage"]["completion_tokens"] <= 2


def test_assistant_tool_call_needs_no_content(server):
    call = {"id": "call_1", "type": "function", "function": {"name": "add", "arguments": '{"a": 1, "b": 2}'}}
    messages = [*CHAT, {"role": "assistant", "tool_calls": [call]}, {"role": "tool", "tool_call_id": "call_1", "content": "3"}]
    status, _, raw = http("POST", server.base_url + H, {"messages": messages, "max_tokens": 2})
    assert status == 200, raw
    assert json.loads(raw)["usage"]["prompt_tokens"] > 0


def test_rejections_are_counted_and_serving_continues(server):
    http("POST", server.base_url + C, {"prompt": "hi", "n": 0})
    assert metric(server.base_url, "neo:requests_rejected_total", code="invalid_value") >= 1
    status, _, raw = http("POST", server.base_url + H, {"messages": CHAT, "max_tokens": 3})
    assert status == 200, raw
    assert json.loads(raw)["choices"][0]["message"]["role"] == "assistant"


def _is_idle(base_url: str) -> bool:
    m = metrics(base_url)
    return (
        m[("vllm:num_requests_running", ())] == 0
        and m[("vllm:num_requests_waiting", ())] == 0
        and m[("neo:kv_blocks_used", (("location", "device"),))] == 0
        and m[("neo:kv_blocks_used", (("location", "host"),))] == 0
    )


async def test_disconnect_storm_frees_every_request_and_block(server):
    base = server.base_url
    rng = random.Random(4)
    aborts_before = metric(base, "vllm:request_success_total", finished_reason="abort")
    # Long enough that, were any request not aborted, it would still run when the wait below ends.
    long = {"max_tokens": 3000, "ignore_eos": True, "stream": True, "temperature": 1.0}

    async def cut_stream(session: aiohttp.ClientSession, i: int) -> int:
        n = 2 if i % 4 == 0 else 1
        path, body = (H, {"messages": [{"role": "user", "content": f"Tell story {i}."}]}) if i % 3 else (C, {"prompt": f"Story {i}:"})
        cut_after = rng.randrange(0, 6)  # SSE events to read before hanging up (0: right after the headers)
        response = await session.post(base + path, json={**body, **long, "n": n})
        assert response.status == 200
        seen = 0
        async for _ in sse_events(response):
            if seen >= cut_after:
                break
            seen += 1
        response.close()  # drops the connection mid-stream
        return n

    async def cut_non_streaming(session: aiohttp.ClientSession, i: int) -> None:
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(session.post(base + C, json={"prompt": f"Essay {i}:", **long, "stream": False}), 0.5 + i * 0.2)

    async with aiohttp.ClientSession() as session:
        results = await asyncio.gather(
            *(cut_stream(session, i) for i in range(24)), *(cut_non_streaming(session, i) for i in range(4))
        )
    num_streamed_choices = sum(r for r in results if r is not None)

    assert await asyncio.to_thread(wait_until, lambda: _is_idle(base), 60.0), metrics(base)
    aborts = metric(base, "vllm:request_success_total", finished_reason="abort") - aborts_before
    assert aborts >= num_streamed_choices
    events = [e for e in server.events() if e.get("event") == "request_finished" and e.get("status") == 499]
    assert len(events) >= 24

    status, _, raw = http("POST", base + C, {"prompt": "hi", "max_tokens": 3, "ignore_eos": True})
    assert status == 200 and json.loads(raw)["usage"]["completion_tokens"] == 3
