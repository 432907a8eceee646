"""The engine requests behind one HTTP request.

A `Generation` submits one engine request per choice (prompts x n), reads their deltas as
one merged stream, keeps each choice's running state, feeds the latency metrics, and on
`close()` aborts whatever has not finished: a client that goes away, a handler that fails
or a server that shuts down never leaves a request (or its KV blocks) behind.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from neo_async.outputs import FinishReason, RequestDelta, TokenLogprob
from neo_async.sampling_params import SamplingParams
from neo_async.server.metrics import RequestTimes, ServerMetrics

if TYPE_CHECKING:
    from neo_async.async_engine import AsyncEngine


@dataclass
class Choice:
    """One choice of the response, backed by one engine request."""

    index: int
    engine_id: str
    num_prompt_tokens: int
    times: RequestTimes
    text_parts: list[str] = field(default_factory=list)
    token_ids: list[int] = field(default_factory=list)  # the output so far
    num_output_tokens: int = 0
    logprobs: list[TokenLogprob] = field(default_factory=list)
    num_logprob_chars: int = 0  # text length covered by the logprob tokens sent so far
    prompt_logprobs: list[TokenLogprob | None] | None = None  # when asked, from the first delta
    finish_reason: FinishReason | None = None
    stop_reason: int | str | None = None

    @property
    def text(self) -> str:
        return "".join(self.text_parts)

    @property
    def is_finished(self) -> bool:
        return self.finish_reason is not None


class Generation:
    """Choices submitted together, streamed together, aborted together.

    Invariant: after `close()` every submitted engine request has finished or been aborted.
    """

    def __init__(self, engine: AsyncEngine, metrics: ServerMetrics, request_id: str, arrival: float) -> None:
        self.engine = engine
        self.metrics = metrics
        self.request_id = request_id
        self.arrival = arrival
        self.choices: list[Choice] = []
        self.is_aborted_by_server = False
        self._iterators: list[AsyncIterator[RequestDelta]] = []
        self._pumps: list[asyncio.Task[None]] = []
        self._closed = False

    def submit(self, specs: Sequence[tuple[list[int], SamplingParams]]) -> None:
        """Start one engine request per (prompt ids, params); choice i is specs[i].

        Raises what `engine.generate` raises; the requests already started stay recorded
        so that `close()` aborts them.
        """
        for index, (prompt_ids, params) in enumerate(specs):
            engine_id = f"{self.request_id}-{index}"
            iterator = self.engine.generate(prompt_ids, params, engine_id)
            self.choices.append(Choice(index, engine_id, len(prompt_ids), RequestTimes(self.arrival)))
            self._iterators.append(iterator)

    async def stream(self) -> AsyncIterator[tuple[Choice, RequestDelta]]:
        """Every delta of every choice, in arrival order, applied to its Choice before it is yielded.

        Raises what an engine iterator raises (EngineDeadError). A choice whose iterator
        ends without a finish reason is marked aborted.
        """
        if len(self._iterators) == 1:
            choice = self.choices[0]
            async for delta in self._iterators[0]:
                self._apply(choice, delta)
                yield choice, delta
        else:
            queue: asyncio.Queue[tuple[int, RequestDelta | BaseException | None]] = asyncio.Queue()
            self._pumps = [asyncio.create_task(self._pump(i, it, queue)) for i, it in enumerate(self._iterators)]
            num_open = len(self._pumps)
            while num_open:
                index, item = await queue.get()
                if item is None:
                    num_open -= 1
                elif isinstance(item, BaseException):
                    raise item
                else:
                    self._apply(self.choices[index], item)
                    yield self.choices[index], item
        for choice in self.choices:
            if not choice.is_finished:
                self._finish(choice, FinishReason.ABORT, None)

    @staticmethod
    async def _pump(
        index: int, iterator: AsyncIterator[RequestDelta], queue: asyncio.Queue[tuple[int, RequestDelta | BaseException | None]]
    ) -> None:
        try:
            async for delta in iterator:
                queue.put_nowait((index, delta))
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # handed to the consumer, which raises it
            queue.put_nowait((index, exc))
        queue.put_nowait((index, None))

    def _apply(self, choice: Choice, delta: RequestDelta) -> None:
        now = time.monotonic()
        if delta.token_ids:
            self.metrics.on_token(choice.times, now)
        if delta.text:
            choice.text_parts.append(delta.text)
        choice.token_ids.extend(delta.token_ids)
        # num_output_tokens is the engine's running count; the sum of deltas is the fallback.
        choice.num_output_tokens = max(choice.num_output_tokens + len(delta.token_ids), delta.num_output_tokens)
        if delta.num_prompt_tokens:
            choice.num_prompt_tokens = delta.num_prompt_tokens
        if delta.logprobs:
            choice.logprobs.extend(delta.logprobs)
        if delta.prompt_logprobs is not None:
            choice.prompt_logprobs = delta.prompt_logprobs
        if delta.finish_reason is not None:
            self._finish(choice, delta.finish_reason, delta.stop_reason)

    def _finish(self, choice: Choice, reason: FinishReason, stop_reason: int | str | None) -> None:
        choice.finish_reason = reason
        choice.stop_reason = stop_reason
        self.metrics.on_finish(choice.times, time.monotonic(), reason.value, choice.num_prompt_tokens, choice.num_output_tokens)

    @property
    def num_output_tokens(self) -> int:
        return sum(c.num_output_tokens for c in self.choices)

    @property
    def first_token_s(self) -> float | None:
        firsts = [c.times.first_token for c in self.choices if c.times.first_token is not None]
        return min(firsts) - self.arrival if firsts else None

    async def abort(self) -> None:
        """Ask the engine to end every unfinished choice (their deltas end with ABORT)."""
        for choice in self.choices:
            if not choice.is_finished:
                await self.engine.abort(choice.engine_id)

    async def close(self) -> None:
        """Stop reading and abort whatever is unfinished; idempotent, safe under cancellation."""
        if self._closed:
            return
        self._closed = True
        for pump in self._pumps:
            pump.cancel()
        unfinished = [c for c in self.choices if not c.is_finished]
        for choice in unfinished:
            self._finish(choice, FinishReason.ABORT, None)
        if unfinished:
            # Shielded: a second cancellation of the handler must not stop the aborts.
            ids = [c.engine_id for c in unfinished]
            task = asyncio.ensure_future(_abort_all(self.engine, ids))
            _BACKGROUND.add(task)
            task.add_done_callback(_BACKGROUND.discard)
            await asyncio.shield(task)
        if self._pumps:
            await asyncio.gather(*self._pumps, return_exceptions=True)
        for iterator in self._iterators:  # release the engine's generators now, not at GC
            aclose = getattr(iterator, "aclose", None)
            if aclose is not None:
                await aclose()


_BACKGROUND: set[asyncio.Future[None]] = set()  # abort tasks still running after their handler was cancelled


async def _abort_all(engine: AsyncEngine, engine_ids: list[str]) -> None:
    for engine_id in engine_ids:
        await engine.abort(engine_id)
