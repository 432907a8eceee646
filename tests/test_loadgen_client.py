"""The streaming client against a scripted in-process server: exact delays, failures kept."""

from __future__ import annotations

import time

import aiohttp
import pytest

from loadgen import client
from loadgen.client import ClientConfig, build_payload
from loadgen.fake_server import FakeServer, Reply
from loadgen.metrics import itls_s, tpot_s
from loadgen.prompts import Prompt
from loadgen.records import RequestRecord, resolve_num_output_tokens

TOL = 0.06  # s; the scripted delays are exact, this absorbs a busy shared machine


async def start(aiohttp_server, plan):
    fake = FakeServer(plan)
    server = await aiohttp_server(fake.app())
    return fake, str(server.make_url(""))


async def send_one(base_url, prompt="hello", max_tokens=4, endpoint="/v1/completions", **config_kwargs):
    config = ClientConfig(base_url=base_url, endpoint=endpoint, model="fake-model", **config_kwargs)
    record = RequestRecord(request_id=0, prompt_len=1, output_len=max_tokens, scheduled_s=0.0)
    async with client.new_session(config) as session:
        start = time.perf_counter()
        await client.send(session, config, Prompt(prompt, 1), record, start)
    return record


@pytest.mark.parametrize("endpoint", ["/v1/completions", "/v1/chat/completions"])
async def test_scripted_timings(aiohttp_server, endpoint):
    _, url = await start(aiohttp_server, lambda body: Reply(ttft_s=0.3, itl_s=0.1))
    record = await send_one(url, max_tokens=4, endpoint=endpoint)
    assert record.success and record.error == "" and record.http_status == 200
    # tokens leave at 0.3, 0.4, 0.5, 0.6 s; the chat role chunk at 0 s carries no text
    assert record.ttft_s == pytest.approx(0.3, abs=TOL)
    assert record.e2el_s == pytest.approx(0.6, abs=TOL)
    assert len(record.chunk_times_s) == 4
    assert itls_s(record) == pytest.approx([0.1, 0.1, 0.1], abs=TOL)
    assert record.usage_completion_tokens == 4 and record.finish_reason == "length"
    record.num_output_tokens = resolve_num_output_tokens(record, None)
    assert tpot_s(record) == pytest.approx(0.1, abs=TOL / 3)
    assert record.generated_text == " t0 t1 t2 t3"


async def test_without_usage_or_done(aiohttp_server):
    _, url = await start(aiohttp_server, lambda body: Reply(is_done_sent=False))
    config = ClientConfig(base_url=url, model="m", extra_body={"stream_options": {"include_usage": False}})
    record = RequestRecord(request_id=0, prompt_len=1, output_len=3, scheduled_s=0.0)
    async with client.new_session(config) as session:
        await client.send(session, config, Prompt("x", 1), record, time.perf_counter())
    assert record.success and record.usage_completion_tokens is None
    assert resolve_num_output_tokens(record, None) == 3


async def test_http_error_is_kept(aiohttp_server):
    _, url = await start(aiohttp_server, lambda body: Reply(status=503))
    record = await send_one(url)
    assert not record.success and record.is_sent and record.http_status == 503
    assert record.error.startswith("HTTP 503:") and "scripted failure" in record.error


async def test_stream_error_is_kept(aiohttp_server):
    _, url = await start(aiohttp_server, lambda body: Reply(error_after=2))
    record = await send_one(url, max_tokens=5)
    assert not record.success and record.error == "server error: scripted stream error"
    assert len(record.chunk_times_s) == 2 and record.generated_text == " t0 t1"


async def test_empty_stream_fails(aiohttp_server):
    _, url = await start(aiohttp_server, lambda body: Reply(num_tokens=0))
    record = await send_one(url)
    assert not record.success and record.error == "stream ended without any choice"


async def test_connection_refused_is_kept(unused_tcp_port):
    record = await send_one(f"http://127.0.0.1:{unused_tcp_port}")
    assert not record.success and record.is_sent and "Connect" in record.error


async def test_timeout_is_kept(aiohttp_server):
    _, url = await start(aiohttp_server, lambda body: Reply(ttft_s=2.0))
    record = await send_one(url, request_timeout_s=0.2)
    assert not record.success and "Timeout" in record.error


def test_payloads():
    config = ClientConfig(base_url="http://h", model="m", ignore_eos=True, extra_body={"top_k": 5})
    body = build_payload(config, [1, 2, 3], 7)
    assert body == {
        "model": "m",
        "max_tokens": 7,
        "temperature": 0.0,
        "stream": True,
        "stream_options": {"include_usage": True},
        "prompt": [1, 2, 3],
        "ignore_eos": True,
        "top_k": 5,
    }
    chat = ClientConfig(base_url="http://h/", endpoint="/v1/chat/completions", model="m")
    body = build_payload(chat, "hi", 3)
    assert body["messages"] == [{"role": "user", "content": "hi"}] and "ignore_eos" not in body and "prompt" not in body
    assert chat.url == "http://h/v1/chat/completions"
    with pytest.raises(ValueError, match="text prompts"):
        build_payload(chat, [1], 3)


async def test_server_sees_the_payload(aiohttp_server):
    fake, url = await start(aiohttp_server, lambda body: Reply())
    await send_one(url, prompt=[5, 6], max_tokens=2, ignore_eos=True)
    assert fake.bodies[0]["prompt"] == [5, 6] and fake.bodies[0]["ignore_eos"] is True


async def test_models_and_readiness(aiohttp_server, unused_tcp_port):
    _, url = await start(aiohttp_server, lambda body: Reply())
    config = ClientConfig(base_url=url)
    async with aiohttp.ClientSession() as session:
        assert await client.fetch_models(session, config) == ["fake-model"]
    assert await client.wait_until_ready(url, 1.0)
    assert not await client.wait_until_ready(f"http://127.0.0.1:{unused_tcp_port}", 0.3, poll_s=0.1)
