"""Whole steps of synthetic plans, run by the engine's own executor: they measure what no table
isolates (the executor's per-layer glue, the pipelined lanes' hand-offs and thread switches) and
check the predictor end to end.

A probe's requests are decodes over scratch blocks and at most one prefill chunk; its plan is
sequential, or pipelined with b1 = half of the host decodes (the rest in b0, with every device
decode and the prefill), the split the scheduler makes.
"""

from __future__ import annotations

import dataclasses
import statistics
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from neo_async.profile.points import GREEDY
from neo_async.profile.timing import Bench
from neo_async.sched.cost_tables import MeasuredCosts
from neo_async.sched.plan import KVLocation, Plan, ScheduledChunk
from neo_async.sched.predict import plan_time

if TYPE_CHECKING:
    from neo_async.profile.points import Points


@dataclass(frozen=True)
class StepShape:
    device_decodes: int = 0
    host_decodes: int = 0
    kv_tokens: int = 256  # per decode request
    prefill: tuple[int, int] | None = None  # (chunk tokens, cached prefix tokens), on the device
    pipelined: bool = False

    def label(self) -> str:
        parts = [f"{self.device_decodes}dev+{self.host_decodes}host x{self.kv_tokens}"]
        if self.prefill:
            parts.append(f"prefill {self.prefill[0]}@{self.prefill[1]}")
        return " ".join(parts) + (" pipelined" if self.pipelined else " sequential")


def runnable(shapes: list[StepShape], has_host_pool: bool) -> list[StepShape]:
    """The shapes an engine can run: without a host pool, host decodes become device decodes
    and nothing is pipelined (duplicates dropped)."""
    if has_host_pool:
        return shapes
    out: list[StepShape] = []
    for s in shapes:
        s = StepShape(s.device_decodes + s.host_decodes, 0, s.kv_tokens, s.prefill, False)
        if s not in out:
            out.append(s)
    return out


def build_plan(shape: StepShape, device_ids: list[int], host_ids: list[int], block_size: int) -> Plan:
    """Decodes of shape.kv_tokens tokens; each request owns its blocks while the scratch lasts,
    then blocks are shared (timing only: contents are garbage either way)."""
    width = -(-shape.kv_tokens // block_size)
    chunks: list[ScheduledChunk] = []

    def blocks(ids: list[int], first: int, count: int) -> list[int]:
        return [ids[(first + j) % len(ids)] for j in range(count)]

    num_b1 = (shape.host_decodes + 1) // 2 if shape.pipelined else 0
    offset = 0
    if shape.prefill is not None:
        chunk, prefix = shape.prefill
        n = -(-(chunk + prefix) // block_size)
        ids = blocks(device_ids, 0, n)
        chunks.append(ScheduledChunk("p", [1] * chunk, prefix, ids, True, GREEDY, [1] * (chunk + prefix), []))
        offset = n
    for r in range(shape.device_decodes):
        ids = blocks(device_ids, offset + r * width, width)
        chunks.append(_decode(f"d{r}", shape.kv_tokens, ids, KVLocation.DEVICE, 0))
    for r in range(shape.host_decodes):
        ids = blocks(host_ids, r * width, width)
        chunks.append(_decode(f"h{r}", shape.kv_tokens, ids, KVLocation.HOST, int(r < num_b1)))
    return Plan(chunks=chunks, is_pipelined=shape.pipelined and num_b1 > 0 and len(chunks) > num_b1)


def _decode(request_id: str, seq_len: int, ids: list[int], location: KVLocation, sub_batch: int) -> ScheduledChunk:
    return ScheduledChunk(request_id, [1], seq_len - 1, ids, True, GREEDY, [1], [], location, sub_batch)


def measure_steps(points: Points, shapes: list[StepShape]) -> list[tuple[float, Plan]]:
    """Median seconds of executor.execute(plan) for each shape's plan (which sets the pipelined
    budget itself), with the plan."""
    plans = [build_plan(s, points.device_ids, points.host_ids, points.block_size) for s in shapes]
    execute = points.executor.execute
    seconds = points.measure([Bench(lambda i, plan=plan: execute(plan)) for plan in plans], pipelined=False)
    return list(zip(seconds, plans))


def has_host_decodes(plan: Plan) -> bool:
    return any(c.is_decode and c.is_host for c in plan.chunks)


def fit_overhead(measured: list[tuple[float, Plan]], predict: Callable[[float, Plan], float]) -> float:
    """The per-layer overhead x (seconds, >= 0) with predict(x, plan) equal to each step's
    measurement, the median over the steps (0.0 when none).

    predict must be non-decreasing in x and add at most x per layer; each step's value is found
    by bisection (0 when the step is faster than predicted without any)."""
    values = []
    for seconds, plan in measured:
        if predict(0.0, plan) >= seconds:
            values.append(0.0)
            continue
        lo, hi = 0.0, max(seconds, 1e-6)
        for _ in range(50):
            mid = (lo + hi) / 2
            if predict(mid, plan) < seconds:
                lo = mid
            else:
                hi = mid
        values.append((lo + hi) / 2)
    return statistics.median(values) if values else 0.0


def fit_overheads(costs: MeasuredCosts, measured: list[tuple[float, Plan]]) -> MeasuredCosts:
    """costs (charging no overhead yet) with the three overheads fitted to whole steps, each on
    the steps that pay it: `layer_overhead` on sequential device-only steps, then
    `host_layer_overhead` on sequential steps with host decodes (the device glue charged as
    fitted), `pipelined_layer_overhead` on pipelined steps."""
    device_only = [m for m in measured if not m[1].is_pipelined and not has_host_decodes(m[1])]
    with_host = [m for m in measured if not m[1].is_pipelined and has_host_decodes(m[1])]
    pipelined_steps = [m for m in measured if m[1].is_pipelined]

    def priced(pipelined: bool, name: str, **fixed: float) -> Callable[[float, Plan], float]:
        return lambda x, plan: plan_time(dataclasses.replace(costs, **fixed, **{name: x}), plan.chunks, pipelined)

    layer = fit_overhead(device_only, priced(False, "layer_overhead"))
    host = fit_overhead(with_host, priced(False, "host_layer_overhead", layer_overhead=layer))
    pipe = fit_overhead(pipelined_steps, priced(True, "pipelined_layer_overhead"))
    return dataclasses.replace(costs, layer_overhead=layer, host_layer_overhead=host, pipelined_layer_overhead=pipe)
