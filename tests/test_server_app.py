"""`create_app(config, engine=...)` in-process with the real embedded model: the app starts
the engine it was given, serves, and stops it on cleanup."""

from __future__ import annotations

import json

import pytest
from aiohttp.test_utils import TestClient, TestServer

from neo_async.async_engine import AsyncEngine
from neo_async.config import Config
from neo_async.server import create_app

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


async def test_app_runs_a_given_engine_for_its_lifetime():
    config = Config().override(device_threads=1, device_kv_tokens=4096)
    engine = AsyncEngine.from_config(config)
    assert not engine.is_running
    async with TestClient(TestServer(create_app(config, engine=engine))) as client:
        assert engine.is_running
        response = await client.post("/v1/completions", json={"prompt": "Hi", "max_tokens": 3, "ignore_eos": True})
        assert response.status == 200
        body = await response.json()
        assert body["usage"]["completion_tokens"] == 3
        assert "token_ids" not in body["choices"][0]  # sent only by a server without a tokenizer
        response = await client.post(
            "/v1/chat/completions",
            json={"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 3, "stream": True},
        )
        lines = [line for line in (await response.text()).split("\n\n") if line]
        assert lines[-1] == "data: [DONE]"
        assert json.loads(lines[0][len("data: ") :])["choices"][0]["delta"]["role"] == "assistant"
        assert (await client.get("/health")).status == 200
    assert not engine.is_running
    assert engine.stats().num_device_blocks_used == 0
