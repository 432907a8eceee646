"""What one app holds at run time: its engine, metrics, and the generations in flight."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from aiohttp import web

from neo_async.config import Config
from neo_async.server.generation import Generation
from neo_async.server.metrics import ServerMetrics

if TYPE_CHECKING:
    from neo_async.async_engine import AsyncEngine


@dataclass
class AppState:
    """Mutable state of one app (the app's own mapping is frozen once it starts).

    `engine` and `metrics` are set by the engine context, at start-up for a given engine or
    by the `loading` task (which returns whether it started the engine) for one built from
    config; `is_ready` turns True once both are set and the engine runs, and routes are
    served only then. `in_flight` holds every Generation between submission and close.
    """

    config: Config
    engine: AsyncEngine | None = None
    metrics: ServerMetrics | None = None
    loading: asyncio.Task[bool] | None = None
    is_ready: bool = False
    is_draining: bool = False
    in_flight: set[Generation] = field(default_factory=set)
    _idle: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        self._idle.set()

    def track(self, generation: Generation) -> None:
        self.in_flight.add(generation)
        self._idle.clear()

    def untrack(self, generation: Generation) -> None:
        self.in_flight.discard(generation)
        if not self.in_flight:
            self._idle.set()

    async def wait_idle(self, timeout_s: float) -> bool:
        """True once nothing is in flight, False if `timeout_s` passed first."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout_s)
        except TimeoutError:
            return False
        return True

    async def abort_all(self) -> int:
        """Abort every generation in flight (their handlers answer 503 shutting_down)."""
        generations = list(self.in_flight)
        for generation in generations:
            generation.is_aborted_by_server = True
            await generation.abort()
        return len(generations)


STATE = web.AppKey("neo_state", AppState)
