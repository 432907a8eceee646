"""The aiohttp application: a pure factory, routes, and the engine's lifecycle.

Lifecycle (driven by aiohttp's runner):
- startup: the engine context starts a given engine's loop and attaches the metrics at once;
  without one, a background task builds the engine from config (on its own thread: importing
  torch and loading take seconds) and then does the same, while routes answer 503 (startup.py);
- shutdown (`runner.cleanup()`): listening stops first; then `_drain` refuses new requests,
  lets those in flight finish within `server.shutdown_grace_s`, and aborts the rest;
- cleanup: the engine loop is stopped, if this app started it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import msgspec
import structlog
from aiohttp import web

from neo_async.config import Config
from neo_async.server.errors import error_middleware
from neo_async.server.metrics import CONTENT_TYPE, ServerMetrics
from neo_async.server.openai_schema import ModelCard, ModelList
from neo_async.server.routes_chat import create_chat_completion
from neo_async.server.routes_completions import create_completion
from neo_async.server.routes_load import add_load_routes
from neo_async.server.routes_tokenizer import detokenize, tokenize, tokenizer_info
from neo_async.server.startup import (
    build_engine,
    in_daemon_thread,
    readiness_middleware,
)
from neo_async.server.state import STATE, AppState

if TYPE_CHECKING:
    from neo_async.async_engine import AsyncEngine

log = structlog.get_logger("neo_async.server")

MAX_BODY_BYTES = 32 * 1024 * 1024
ABORT_FLUSH_S = 5.0  # after the grace period: time for aborted handlers to send their last bytes


def create_app(config: Config | None = None, engine: AsyncEngine | None = None) -> web.Application:
    """A new app serving `engine` (built from `config` in the background after startup when
    None). No side effects."""
    config = config or Config()
    app = web.Application(middlewares=[readiness_middleware, error_middleware], client_max_size=MAX_BODY_BYTES)
    app[STATE] = AppState(config=config, engine=engine)
    app.cleanup_ctx.append(_engine_context)
    app.on_shutdown.append(_drain)
    app.router.add_post("/v1/completions", create_completion)
    app.router.add_post("/v1/chat/completions", create_chat_completion)
    app.router.add_get("/v1/models", list_models)
    app.router.add_post("/tokenize", tokenize)
    app.router.add_post("/detokenize", detokenize)
    app.router.add_get("/tokenizer_info", tokenizer_info)
    app.router.add_get("/health", health)
    app.router.add_get("/metrics", metrics)
    add_load_routes(app)
    return app


async def _engine_context(app: web.Application) -> AsyncIterator[None]:
    state = app[STATE]
    started_here = False
    if state.engine is not None:
        started_here = await _attach_engine(state)
    else:
        state.loading = asyncio.get_running_loop().create_task(_load_engine(state), name="neo-engine-load")
    try:
        yield
    finally:
        if state.loading is not None:
            state.loading.cancel()  # no-op once done
            await asyncio.wait([state.loading])
            loaded = state.loading
            started_here = not loaded.cancelled() and loaded.exception() is None and loaded.result()
        if started_here:
            assert state.engine is not None
            await state.engine.stop()
            log.info("engine_stopped")


async def _load_engine(state: AppState) -> bool:
    state.engine = await in_daemon_thread(lambda: build_engine(state.config), "neo-engine-load")
    return await _attach_engine(state)


async def _attach_engine(state: AppState) -> bool:
    """Start the engine's loop unless it runs, attach the metrics, mark the app ready; returns
    whether the loop was started here (and so is stopped at cleanup)."""
    engine = state.engine
    assert engine is not None
    started_here = not engine.is_running
    if started_here:
        await engine.start()
    state.metrics = ServerMetrics(engine.model_name, engine.stats)
    engine.add_step_listener(state.metrics.on_step)
    state.is_ready = True
    log.info("engine_attached", model=engine.model_name, max_model_len=engine.max_model_len)
    return started_here


async def _drain(app: web.Application) -> None:
    state = app[STATE]
    state.is_draining = True
    grace_s = state.config.server.shutdown_grace_s
    log.info("draining", num_in_flight=len(state.in_flight), grace_s=grace_s)
    if await state.wait_idle(grace_s):
        return
    num_aborted = await state.abort_all()
    log.warning("shutdown_grace_expired", num_aborted=num_aborted)
    await state.wait_idle(ABORT_FLUSH_S)


async def list_models(request: web.Request) -> web.Response:
    engine = request.app[STATE].engine
    assert engine is not None
    card = ModelCard(
        id=engine.model_name,
        object="model",
        created=int(time.time()),
        owned_by="neo-async",
        root=engine.model_name,
        max_model_len=engine.max_model_len,
    )
    return web.Response(body=msgspec.json.encode(ModelList(object="list", data=[card])), content_type="application/json")


async def health(request: web.Request) -> web.Response:
    """200 while requests are accepted; 503 while loading (readiness_middleware), while
    draining, or once the engine loop died."""
    state = request.app[STATE]
    if state.is_draining:
        return web.json_response({"status": "draining"}, status=503)
    if state.engine is None or not state.engine.is_running:
        return web.json_response({"status": "engine_not_running"}, status=503)
    return web.json_response({"status": "ok"})


async def metrics(request: web.Request) -> web.Response:
    state = request.app[STATE]
    assert state.metrics is not None
    return web.Response(body=state.metrics.render(), headers={"Content-Type": CONTENT_TYPE})
