"""A scripted OpenAI-compatible streaming server, for testing the load generator itself.

A plan function maps each request's JSON body to a `Reply` (status, delays, token count),
so the timings a test expects are known exactly: the first text chunk leaves ttft_s after
the request arrives and token k (0-based) at ttft_s + k * itl_s. The server also notes
each request's arrival and the most requests it held at once.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from aiohttp import web

MODEL_ID = "fake-model"


@dataclass(frozen=True)
class Reply:
    status: int = 200
    ttft_s: float = 0.0
    itl_s: float = 0.0
    num_tokens: int | None = None  # None: max_tokens
    error_after: int | None = None  # tokens sent before an in-stream error chunk
    is_done_sent: bool = True


Plan = Callable[[dict], Reply]


class FakeServer:
    def __init__(self, plan: Plan | None = None) -> None:
        self.plan: Plan = plan or (lambda body: Reply())
        self.bodies: list[dict] = []
        self.arrivals: list[float] = []  # time.perf_counter() at each request's arrival
        self.num_in_flight = 0
        self.max_in_flight = 0

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v1/completions", self.completions)
        app.router.add_post("/v1/chat/completions", self.completions)
        app.router.add_get("/v1/models", self.models)
        app.router.add_get("/health", self.health)
        return app

    async def health(self, request: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def models(self, request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": MODEL_ID, "object": "model"}]})

    async def completions(self, request: web.Request) -> web.StreamResponse:
        arrival = time.perf_counter()
        body = await request.json()
        self.bodies.append(body)
        self.arrivals.append(arrival)
        self.num_in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.num_in_flight)
        try:
            return await self._stream(request, body, arrival, self.plan(body))
        finally:
            self.num_in_flight -= 1

    async def _stream(self, request: web.Request, body: dict, arrival: float, reply: Reply) -> web.StreamResponse:
        if reply.status != 200:
            return web.json_response({"error": {"message": "scripted failure"}}, status=reply.status)
        is_chat = request.path.endswith("chat/completions")
        num_tokens = reply.num_tokens if reply.num_tokens is not None else int(body["max_tokens"])
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)

        async def event(payload: dict | str) -> None:
            data = payload if isinstance(payload, str) else json.dumps(payload)
            await response.write(f"data: {data}\n\n".encode())

        if is_chat:
            await event(chunk(is_chat, None, "", role="assistant"))
        for k in range(num_tokens):
            if reply.error_after is not None and k == reply.error_after:
                await event({"error": {"message": "scripted stream error", "code": 500}})
                return response
            delay = arrival + reply.ttft_s + k * reply.itl_s - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            finish = "length" if k == num_tokens - 1 else None
            await event(chunk(is_chat, finish, f" t{k}"))
        if (body.get("stream_options") or {}).get("include_usage"):
            prompt = body.get("prompt", "")
            num_prompt = len(prompt) if isinstance(prompt, list) else len(str(prompt).split())
            usage = {
                "prompt_tokens": num_prompt,
                "completion_tokens": num_tokens,
                "total_tokens": num_prompt + num_tokens,
            }
            await event({"id": "fake", "object": "chunk", "model": MODEL_ID, "choices": [], "usage": usage})
        if reply.is_done_sent:
            await event("[DONE]")
        await response.write_eof()
        return response


def chunk(is_chat: bool, finish_reason: str | None, text: str, role: str | None = None) -> dict:
    if is_chat:
        delta = {"content": text} if role is None else {"role": role, "content": text}
        choice = {"index": 0, "delta": delta, "finish_reason": finish_reason}
        kind = "chat.completion.chunk"
    else:
        choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish_reason}
        kind = "text_completion"
    return {"id": "fake", "object": kind, "created": 0, "model": MODEL_ID, "choices": [choice]}


class ThreadedServer:
    """Runs a FakeServer on 127.0.0.1 in a thread with its own event loop (for CLI tests)."""

    def __init__(self, server: FakeServer) -> None:
        self.server = server
        self.loop = asyncio.new_event_loop()
        self.port: int | None = None
        self._runner: web.AppRunner | None = None
        self._thread: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> ThreadedServer:
        started = threading.Event()

        async def start() -> None:
            self._runner = web.AppRunner(self.server.app())
            await self._runner.setup()
            site = web.TCPSite(self._runner, "127.0.0.1", 0)
            await site.start()
            self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
            started.set()

        def main() -> None:
            asyncio.set_event_loop(self.loop)
            self.loop.run_until_complete(start())
            self.loop.run_forever()

        self._thread = threading.Thread(target=main, daemon=True)
        self._thread.start()
        if not started.wait(10):
            raise RuntimeError("fake server did not start")
        return self

    def __exit__(self, *exc) -> None:
        assert self._runner is not None and self._thread is not None
        asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()
