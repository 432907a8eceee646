"""The engine behind the server: one background asyncio task drives `Engine.step()`.

Threading contract: the engine's state (scheduler, pools) is touched only between steps, on
the event loop thread; each step runs in a single worker thread so the loop stays free to
accept requests and stream tokens. Adds and aborts queue up and are applied between steps.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import AsyncIterator, Callable

import structlog

from neo_async.config import Config
from neo_async.engine import Engine
from neo_async.engine_stats import EngineStats, StepStats
from neo_async.errors import EngineDeadError, EngineOverloadedError
from neo_async.outputs import RequestDelta
from neo_async.sampling_params import SamplingParams
from neo_async.sched.request import Request

log = structlog.get_logger("neo_async.async_engine")


class AsyncEngine:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.tokenizer = engine.tokenizer
        self.model_name = engine.model_name
        self.max_model_len = engine.max_model_len
        self._queues: dict[str, asyncio.Queue[RequestDelta | BaseException]] = {}
        self._pending_adds: list[Request] = []
        self._pending_aborts: list[str] = []
        self._listeners: list[Callable[[StepStats], None]] = []
        self._wakeup: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._worker = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="neo-step")
        self._dead: BaseException | None = None

    @classmethod
    def from_config(cls, config: Config) -> "AsyncEngine":
        return cls(Engine(config))

    @property
    def is_running(self) -> bool:
        """False once the loop died or the data plane failed (a tensor-parallel rank died)."""
        return self._task is not None and not self._task.done() and self._dead is None and self.engine.failure is None

    async def start(self) -> None:
        if self._task is not None:
            return
        self._wakeup = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._run(), name="neo-engine-loop")

    async def stop(self) -> None:
        """Abort everything still queued or running, then stop the loop task."""
        for request_id in list(self._queues):
            await self.abort(request_id)
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        self._apply_pending()
        self._worker.shutdown(wait=True)
        self.engine.close()

    def add_step_listener(self, fn: Callable[[StepStats], None]) -> None:
        self._listeners.append(fn)

    def stats(self) -> EngineStats:
        stats = self.engine.stats()
        if self._pending_adds:
            stats = EngineStats(**{**stats.__dict__, "num_waiting": stats.num_waiting + len(self._pending_adds)})
        return stats

    @property
    def num_unfinished(self) -> int:
        return len(self._queues)

    def generate(self, prompt: str | list[int], params: SamplingParams, request_id: str) -> AsyncIterator[RequestDelta]:
        """Validate and queue a request now (raises ValueError, EngineOverloadedError,
        EngineDeadError); the returned iterator yields its deltas until one is finished."""
        if self._dead is not None or self._task is None:
            raise EngineDeadError("the engine is not running")
        if request_id in self._queues:
            raise ValueError(f"request id {request_id!r} is already in use")
        request = self.engine.make_request(prompt, params, request_id=request_id)
        self.engine.check_admission(request, num_pending=len(self._pending_adds))
        queue: asyncio.Queue[RequestDelta | BaseException] = asyncio.Queue()
        self._queues[request_id] = queue
        self._pending_adds.append(request)
        self._notify()
        return self._stream(request_id, queue)

    async def _stream(self, request_id: str, queue: asyncio.Queue[RequestDelta | BaseException]) -> AsyncIterator[RequestDelta]:
        while True:
            item = await queue.get()
            if isinstance(item, BaseException):
                raise item
            yield item
            if item.is_finished:
                return

    async def abort(self, request_id: str) -> None:
        if request_id not in self._queues:
            return
        for i, request in enumerate(self._pending_adds):
            if request.request_id == request_id:
                del self._pending_adds[i]
                self.engine.outputs.add(request)
                self._deliver(self.engine.outputs.finish_aborted(request))
                return
        self._pending_aborts.append(request_id)
        self._notify()
        if self._task is None or self._task.done():
            self._apply_pending()

    def _notify(self) -> None:
        if self._wakeup is not None:
            self._wakeup.set()

    def _deliver(self, delta: RequestDelta) -> None:
        queue = self._queues.get(delta.request_id)
        if queue is None:
            return
        queue.put_nowait(delta)
        if delta.is_finished:
            del self._queues[delta.request_id]

    def _apply_pending(self) -> None:
        aborts, self._pending_aborts = self._pending_aborts, []
        for request_id in aborts:
            delta = self.engine.abort(request_id)
            if delta is not None:
                self._deliver(delta)
        adds, self._pending_adds = self._pending_adds, []
        for request in adds:
            try:
                self.engine.add_request(request)
            except (ValueError, EngineOverloadedError) as exc:
                queue = self._queues.pop(request.request_id, None)
                if queue is not None:
                    queue.put_nowait(exc)

    async def _run(self) -> None:
        assert self._wakeup is not None
        loop = asyncio.get_running_loop()
        try:
            while True:
                self._apply_pending()
                if not self.engine.has_unfinished:
                    self._wakeup.clear()
                    await self._wakeup.wait()
                    continue
                deltas = await loop.run_in_executor(self._worker, self.engine.step)
                for delta in deltas:
                    self._deliver(delta)
                if self.engine.recorder.last_step is not None:
                    for listener in self._listeners:
                        listener(self.engine.recorder.last_step)
                await asyncio.sleep(0)  # let handlers run between steps
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # noqa: BLE001 - every stream must learn the engine died
            log.exception("engine_loop_failed")
            self._dead = exc
            error = EngineDeadError(f"engine loop failed: {exc!r}")
            for queue in self._queues.values():
                queue.put_nowait(error)
            self._queues.clear()
