"""Requests lost on a kept-alive connection that the server had already closed.

A server may close an idle kept-alive connection at any moment (llama.cpp's does). A request
written onto one as it closes fails before any byte of a response arrives: "Can not write
request body", "Server disconnected", a reset. The server never answered it, and a completion
request changes no state on the server, so sending it again on a new connection is safe
(RFC 9112, section 9.3.1, as aiohttp does for idempotent methods). Such a request is a
reconnect, not a failed request; a failure on a new connection stays a failure.
"""

from __future__ import annotations

from types import SimpleNamespace

import aiohttp

# What aiohttp raises for a connection that died before the response (it retries idempotent
# methods on the same); ClientConnectorError (a failed connect) is never about a reused one.
_LOST = (aiohttp.ClientOSError, aiohttp.ServerDisconnectedError)


class ConnectionUse:
    """A request's `trace_request_ctx`: set when the request went out on a pooled connection."""

    def __init__(self) -> None:
        self.is_reused = False


async def _on_reuse(session: aiohttp.ClientSession, context: SimpleNamespace, params: object) -> None:
    if isinstance(context.trace_request_ctx, ConnectionUse):
        context.trace_request_ctx.is_reused = True


def trace_config() -> aiohttp.TraceConfig:
    """Marks each request's ConnectionUse when the session hands it a pooled connection."""
    config = aiohttp.TraceConfig()
    config.on_connection_reuseconn.append(_on_reuse)
    return config


def is_lost_on_closed_connection(error: BaseException, use: ConnectionUse) -> bool:
    """`error` was raised before the response started (the caller's contract), on a reused connection."""
    return use.is_reused and isinstance(error, _LOST) and not isinstance(error, aiohttp.ClientConnectorError)
