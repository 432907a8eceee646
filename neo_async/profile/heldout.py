"""How well the tables interpolate: points between grid points (never measured for a table),
measured and compared with the table's value there; and whole probe steps, measured and
compared with the predictor's iteration time (`sched/predict.py`) from the tables."""

from __future__ import annotations

import math
import statistics
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from neo_async.profile.measure import POINTS, measure_points
from neo_async.profile.probes import StepShape, measure_steps, runnable
from neo_async.sched.cost_tables import MeasuredCosts
from neo_async.sched.costs import Table1D, Table2D
from neo_async.sched.predict import plan_time

if TYPE_CHECKING:
    from neo_async.config import Config
    from neo_async.runner.worker import Worker
    from neo_async.profile.points import Points


@dataclass(frozen=True)
class Check:
    point: tuple[int, ...]
    measured: float
    predicted: float

    @property
    def error(self) -> float:
        """Relative error of the prediction."""
        return abs(self.predicted - self.measured) / self.measured if self.measured > 0 else 0.0


def summary(checks: list[Check]) -> dict[str, Any]:
    errors = sorted(c.error for c in checks)
    return {
        "num_points": len(errors),
        "median_error": statistics.median(errors) if errors else None,
        "p90_error": _quantile(errors, 0.9) if errors else None,
        "points": [asdict(c) | {"error": c.error} for c in checks],
    }


def _quantile(sorted_values: list[float], q: float) -> float:
    """Linear interpolation between closest ranks."""
    pos = q * (len(sorted_values) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def midpoints(axis: tuple[float, ...]) -> list[int]:
    """An integer between each pair of neighbours (geometric middle), where one exists."""
    out = []
    for a, b in zip(axis, axis[1:]):
        m = round(math.sqrt(a * b)) if a > 0 else round((a + b) / 2)
        if a < m < b:
            out.append(int(m))
    return out


def heldout_points(table: Table1D | Table2D, max_points: int) -> list[tuple[int, ...]]:
    """Middles of the table's segments (1-D) or cells (2-D), at most max_points, spread evenly."""
    if isinstance(table, Table1D):
        candidates = [(x,) for x in midpoints(table.xs)]
    else:
        candidates = [(x, y) for x in midpoints(table.xs) for y in midpoints(table.ys)]
    if len(candidates) <= max_points:
        return candidates
    step = len(candidates) / max_points
    return [candidates[int(i * step)] for i in range(max_points)]


def check_tables(points: Points, costs: MeasuredCosts, max_points: int) -> dict[str, list[Check]]:
    checks: dict[str, list[Check]] = {}
    for name in POINTS:
        table = getattr(costs, name)
        at = heldout_points(table, max_points)
        checks[name] = [Check(p, seconds, table(*p)) for p, seconds in zip(at, measure_points(points, name, at))]
    return checks


def check_steps(points: Points, costs: MeasuredCosts, shapes: list[StepShape]) -> list[tuple[StepShape, Check]]:
    measured = measure_steps(points, shapes)
    return [(shape, Check((len(plan.chunks),), seconds, plan_time(costs, plan.chunks, plan.is_pipelined)))
            for shape, (seconds, plan) in zip(shapes, measured)]


def step_shapes(worker: Worker, config: Config) -> list[StepShape]:
    """Probe steps unlike the ones the overheads were fitted to: bigger batches, longer
    contexts, a prefill chunk joining decodes; device-only steps (no host job glue); and
    serving-sized ones: 16 decodes of ~1100 tokens, a full prefill chunk fresh and after a
    cached prefix."""
    seqs = config.scheduler.max_num_seqs
    max_tokens = config.scheduler.max_num_batched_tokens
    n = max(2, min(16, seqs // 2))
    kv = min(512, worker.max_model_len - 1)
    chunk = min(64, max_tokens // 2)
    prefix = min(256, worker.max_model_len - chunk - 1)
    long_kv = min(1100, worker.max_model_len - 1)
    big_chunk = min(512, max_tokens)
    big_prefix = max(0, min(500, worker.max_model_len - big_chunk - 1))
    shapes = [
        StepShape(device_decodes=n // 2, host_decodes=n // 2, kv_tokens=kv),
        StepShape(device_decodes=2, host_decodes=n, kv_tokens=kv),
        StepShape(device_decodes=2, host_decodes=n, kv_tokens=kv, pipelined=True),
        StepShape(device_decodes=n // 2, host_decodes=n // 2, kv_tokens=kv, prefill=(chunk, prefix), pipelined=True),
        StepShape(device_decodes=4, host_decodes=0, kv_tokens=kv, prefill=(chunk, prefix)),
        StepShape(device_decodes=1, kv_tokens=kv),
        StepShape(device_decodes=min(16, seqs), kv_tokens=long_kv),
        StepShape(device_decodes=0, prefill=(big_chunk, 0)),
        StepShape(device_decodes=0, prefill=(big_chunk, big_prefix)),
    ]
    return runnable(shapes, worker.host_cache is not None)
