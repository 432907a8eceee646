"""Timing measurement points: a warm-up call each, then repeats in round-robin passes over all
the points of a table, the median per point, bounded by time.

NOTE: round-robin, not one point after another: on a shared machine a burst of load from
another process then slows one repeat of many points, not every repeat of a few (one such
burst used to put a 20x outlier into a table).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch


@dataclass(frozen=True)
class Bench:
    """One point: run(i) is timed (i counts its calls from 0, e.g. to rotate layers); setup(i)
    runs before each call, outside the timing. run does `units` units of the point's work (the
    point's seconds are per unit)."""

    run: Callable[[int], object]
    setup: Callable[[int], object] | None = None
    units: int = 1


@dataclass
class Timer:
    """Each point: one warm-up call, then at least `repeats` calls (more, up to `max_repeats`,
    while their count times their median is under `min_total_s`: cheap points get many, and a
    few descheduled calls do not cut them short), fewer once a point has taken `point_budget_s`. Past `deadline` (perf_counter), no warm-up and no further pass: every
    point gets one call, so tables are always complete and the time stays bounded."""

    device: torch.device
    repeats: int = 5
    max_repeats: int = 50
    min_total_s: float = 0.02
    point_budget_s: float = 1.0
    deadline: float = float("inf")
    # tensor-parallel ranks timing in lockstep: every decision (warm up, another pass for which
    # points) is rank 0's, handed to the others, so that every rank makes the same calls
    agree: Callable[[Any], Any] | None = None

    def __call__(self, bench: Bench) -> float:
        return self.measure([bench])[0]

    def measure(self, benches: list[Bench]) -> list[float]:
        """Median seconds of each bench."""
        calls = [0] * len(benches)
        times: list[list[float]] = [[] for _ in benches]
        if self._agreed(time.perf_counter() < self.deadline):
            for j, bench in enumerate(benches):
                self._time(bench, calls[j])
                calls[j] += 1
        pending = list(range(len(benches)))
        while pending:
            for j in pending:
                times[j].append(self._time(benches[j], calls[j]))
                calls[j] += 1
            past = time.perf_counter() >= self.deadline
            pending = self._agreed([j for j in pending if not past and not self._done(times[j])])
        return [statistics.median(t) / bench.units for t, bench in zip(times, benches)]

    def _agreed(self, decision: Any) -> Any:
        return decision if self.agree is None else self.agree(decision)

    def _done(self, times: list[float]) -> bool:
        if len(times) >= self.max_repeats or sum(times) >= self.point_budget_s:
            return True
        return len(times) >= self.repeats and len(times) * statistics.median(times) >= self.min_total_s

    def _time(self, bench: Bench, i: int) -> float:
        if bench.setup is not None:
            bench.setup(i)
            self._sync()
        started = time.perf_counter()
        bench.run(i)
        self._sync()
        return time.perf_counter() - started

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
