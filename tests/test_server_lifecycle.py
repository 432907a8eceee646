"""Server process lifecycle with the real model: graceful shutdown on SIGTERM/SIGINT, the
grace period, and overload (queue full -> 503 with Retry-After)."""

from __future__ import annotations

import asyncio
import json
import signal
import socket
from urllib.parse import urlparse

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


def _refuses_connections(base_url: str) -> bool:
    url = urlparse(base_url)
    try:
        with socket.create_connection((url.hostname, url.port), timeout=1):
            return False
    except OSError:
        return True


def _num_in_engine(base_url: str) -> float:
    m = metrics(base_url)
    return m[("vllm:num_requests_running", ())] + m[("vllm:num_requests_waiting", ())]


async def _stream(session: aiohttp.ClientSession, url: str, body: dict, first_chunk: asyncio.Event) -> list:
    async with session.post(url, json={**body, "stream": True, "stream_options": {"include_usage": True}}) as response:
        assert response.status == 200
        events = []
        async for event in sse_events(response):
            events.append(event)
            first_chunk.set()
        return events


async def _post(session: aiohttp.ClientSession, url: str, body: dict) -> tuple[int, dict, dict]:
    async with session.post(url, json=body) as response:
        return response.status, dict(response.headers), await response.json()


async def test_sigterm_finishes_in_flight_requests_then_exits_zero(tmp_path):
    server = ServerProcess(tmp_path / "server.log")
    try:
        base = server.base_url
        body = {"prompt": "Write a long story:", "max_tokens": 96, "ignore_eos": True, "temperature": 1.0}
        async with aiohttp.ClientSession() as session:
            firsts = [asyncio.Event() for _ in range(3)]
            streams = [asyncio.create_task(_stream(session, base + C, {**body, "seed": i}, firsts[i])) for i in range(3)]
            posts = [asyncio.create_task(_post(session, base + C, {**body, "seed": 10 + i})) for i in range(3)]
            await asyncio.wait_for(asyncio.gather(*(f.wait() for f in firsts)), 120)
            assert await asyncio.to_thread(wait_until, lambda: _num_in_engine(base) == 6, 60.0)
            server.send_signal(signal.SIGTERM)
            assert await asyncio.to_thread(wait_until, lambda: _refuses_connections(base), 30.0)
            stream_events = await asyncio.gather(*streams)
            post_results = await asyncio.gather(*posts)
        for events in stream_events:
            assert events[-1] == "[DONE]"
            assert not any("error" in e for e in events[:-1])
            assert events[-2]["usage"]["completion_tokens"] == 96
            assert [c["finish_reason"] for e in events[:-2] for c in e["choices"] if c["finish_reason"]] == ["length"]
        for status, _, out in post_results:
            assert status == 200
            assert out["usage"]["completion_tokens"] == 96 and out["choices"][0]["finish_reason"] == "length"
        assert await asyncio.to_thread(server.wait) == 0
        names = [e.get("event") for e in server.events()]
        assert "draining" in names and "server_stopped" in names
        assert "shutdown_grace_expired" not in names
    finally:
        server.stop()


async def test_grace_period_expiry_aborts_the_rest_and_exits_zero(tmp_path):
    server = ServerProcess(tmp_path / "server.log", "--shutdown-grace-s", "1")
    try:
        base = server.base_url
        async with aiohttp.ClientSession() as session:
            first = asyncio.Event()
            endless = {"prompt": "Count forever:", "max_tokens": 3000, "ignore_eos": True}
            stream = asyncio.create_task(_stream(session, base + C, endless, first))
            await asyncio.wait_for(first.wait(), 120)
            server.send_signal(signal.SIGINT)
            events = await stream
        assert events[-1] == "[DONE]"
        assert events[-2]["error"]["code"] == "shutting_down"
        assert events[-2]["error"]["type"] == "server_error"
        assert await asyncio.to_thread(server.wait) == 0
        names = [e.get("event") for e in server.events()]
        assert "shutdown_grace_expired" in names and "server_stopped" in names
        finished = [e for e in server.events() if e.get("event") == "request_finished"]
        assert finished[-1]["finish_reasons"] == ["abort"] and finished[-1]["status"] == 503
    finally:
        server.stop()


async def test_full_queue_gets_503_with_retry_after(tmp_path):
    server = ServerProcess(tmp_path / "server.log", "--max-num-seqs", "1", "--max-waiting", "1")
    try:
        base = server.base_url
        body = {"prompt": "Tell me about the sea.", "max_tokens": 32, "ignore_eos": True}
        async with aiohttp.ClientSession() as session:
            results = await asyncio.gather(*(_post(session, base + C, body) for _ in range(8)))
        overloaded = [(headers, out) for status, headers, out in results if status == 503]
        served = [out for status, _, out in results if status == 200]
        assert overloaded and served
        assert len(overloaded) + len(served) == 8
        for headers, out in overloaded:
            assert int(headers["Retry-After"]) >= 1
            assert out["error"]["type"] == "server_error" and out["error"]["code"] == "engine_overloaded"
        assert all(out["usage"]["completion_tokens"] == 32 for out in served)
        assert metric(base, "neo:requests_rejected_total", code="engine_overloaded") == len(overloaded)
        status, _, raw = http("POST", base + C, {**body, "max_tokens": 2})
        assert status == 200 and json.loads(raw)["usage"]["completion_tokens"] == 2
        assert server.stop() == 0
    finally:
        server.stop()
