"""The body shared by both generation routes: admit, submit, answer (JSON or SSE), clean up, log.

A route supplies `prepare` (body bytes -> Prepared: engine inputs and a Formatter); this
module owns everything that is the same for completions and chat:
- refusal while draining, error mapping at submission, the in-flight registry;
- the non-streaming answer (all choices, usage) and the SSE stream (chunks, optional usage
  chunk, error event on failure after the start, `[DONE]`);
- abort of every unfinished engine request on any early exit (client gone, cancellation,
  failure), and one `request_finished` log line per HTTP request.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from contextlib import aclosing
from dataclasses import dataclass
from typing import Protocol

import structlog
from aiohttp import web

from neo_async.errors import EngineDeadError, EngineOverloadedError
from neo_async.outputs import FinishReason, RequestDelta
from neo_async.sampling_params import SamplingParams
from neo_async.server import sse
from neo_async.server.errors import (
    SERVER_ERROR,
    APIError,
    from_engine_error,
    internal_error,
    shutting_down,
)
from neo_async.server.generation import Choice, Generation
from neo_async.server.openai_schema import Usage
from neo_async.server.params import PARAM_NAMES
from neo_async.server.state import AppState

log = structlog.get_logger("neo_async.server")

STATUS_CLIENT_GONE = 499  # logged only: the client closed the connection first
# What an engine iterator may raise after submission (e.g. the loop died, or the queue
# filled up between `generate()` and the loop taking the request in).
ENGINE_STREAM_ERRORS = (EngineDeadError, EngineOverloadedError, ValueError)


class Formatter(Protocol):
    """Encodes one endpoint's responses (completions or chat) as JSON bytes."""

    def stream_start(self, choices: list[Choice]) -> list[bytes]: ...

    def chunk(self, choice: Choice, delta: RequestDelta) -> bytes | None: ...

    def usage_chunk(self, usage: Usage) -> bytes: ...

    def response(self, choices: list[Choice], usage: Usage) -> bytes: ...


@dataclass
class Prepared:
    """A validated request, ready to submit."""

    specs: list[tuple[list[int], SamplingParams]]  # one per choice, in choice order
    num_prompt_tokens: int  # usage: each distinct prompt counted once
    stream: bool
    include_usage: bool
    formatter: Formatter
    user: str | None = None


Prepare = Callable[[bytes, AppState, str], Prepared]


def finish_reason_text(reason: FinishReason | None) -> str | None:
    """OpenAI's finish_reason; an abort is reported as an error, never as a reason."""
    return None if reason is None or reason is FinishReason.ABORT else reason.value


async def handle_generation(request: web.Request, state: AppState, prepare: Prepare, endpoint: str, id_prefix: str) -> web.StreamResponse:
    arrival = time.monotonic()
    request_id = f"{id_prefix}-{uuid.uuid4().hex}"  # unique: engine request ids derive from it
    record: dict[str, object] = {"request_id": request_id, "endpoint": endpoint}
    if "X-Request-Id" in request.headers:
        record["client_request_id"] = request.headers["X-Request-Id"]
    status = 500
    generation: Generation | None = None
    try:
        if state.is_draining:
            raise shutting_down()
        engine, metrics = state.engine, state.metrics
        if engine is None or metrics is None:
            raise APIError(503, "the engine is not ready", type=SERVER_ERROR, code="engine_dead")
        prepared = prepare(await request.read(), state, request_id)
        record.update(stream=prepared.stream, num_choices=len(prepared.specs), num_prompt_tokens=prepared.num_prompt_tokens)
        if prepared.user:
            record["user"] = prepared.user
        generation = Generation(engine, metrics, request_id, arrival)
        state.track(generation)
        try:
            generation.submit(prepared.specs)
        except Exception as exc:
            raise _map_engine_error(exc) from None
        if prepared.stream:
            response, status = await _stream(request, state, generation, prepared)
            return response
        response = await _collect(state, generation, prepared)
        status = 200
        return response
    except APIError as err:
        status = err.status
        record["error"] = err.code
        if state.metrics is not None:
            state.metrics.on_rejected(err.code)
        raise
    except web.HTTPException as exc:
        status = exc.status
        raise
    except asyncio.CancelledError:
        status = STATUS_CLIENT_GONE
        raise
    finally:
        try:
            if generation is not None:
                await generation.close()
        finally:
            if generation is not None:
                state.untrack(generation)
                record.update(
                    num_output_tokens=generation.num_output_tokens,
                    finish_reasons=[c.finish_reason.value if c.finish_reason else None for c in generation.choices],
                    ttft_s=_round(generation.first_token_s),
                )
            log.info("request_finished", status=status, e2e_s=_round(time.monotonic() - arrival), **record)


def _round(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds, 4)


def _map_engine_error(exc: Exception) -> APIError:
    err = from_engine_error(exc, PARAM_NAMES)
    if err.status == 500:
        log.error("engine_call_failed", error=repr(exc), exc_info=exc)
    return err


def _usage(generation: Generation, prepared: Prepared) -> Usage:
    completion = generation.num_output_tokens
    return Usage(prompt_tokens=prepared.num_prompt_tokens, completion_tokens=completion, total_tokens=prepared.num_prompt_tokens + completion)


def _abort_error(state: AppState, generation: Generation) -> APIError | None:
    if not any(c.finish_reason is FinishReason.ABORT for c in generation.choices):
        return None
    if generation.is_aborted_by_server or state.is_draining:
        return shutting_down("the request was aborted: the server is shutting down")
    return APIError(503, "the request was aborted by the engine", type=SERVER_ERROR, code="aborted")


async def _collect(state: AppState, generation: Generation, prepared: Prepared) -> web.Response:
    try:
        async with aclosing(generation.stream()) as deltas:
            async for _ in deltas:
                pass
    except ENGINE_STREAM_ERRORS as exc:
        raise _map_engine_error(exc) from None
    err = _abort_error(state, generation)
    if err is not None:
        raise err
    body = prepared.formatter.response(generation.choices, _usage(generation, prepared))
    return web.Response(body=body, content_type="application/json", headers={"X-Request-Id": generation.request_id})


async def _stream(request: web.Request, state: AppState, generation: Generation, prepared: Prepared) -> tuple[web.StreamResponse, int]:
    """Send the SSE stream; returns the response and the status to log."""
    response = await sse.open_stream(request, {"X-Request-Id": generation.request_id})
    formatter = prepared.formatter
    err: APIError | None = None
    try:
        for payload in formatter.stream_start(generation.choices):
            await response.write(sse.event(payload))
        async with aclosing(generation.stream()) as deltas:
            async for choice, delta in deltas:
                payload = formatter.chunk(choice, delta)
                if payload is not None:
                    await response.write(sse.event(payload))
        err = _abort_error(state, generation)
        if err is None and prepared.include_usage:
            await response.write(sse.event(formatter.usage_chunk(_usage(generation, prepared))))
    except ConnectionError:  # the client went away; close() aborts the rest
        return response, STATUS_CLIENT_GONE
    except ENGINE_STREAM_ERRORS as exc:
        err = _map_engine_error(exc)
    except Exception as exc:  # a bug after the start: report it in-band, keep serving
        log.exception("stream_failed", request_id=generation.request_id, error=repr(exc))
        err = internal_error(exc)
    try:
        if err is not None:
            await response.write(sse.event(err.body()))
        await response.write(sse.DONE)
        await response.write_eof()
    except ConnectionError:
        return response, STATUS_CLIENT_GONE
    return response, 200 if err is None else err.status
