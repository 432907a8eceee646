"""Loading the engine while the port already answers.

Until the engine is ready every route answers 503 with an OpenAI error body, as llama.cpp's
server does: `Loading model` (code `model_loading`) while it loads, and `model_load_failed`
if loading failed (`serve` then exits non-zero). Importing torch and building the engine
take seconds, so they run on a thread of their own, never on the event loop.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, TypeVar

import structlog
from aiohttp import web

from neo_async.config import Config
from neo_async.server.errors import SERVER_ERROR, APIError
from neo_async.server.state import STATE, AppState

if TYPE_CHECKING:
    from neo_async.async_engine import AsyncEngine

log = structlog.get_logger("neo_async.server")

T = TypeVar("T")


def build_engine(config: Config) -> AsyncEngine:
    """Import torch and build the engine; blocking (seconds). Each phase is logged at debug
    level (the model's own phases and the host pools' are logged where they happen)."""
    started = time.perf_counter()
    threading.Thread(target=_read_ahead, args=(config,), name="read-ahead", daemon=True).start()
    # NOTE: torch's CPU allocator then puts allocations of 2 MiB and more in transparent huge
    # pages (it reads this once, at its first allocation): first touch of the weights and of
    # their prepacked copies ran 3-5x faster here (a 7B model writes ~27 GB of fresh memory).
    os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")
    from neo_async.async_engine import AsyncEngine  # torch: imported only when serving

    imported = time.perf_counter()
    log.debug("engine_imported", seconds=round(imported - started, 3))
    engine = AsyncEngine.from_config(config)
    log.debug("engine_built", seconds=round(time.perf_counter() - imported, 3))
    return engine


def _read_ahead(config: Config) -> None:
    """Start the kernel reading a model file into the page cache while torch imports (a file
    not read yet loads at disk speed otherwise, after the import). Best effort."""
    from neo_async.model.registry import resolve_model_path

    try:
        path = resolve_model_path(config.model.model)
        if path.is_file():
            with open(path, "rb") as f:
                os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_WILLNEED)
    except Exception as exc:  # noqa: BLE001 - best effort: the loader reports real failures
        log.debug("model_read_ahead_failed", error=str(exc))


def in_daemon_thread(fn: Callable[[], T], name: str) -> asyncio.Future[T]:
    """`fn()` on a new daemon thread; the future gets its result or exception.

    Cancelling the future does not stop `fn`, but a daemon thread never delays the process's
    exit (a signal during a long load exits at once).
    """
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def settle(result: T | None, exc: BaseException | None) -> None:
        if future.done():  # cancelled meanwhile
            return
        if exc is None:
            future.set_result(result)  # type: ignore[arg-type]
        else:
            future.set_exception(exc)

    def run() -> None:
        result, exc = None, None
        try:
            result = fn()
        except BaseException as err:  # noqa: BLE001 - handed to the awaiting task
            exc = err
        try:
            loop.call_soon_threadsafe(settle, result, exc)
        except RuntimeError:  # the loop closed meanwhile: nobody waits for it
            pass

    threading.Thread(target=run, name=name, daemon=True).start()
    return future


def not_ready_error(state: AppState) -> APIError:
    loading = state.loading
    failure = loading.exception() if loading is not None and loading.done() and not loading.cancelled() else None
    if failure is not None:
        return APIError(503, f"the model failed to load: {failure}", type=SERVER_ERROR, code="model_load_failed")
    return APIError(503, "Loading model", type=SERVER_ERROR, code="model_loading")


@web.middleware
async def readiness_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    state = request.app[STATE]
    if not state.is_ready:
        return not_ready_error(state).response()
    return await handler(request)
