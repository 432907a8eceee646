"""Server-Sent Events framing for OpenAI streams.

Each event is one `data:` line holding compact JSON (msgspec never emits a raw newline, so
one line is always enough), then a blank line. A stream ends with `data: [DONE]`.
"""

from __future__ import annotations

import msgspec
from aiohttp import web

DONE = b"data: [DONE]\n\n"

SSE_HEADERS = {
    "Content-Type": "text/event-stream; charset=utf-8",
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",  # proxies: do not buffer the stream
}


def event(payload: msgspec.Struct | bytes) -> bytes:
    """One SSE event carrying `payload` (a struct, or JSON already encoded)."""
    data = payload if isinstance(payload, bytes) else msgspec.json.encode(payload)
    return b"data: " + data + b"\n\n"


async def open_stream(request: web.Request, headers: dict[str, str] | None = None) -> web.StreamResponse:
    """Send the 200 status and SSE headers; after this, failures travel as error events."""
    response = web.StreamResponse(status=200, headers={**SSE_HEADERS, **(headers or {})})
    await response.prepare(request)
    return response
