"""structlog configuration shared by every entry point: one event name per line, console or JSON.

`configure_logging` is called once by an entry point (`serve`, `generate`, the benchmarks), never by
library code such as `create_app`; library code only calls `structlog.get_logger(...)`.

Contract of the library default (`use_library_default`, applied when the package is imported and
structlog is not configured yet): events go through the standard library's `logging` under the
logger's name (`neo_async.engine`, ...), so nothing below WARNING is shown unless the caller
configures `logging` (`logging.basicConfig(level=logging.INFO)`) or structlog itself.
"""

from __future__ import annotations

import logging
import sys

import structlog

LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


def use_library_default() -> None:
    """Route structlog through stdlib logging, filtered by its levels, unless structlog is configured."""
    if structlog.is_configured():
        return
    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            structlog.contextvars.merge_contextvars,
            structlog.processors.format_exc_info,
            structlog.processors.KeyValueRenderer(key_order=["event"]),
        ],
        wrapper_class=structlog.stdlib.BoundLogger,
        logger_factory=structlog.stdlib.LoggerFactory(),
        cache_logger_on_first_use=False,
    )


def configure_logging(log_format: str = "console", level: str = "info") -> None:
    """Route structlog to stderr as JSON lines (`json`) or human-readable lines (`console`)."""
    if level not in LEVELS:
        raise ValueError(f"log_level must be one of {sorted(LEVELS)}, got {level!r}")
    renderer: structlog.typing.Processor
    if log_format == "json":
        renderer = structlog.processors.JSONRenderer()
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.dict_tracebacks if log_format == "json" else structlog.dev.set_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(LEVELS[level]),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
    # aiohttp and asyncio log through the standard library: keep their warnings, on stderr.
    logging.basicConfig(level=max(LEVELS[level], logging.WARNING), stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
