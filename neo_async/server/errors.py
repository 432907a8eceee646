"""OpenAI-style error bodies, and the HTTP status each failure gets.

Every error leaves the server as `{"error": {"message", "type", "param", "code"}}`:

| failure                                              | status | type                  | code                       |
|------------------------------------------------------|--------|-----------------------|----------------------------|
| body is not JSON                                     | 400    | invalid_request_error | invalid_json               |
| body is not an object, a field has the wrong type    | 400    | invalid_request_error | invalid_type               |
| a required field is missing                          | 400    | invalid_request_error | missing_required_parameter |
| a value out of range (max_tokens < 1, n > max_n, ...) | 400    | invalid_request_error | invalid_value              |
| prompt (+ max_tokens) longer than the model's context | 400    | invalid_request_error | context_length_exceeded    |
| unknown model                                        | 404    | invalid_request_error | model_not_found            |
| unknown path                                         | 404    | invalid_request_error | not_found                  |
| wrong method                                         | 405    | invalid_request_error | method_not_allowed         |
| body larger than the limit                           | 413    | invalid_request_error | request_too_large          |
| queue full (EngineOverloadedError)                   | 503    | server_error          | engine_overloaded (+ Retry-After) |
| server draining for shutdown, request aborted by it  | 503    | server_error          | shutting_down              |
| engine loop dead (EngineDeadError)                   | 503    | server_error          | engine_dead                |
| any route while the model loads ("Loading model")    | 503    | server_error          | model_loading              |
| any route after the model failed to load             | 503    | server_error          | model_load_failed          |
| anything unexpected (a bug)                          | 500    | server_error          | internal_error             |

After a stream has started the status is already 200: the same body is sent as one SSE
event (`data: {"error": ...}`), followed by `data: [DONE]`.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable

import msgspec
import structlog
from aiohttp import web

from neo_async.errors import EngineDeadError, EngineOverloadedError

log = structlog.get_logger("neo_async.server")

INVALID_REQUEST = "invalid_request_error"
SERVER_ERROR = "server_error"


class ErrorDetail(msgspec.Struct):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorBody(msgspec.Struct):
    error: ErrorDetail


class APIError(Exception):
    """A failure with its HTTP status and OpenAI error fields; raised anywhere in a handler."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = INVALID_REQUEST,  # the wire name (shadows the builtin here only)
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code
        self.headers = headers or {}

    def body(self) -> bytes:
        return msgspec.json.encode(ErrorBody(ErrorDetail(self.message, self.type, self.param, self.code)))

    def response(self) -> web.Response:
        return web.Response(
            status=self.status, body=self.body(), content_type="application/json", headers=self.headers
        )


def missing_required(param: str) -> APIError:
    return APIError(400, f"missing required field: {param}", param=param, code="missing_required_parameter")


def invalid_type(message: str, param: str) -> APIError:
    return APIError(400, message, param=param, code="invalid_type")


def invalid_value(message: str, param: str | None) -> APIError:
    return APIError(400, message, param=param, code="invalid_value")


def context_exceeded(message: str, param: str) -> APIError:
    return APIError(400, message, param=param, code="context_length_exceeded")


def shutting_down(message: str = "the server is shutting down") -> APIError:
    return APIError(503, message, type=SERVER_ERROR, code="shutting_down")


def from_engine_error(exc: Exception, param_names: frozenset[str] = frozenset()) -> APIError:
    """Map what `AsyncEngine.generate` raises at submission to an APIError.

    A ValueError's param is its first word when that names a request field (SamplingParams
    messages start with the field name); anything else is treated as a bug (500).
    """
    if isinstance(exc, APIError):
        return exc
    if isinstance(exc, EngineOverloadedError):
        retry_after = max(1, math.ceil(exc.retry_after_s))
        return APIError(
            503,
            str(exc) or "the server is overloaded, retry later",
            type=SERVER_ERROR,
            code="engine_overloaded",
            headers={"Retry-After": str(retry_after)},
        )
    if isinstance(exc, EngineDeadError):
        return APIError(503, f"the engine is not running: {exc}", type=SERVER_ERROR, code="engine_dead")
    if isinstance(exc, ValueError):
        message = str(exc)
        first = message.split(" ", 1)[0]
        param = first if first in param_names else None
        if "context" in message or "max_model_len" in message:
            return APIError(400, message, param=param, code="context_length_exceeded")
        return invalid_value(message, param)
    return internal_error(exc)


def internal_error(exc: BaseException) -> APIError:
    return APIError(500, f"internal error: {type(exc).__name__}", type=SERVER_ERROR, code="internal_error")


_HTTP_CODES = {404: "not_found", 405: "method_not_allowed", 413: "request_too_large"}


@web.middleware
async def error_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Turn every failure into an OpenAI error body; no exception escapes to aiohttp but cancellation."""
    try:
        return await handler(request)
    except APIError as err:
        return err.response()
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        message = exc.text if exc.text and not exc.text.startswith(f"{exc.status}:") else exc.reason
        if exc.status in (404, 405):
            message = f"{exc.reason}: {request.method} {request.path}"
        err = APIError(
            exc.status,
            message,
            code=_HTTP_CODES.get(exc.status),
            headers={k: v for k, v in exc.headers.items() if k.lower() == "allow"},
        )
        return err.response()
    except Exception as exc:  # a bug: answer 500, keep serving
        log.exception("handler_failed", path=request.path, error=repr(exc))
        return internal_error(exc).response()
