"""`neo-async serve`: run the OpenAI-compatible server until SIGTERM or SIGINT.

The port opens first (in well under a second) and the engine loads in the background:
until it is ready every route answers 503 (`/health` included, 200 once ready), and a
failure to load exits with status 1 and a `startup_failed` line. First signal: stop
accepting, let requests in flight finish within `--shutdown-grace-s`, abort the rest,
exit 0. A second signal aborts everything in flight at once.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from collections.abc import Callable

import structlog
from aiohttp import web

from neo_async.config import Config, add_config_flags, config_from_args
from neo_async.server.app import ABORT_FLUSH_S, create_app
from neo_async.server import probe_filter
from neo_async.server.replicas import add_data_parallel_flags, router_settings, serve_replicas
from neo_async.logging_setup import configure_logging
from neo_async.model.registry import resolve_model_path
from neo_async.server.state import STATE

log = structlog.get_logger("neo_async.server")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="neo-async serve",
        description="Serve a model over an OpenAI-compatible HTTP API (the embedded SmolLM2-135M when no --model).",
    )
    add_config_flags(parser)  # --model, --host, --port, --log-format, ... from the config fields
    add_data_parallel_flags(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    try:
        config = config_from_args(args)
        configure_logging(config.server.log_format, config.server.log_level)
        probe_filter.install()
        resolve_model_path(config.model.model)  # a missing file fails here, before the port opens
        if args.data_parallel_size != 1:
            return serve_replicas(config, args.data_parallel_size, router_settings(args))
    except (ValueError, OSError) as exc:
        print(f"neo-async serve: {exc}", file=sys.stderr)
        return 2
    from prometheus_client import disable_created_metrics

    disable_created_metrics()  # process-wide: drop the *_created series, as vLLM does
    with asyncio.Runner(loop_factory=_loop_factory()) as runner:
        return runner.run(serve(config))


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


async def serve(config: Config) -> int:
    """Serve until a signal; returns the process exit code."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    app = create_app(config)
    num_signals = 0
    forced: set[asyncio.Task[int]] = set()

    def on_signal(name: str) -> None:
        nonlocal num_signals
        num_signals += 1
        if num_signals == 1:
            log.info("shutdown_requested", signal=name)
            stop.set()
        else:
            log.warning("shutdown_forced", signal=name)
            task = loop.create_task(app[STATE].abort_all())
            forced.add(task)
            task.add_done_callback(forced.discard)

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig.name)

    runner = web.AppRunner(app, handler_cancellation=True, access_log=None, shutdown_timeout=ABORT_FLUSH_S)
    await runner.setup()  # starts loading the engine in the background
    site = web.TCPSite(runner, config.server.host, config.server.port)
    try:
        await site.start()
    except OSError as exc:
        log.error("listen_failed", host=config.server.host, port=config.server.port, error=str(exc))
        await runner.cleanup()
        return 1
    host, port = runner.addresses[0][:2]
    log.info("server_listening", host=host, port=port)
    code = await _serve_until_stopped(app, stop, host, port)
    await runner.cleanup()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.remove_signal_handler(sig)
    log.info("server_stopped", exit_code=code)
    return code


async def _serve_until_stopped(app: web.Application, stop: asyncio.Event, host: str, port: int) -> int:
    """0 once `stop` is set; 1 as soon as the engine fails to load."""
    loading = app[STATE].loading
    assert loading is not None
    stopped = asyncio.create_task(stop.wait())
    await asyncio.wait([loading, stopped], return_when=asyncio.FIRST_COMPLETED)
    if loading.done():
        exc = loading.exception()
        if exc is not None:
            is_user_error = isinstance(exc, (OSError, ValueError))  # a bad file or setting: no traceback
            log.error("startup_failed", error=f"{type(exc).__name__}: {exc}", exc_info=None if is_user_error else exc)
            stopped.cancel()
            return 1
        engine = app[STATE].engine
        assert engine is not None
        log.info("server_ready", host=host, port=port, model=engine.model_name)
    await stopped
    return 0
