"""`neo-async serve`: run the OpenAI-compatible server until SIGTERM or SIGINT.

The engine loads before the port opens, so a connection accepted is a request served.
First signal: stop accepting, let requests in flight finish within `--shutdown-grace-s`,
abort the rest, exit 0. A second signal aborts everything in flight at once.
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
from neo_async.logging_setup import configure_logging
from neo_async.server.state import STATE

log = structlog.get_logger("neo_async.server")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="neo-async serve",
        description="Serve a model over an OpenAI-compatible HTTP API (the embedded SmolLM2-135M when no --model).",
    )
    add_config_flags(parser)  # --model, --host, --port, --log-format, ... from the config fields
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    try:
        config = config_from_args(args)
        configure_logging(config.server.log_format, config.server.log_level)
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
    try:
        await runner.setup()  # loads the model and starts the engine loop
    except Exception as exc:
        log.error("startup_failed", error=repr(exc), exc_info=exc)
        await runner.cleanup()
        return 1
    site = web.TCPSite(runner, config.server.host, config.server.port)
    try:
        await site.start()
    except OSError as exc:
        log.error("listen_failed", host=config.server.host, port=config.server.port, error=str(exc))
        await runner.cleanup()
        return 1
    host, port = runner.addresses[0][:2]
    engine = app[STATE].engine
    log.info("server_started", host=host, port=port, model=engine.model_name if engine else None)
    await stop.wait()
    await runner.cleanup()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.remove_signal_handler(sig)
    log.info("server_stopped")
    return 0
