"""Error mapping and the error middleware on a bare app (no model needed)."""

from __future__ import annotations

import json

import pytest
from aiohttp import web

from neo_async.errors import EngineDeadError, EngineOverloadedError
from neo_async.server.errors import APIError, error_middleware, from_engine_error
from neo_async.server.params import PARAM_NAMES


def test_overload_is_503_with_retry_after_rounded_up():
    err = from_engine_error(EngineOverloadedError("queue full", retry_after_s=2.2))
    assert (err.status, err.type, err.code) == (503, "server_error", "engine_overloaded")
    assert err.headers == {"Retry-After": "3"}
    assert from_engine_error(EngineOverloadedError("queue full", retry_after_s=0.1)).headers["Retry-After"] == "1"


def test_dead_engine_is_503_without_retry_after():
    err = from_engine_error(EngineDeadError("boom"))
    assert (err.status, err.code, err.headers) == (503, "engine_dead", {})


@pytest.mark.parametrize(
    ("message", "param", "code"),
    [
        ("temperature must be in [0, 100], got -1.0", "temperature", "invalid_value"),
        ("logprobs must be in [0, 20], got 30", "logprobs", "invalid_value"),
        ("prompt has 9000 tokens; this model's context is 8192 tokens", "prompt", "context_length_exceeded"),
        ("request needs up to 99999 tokens of KV cache", None, "invalid_value"),
    ],
)
def test_value_errors_are_400_naming_known_fields(message, param, code):
    err = from_engine_error(ValueError(message), PARAM_NAMES)
    assert (err.status, err.param, err.code) == (400, param, code)


def test_unexpected_errors_are_500():
    assert from_engine_error(KeyError("x")).status == 500


def test_body_shape():
    body = json.loads(APIError(404, "no such model", param="model", code="model_not_found").body())
    assert body == {"error": {"message": "no such model", "type": "invalid_request_error", "param": "model", "code": "model_not_found"}}


@pytest.fixture
async def client(aiohttp_client):
    async def api_error(request: web.Request) -> web.Response:
        raise APIError(400, "bad", param="x", code="invalid_value")

    async def bug(request: web.Request) -> web.Response:
        raise KeyError("oops")

    async def echo(request: web.Request) -> web.Response:
        return web.Response(body=await request.read())

    app = web.Application(middlewares=[error_middleware], client_max_size=64)
    app.router.add_get("/api-error", api_error)
    app.router.add_get("/bug", bug)
    app.router.add_post("/echo", echo)
    return await aiohttp_client(app)


@pytest.mark.parametrize(
    ("method", "path", "data", "status", "code"),
    [
        ("GET", "/api-error", None, 400, "invalid_value"),
        ("GET", "/bug", None, 500, "internal_error"),
        ("GET", "/missing", None, 404, "not_found"),
        ("GET", "/echo", None, 405, "method_not_allowed"),
        ("POST", "/echo", b"x" * 1000, 413, "request_too_large"),
    ],
)
async def test_middleware_answers_every_failure_with_an_error_body(client, method, path, data, status, code):
    response = await client.request(method, path, data=data)
    assert response.status == status
    error = (await response.json())["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["code"] == code
    assert (await client.post("/echo", data=b"ok")).status == 200  # still serving
