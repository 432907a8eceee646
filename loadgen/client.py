"""Streaming HTTP client for OpenAI-compatible servers: one request in, one record filled."""

from __future__ import annotations

import asyncio
import json
import os
import time
from dataclasses import dataclass, field

import aiohttp
import structlog

from loadgen import keepalive, sse
from loadgen.prompts import Prompt
from loadgen.records import RequestRecord

log = structlog.get_logger(__name__)

ENDPOINTS = ("/v1/completions", "/v1/chat/completions")
READ_BUFSIZE = 1 << 20  # bytes; a long final chunk must fit one line
MAX_ERROR_BODY = 500  # characters of an error response kept in the record


@dataclass(frozen=True)
class ClientConfig:
    base_url: str
    endpoint: str = "/v1/completions"
    model: str = ""
    ignore_eos: bool = False  # sent only when set: not every server knows the field
    temperature: float = 0.0
    request_timeout_s: float = 6 * 3600.0
    api_key: str | None = field(default_factory=lambda: os.environ.get("OPENAI_API_KEY"))
    extra_body: dict = field(default_factory=dict)  # merged into every request body

    @property
    def is_chat(self) -> bool:
        return self.endpoint.rstrip("/").endswith("chat/completions")

    @property
    def url(self) -> str:
        return self.base_url.rstrip("/") + "/" + self.endpoint.lstrip("/")

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}


def build_payload(config: ClientConfig, prompt: str | list[int], max_tokens: int) -> dict:
    body: dict = {
        "model": config.model,
        "max_tokens": max_tokens,
        "temperature": config.temperature,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    if config.is_chat:
        if not isinstance(prompt, str):
            raise ValueError("the chat endpoint takes text prompts only")
        body["messages"] = [{"role": "user", "content": prompt}]
    else:
        body["prompt"] = prompt
    if config.ignore_eos:
        body["ignore_eos"] = True
    body.update(config.extra_body)
    return body


def new_session(config: ClientConfig) -> aiohttp.ClientSession:
    """Connections are kept alive; `send` needs the keepalive trace to tell a reused one."""
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0),
        timeout=aiohttp.ClientTimeout(total=config.request_timeout_s),
        read_bufsize=READ_BUFSIZE,
        trace_configs=[keepalive.trace_config()],
    )


class _LostOnClosedConnection(Exception):
    """Raised from the failure of a request that no response had started for, on a reused connection."""


async def send(
    session: aiohttp.ClientSession, config: ClientConfig, prompt: Prompt, record: RequestRecord, run_start: float
) -> None:
    """Send one streaming request and fill `record` in place; never raises for a failed request.

    A request lost on a kept-alive connection that the server had closed (see keepalive) is sent
    once more on a new connection and counted in `record.num_reconnects`; times then run from
    that second send.
    """
    payload = build_payload(config, prompt.prompt, record.output_len)
    text_parts: list[str] = []
    record.is_sent = True
    try:
        try:
            await _stream(session, config, payload, record, run_start, text_parts)
        except _LostOnClosedConnection as lost:
            record.num_reconnects += 1
            log.debug("reconnect", request_id=record.request_id, error=str(lost.__cause__))
            async with new_session(config) as fresh:  # an empty pool: a new connection
                await _stream(fresh, config, payload, record, run_start, text_parts)
    except Exception as e:  # NOTE: any failure becomes the record's error; only cancellation propagates
        record.error = f"{type(e).__name__}: {e}"
    finally:
        record.generated_text = "".join(text_parts)
        if not record.success:
            log.debug("request_failed", request_id=record.request_id, error=record.error)


async def _stream(
    session: aiohttp.ClientSession,
    config: ClientConfig,
    payload: dict,
    record: RequestRecord,
    run_start: float,
    text_parts: list[str],
) -> None:
    """One send on `session`: fills `record`, or raises _LostOnClosedConnection before any of it
    but `sent_s` is set."""
    use = keepalive.ConnectionUse()
    sent = time.perf_counter()
    record.sent_s = sent - run_start
    last_choice_s: float | None = None
    try:
        response = await session.post(config.url, json=payload, headers=config.headers(), trace_request_ctx=use)
    except Exception as e:
        if keepalive.is_lost_on_closed_connection(e, use):
            raise _LostOnClosedConnection from e
        raise
    async with response:
        record.http_status = response.status
        if response.status != 200:
            body = (await response.text())[:MAX_ERROR_BODY]
            record.error = f"HTTP {response.status}: {body}"
            return
        async for line in response.content:
            data = sse.data_of(line)
            if data is None:
                continue
            now_s = time.perf_counter() - sent
            if data == sse.DONE:
                break
            chunk = json.loads(data)
            if (error := sse.error_of(chunk)) is not None:
                record.error = f"server error: {error}"
                return
            if (usage := chunk.get("usage")) is not None:
                record.usage_prompt_tokens = usage.get("prompt_tokens")
                record.usage_completion_tokens = usage.get("completion_tokens")
            text = sse.choice_text(chunk)
            if text is None:
                continue
            last_choice_s = now_s
            record.finish_reason = sse.finish_reason_of(chunk) or record.finish_reason
            if text or sse.choice_token_ids(chunk):  # output arrived (as ids without a tokenizer)
                if record.ttft_s is None:
                    record.ttft_s = now_s
                record.chunk_times_s.append(now_s)
                text_parts.append(text)
    if last_choice_s is None:
        record.error = "stream ended without any choice"
        return
    record.e2el_s = last_choice_s
    record.success = True


async def fetch_models(session: aiohttp.ClientSession, config: ClientConfig) -> list[str]:
    """Model ids from GET /v1/models."""
    url = config.base_url.rstrip("/") + "/v1/models"
    async with session.get(url, headers=config.headers()) as response:
        response.raise_for_status()
        body = await response.json()
    return [m["id"] for m in body.get("data", [])]


async def wait_until_ready(base_url: str, timeout_s: float, path: str = "/v1/models", poll_s: float = 0.5) -> bool:
    """Poll GET base_url+path until it answers 200 or timeout_s passes."""
    deadline = time.monotonic() + timeout_s
    url = base_url.rstrip("/") + path
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=max(poll_s, 2.0))) as session:
        while True:
            try:
                async with session.get(url) as response:
                    if response.status == 200:
                        return True
            except (TimeoutError, aiohttp.ClientError, OSError):
                pass
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(poll_s)
