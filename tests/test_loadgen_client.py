"""The streaming client against a scripted in-process server: exact delays, failures kept."""

from __future__ import annotations

import asyncio
import json
import time

import aiohttp
import numpy as np
import pytest

from loadgen import client, report, runner
from loadgen.client import ClientConfig, build_payload
from loadgen.fake_server import FakeServer, Reply
from loadgen.metrics import itls_s, summarize, tpot_s
from loadgen.prompts import Prompt
from loadgen.records import RequestRecord, read_jsonl, resolve_num_output_tokens
from loadgen.runner import RunOptions
from loadgen.schema import check_result
from loadgen.workload import RequestSpec

TOL = 0.06  # s; the scripted delays are exact, this absorbs a busy shared machine
RESULT_SETTINGS = {"date": "d", "model_id": "m", "endpoint": "/v1/completions", "dataset_name": "x", "request_rate": "inf"}


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


class IdleClosingServer:
    """A raw HTTP/1.1 completions server that keeps connections alive and closes one left idle
    for `idle_close_s` (None: never). The close is made to meet the next request on that
    connection, as when the server's close and the client's request cross on the wire: `fin`
    closes once the request is read, `reset` aborts (RST) as soon as its head arrives, before
    the body. `close_fresh` closes new connections at their first request too: a server that
    is really failing."""

    def __init__(self, idle_close_s: float | None, how: str = "fin", close_fresh: bool = False) -> None:
        self.idle_close_s = idle_close_s
        self.how = how
        self.close_fresh = close_fresh
        self.num_connections = 0
        self.num_closed = 0  # connections closed under a request

    async def __aenter__(self) -> str:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def __aexit__(self, *exc) -> None:
        self.server.close()
        await self.server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.num_connections += 1
        idle_since: float | None = None  # None: no request answered on this connection yet
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                is_idle_closed = idle_since is not None and self.idle_close_s is not None and time.monotonic() - idle_since >= self.idle_close_s
                is_closed = is_idle_closed or (idle_since is None and self.close_fresh)
                if is_closed and self.how == "reset":
                    self.num_closed += 1
                    writer.transport.abort()
                    return
                length = next(int(line.split(b":")[1]) for line in head.lower().split(b"\r\n") if line.startswith(b"content-length:"))
                body = json.loads(await reader.readexactly(length))
                if is_closed:
                    self.num_closed += 1
                    return
                writer.write(self._response(body["max_tokens"]))
                await writer.drain()
                idle_since = time.monotonic()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass  # the client closed the connection
        finally:
            writer.close()

    @staticmethod
    def _response(num_tokens: int) -> bytes:
        chunks = [{"choices": [{"index": 0, "text": f" t{i}", "finish_reason": "length" if i == num_tokens - 1 else None}]} for i in range(num_tokens)]
        chunks.append({"choices": [], "usage": {"prompt_tokens": 1, "completion_tokens": num_tokens, "total_tokens": num_tokens + 1}})
        body = b"".join(b"data: " + json.dumps(c).encode() + b"\n\n" for c in chunks) + b"data: [DONE]\n\n"
        head = f"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nContent-Length: {len(body)}\r\n\r\n"
        return head.encode() + body


async def run_waves(base_url: str, num_streams: int = 16, gap_s: float = 0.5, prompt_chars: int = 8):
    """Two waves of `num_streams` concurrent streams, `gap_s` apart: the second wave finds the
    first wave's connections idle in the pool."""
    config = ClientConfig(base_url=base_url, model="m")
    specs = [RequestSpec(1, 2)] * (2 * num_streams)
    prompts = [Prompt(f"p{i}".ljust(prompt_chars, "x"), 1) for i in range(2 * num_streams)]
    offsets = np.array([0.0] * num_streams + [gap_s] * num_streams)
    async with client.new_session(config) as session:
        result = await runner.run(session, config, specs, prompts, offsets, RunOptions(max_concurrency=num_streams))
    return result.records, summarize(result.records, result.duration_s)


# fin: the client reads EOF (ServerDisconnectedError). reset: a ClientOSError (a reset, or "Can not
# write request body" when it meets the write of the body, as llama.cpp's server provoked); a 1 MB
# prompt keeps the body going out while the reset arrives.
@pytest.mark.parametrize(("how", "prompt_chars"), [("fin", 8), ("reset", 1_000_000)], ids=["fin", "reset-mid-body"])
async def test_closed_keepalive_connections_are_reconnects_not_failures(tmp_path, how, prompt_chars):
    server = IdleClosingServer(idle_close_s=0.05, how=how)
    async with server as url:
        records, summary = await run_waves(url, prompt_chars=prompt_chars)
    assert summary["failed"] == 0, summary["errors"]
    assert summary["completed"] == 32 and summary["errors"] == {}
    assert all(r.num_output_tokens == 2 and r.generated_text == " t0 t1" for r in records)
    assert summary["num_reconnects"] == server.num_closed > 0  # each sent again, once, on a new connection
    assert [r.num_reconnects for r in records[:16]] == [0] * 16  # the first wave opened its connections
    result = {**RESULT_SETTINGS, **summary}
    assert check_result(result) == []
    assert "Reconnects (server closed keep-alive):" in report.format_table(result, (50.0, 90.0, 99.0))
    report.save(result, records, tmp_path, "r.json")
    assert json.loads((tmp_path / "r.json").read_text())["num_reconnects"] == server.num_closed
    assert sum(r.num_reconnects for r in read_jsonl(tmp_path / "r.jsonl")) == server.num_closed


async def test_kept_alive_connections_left_open_need_no_reconnect():
    server = IdleClosingServer(idle_close_s=None)
    async with server as url:
        records, summary = await run_waves(url)
    assert (summary["completed"], summary["failed"], summary["num_reconnects"]) == (32, 0, 0)
    assert server.num_connections == 16  # the second wave reused the first wave's connections
    assert "Reconnects" not in report.format_table({**RESULT_SETTINGS, **summary}, (50.0, 90.0, 99.0))


async def test_a_new_connection_closed_under_a_request_is_a_failure():
    server = IdleClosingServer(idle_close_s=None, close_fresh=True)
    async with server as url:
        record = await send_one(url)
    assert not record.success and record.num_reconnects == 0
    assert "ServerDisconnectedError" in record.error
