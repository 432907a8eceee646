"""Start-up (server/startup.py): the port answers before the engine is loaded, every route
503 with an OpenAI error body until it is ready, /health 200 after; a failed load exits."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import threading
import time

import pytest
from aiohttp.test_utils import TestClient, TestServer

from neo_async.config import Config
from neo_async.server import app as app_module
from neo_async.server import create_app
from neo_async.server.state import STATE
from tests.server_fixtures import REPO_ROOT, ServerProcess, http

CONFIG = Config().override(device_threads=1, device_kv_tokens=4096)
COMPLETION = {"prompt": "Hi", "max_tokens": 2, "ignore_eos": True}


def _error(status: int, body: bytes | str) -> dict:
    assert status == 503
    error = json.loads(body)["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["type"] == "server_error"
    return error


async def test_a_failed_load_answers_503_load_failed(monkeypatch):
    def failing_build(config: Config) -> None:
        raise ValueError("weights are corrupt")

    monkeypatch.setattr(app_module, "build_engine", failing_build)
    app = create_app(CONFIG)
    async with TestClient(TestServer(app)) as client:
        await asyncio.wait([app[STATE].loading])
        for response in (await client.get("/health"), await client.post("/v1/completions", json=COMPLETION)):
            error = _error(response.status, await response.text())
            assert error["code"] == "model_load_failed" and "weights are corrupt" in error["message"]


@pytest.mark.slow
@pytest.mark.timeout(300)
async def test_routes_answer_503_loading_until_the_engine_is_ready(monkeypatch):
    release = threading.Event()
    real_build = app_module.build_engine

    def held_build(config: Config):
        assert release.wait(120)
        return real_build(config)

    monkeypatch.setattr(app_module, "build_engine", held_build)
    async with TestClient(TestServer(create_app(CONFIG))) as client:
        response = await client.get("/health")
        error = _error(response.status, await response.text())
        assert error["message"] == "Loading model" and error["code"] == "model_loading"
        for response in (await client.post("/v1/completions", json=COMPLETION), await client.get("/v1/models")):
            assert _error(response.status, await response.text())["code"] == "model_loading"
        release.set()
        deadline = time.monotonic() + 120
        while (response := await client.get("/health")).status != 200 and time.monotonic() < deadline:
            assert response.status == 503
            await asyncio.sleep(0.05)
        assert await response.json() == {"status": "ok"}
        response = await client.post("/v1/completions", json=COMPLETION)
        assert response.status == 200 and (await response.json())["usage"]["completion_tokens"] == 2


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_serve_answers_503_while_loading_then_200(tmp_path):
    server = ServerProcess(tmp_path / "server.log", wait_ready=False)
    try:
        status, _, body = http("GET", server.base_url + "/health")
        assert _error(status, body)["message"] == "Loading model"
        status, _, body = http("POST", server.base_url + "/v1/completions", COMPLETION)
        assert _error(status, body)["code"] == "model_loading"
        server.wait_event("server_ready")
        assert http("GET", server.base_url + "/health")[0] == 200
        status, _, body = http("POST", server.base_url + "/v1/completions", COMPLETION)
        assert status == 200 and json.loads(body)["usage"]["completion_tokens"] == 2
        names = [e["event"] for e in server.events()]
        assert names.index("server_listening") < names.index("engine_attached") < names.index("server_ready")
    finally:
        assert server.stop() == 0


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_missing_model_path_exits_2_with_the_path_before_listening(tmp_path):
    missing = tmp_path / "nope.gguf"
    cmd = [sys.executable, "-m", "neo_async", "serve", "--port", "0", "--model", str(missing)]
    done = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "does not exist" in done.stderr and str(missing) in done.stderr
    assert "server_listening" not in done.stderr


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_unloadable_model_exits_1_with_the_reason(tmp_path):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF\x03\x00\x00\x00 truncated")
    server = ServerProcess(tmp_path / "server.log", "--model", str(bad), wait_ready=False)
    assert server.wait(180) == 1
    events = {e["event"]: e for e in server.events()}
    assert "server_ready" not in events
    assert "not a well-formed GGUF file" in events["startup_failed"]["error"]
    assert events["server_stopped"]["exit_code"] == 1


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_sigterm_while_loading_exits_0(tmp_path):
    server = ServerProcess(tmp_path / "server.log", wait_ready=False)
    server.send_signal(signal.SIGTERM)
    assert server.wait(120) == 0
    names = [e["event"] for e in server.events()]
    assert "server_stopped" in names and "server_ready" not in names
