"""structlog configuration shared by every entry point: one event name per line, console or JSON.

`configure_logging` is called once by an entry point (`serve`, `generate`, the benchmarks), never by
library code such as `create_app`, which stays free of process-wide side effects; library code
only calls `structlog.get_logger(...)`.
"""

from __future__ import annotations

import logging
import sys

import structlog

LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


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
