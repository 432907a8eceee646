"""Quiets one harmless error: sglang-router registers a worker by probing it over HTTP and gRPC
at once, and the gRPC probe's HTTP/2 preface ("PRI * HTTP/2.0") makes aiohttp log a parse error
with a traceback. The probe gets its 400 as before; only the log line goes."""

from __future__ import annotations

import logging

from aiohttp.http_exceptions import BadHttpMessage


class Http2ProbeFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not (isinstance(exc, BadHttpMessage) and "PRI/Upgrade" in str(exc))


def install() -> None:
    logger = logging.getLogger("aiohttp.server")
    if not any(isinstance(f, Http2ProbeFilter) for f in logger.filters):
        logger.addFilter(Http2ProbeFilter())
