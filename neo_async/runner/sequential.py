"""The sequential layer loop: all of a plan's tokens as one flat batch (see `batch.py` for the
row order). Per layer: swap copies of the layer (swap-ins, then swap-outs) -> pre -> host
decode inputs staged -> prefill K/V stores into each chunk's pool -> prefill attention per
chunk -> device decode attention on the device pool -> host decode attention (rust_cpuattn)
on the host pool, split over the calling thread and the host lane when the budget says so ->
post."""

from __future__ import annotations

from collections.abc import Callable

from neo_async.runner.host_lane import HostLane, InlineLane
from neo_async.runner.layer_ops import LayerOps, run_at_once
from neo_async.runner.output_rows import OutputRows
from neo_async.runner.swap import LayerCopy
from neo_async.sched.plan import Plan


def run_sequential(
    ops: LayerOps, plan: Plan, copies: list[LayerCopy], lane: Callable[[], HostLane | InlineLane]
) -> OutputRows:
    """-> the plan's output rows; `lane()` is called only when the host attention is split."""
    batch, hidden, rope = ops.begin(plan.chunks)
    host_parts = ops.host_parts(batch.host_decodes, pipelined=False)
    for layer in range(ops.model.spec.num_layers):
        for copy in copies:  # before any K/V of this layer is read or written (Plan's contract)
            copy.copy_layer(layer)
        q, k, v, out = ops.pre(layer, hidden, rope)
        # host inputs staged before the device attention is enqueued: on a GPU their copies
        # then wait for pre only, and host attention runs while the device attends
        jobs = [ops.host_job(layer, batch.host_decodes, part, q, k, v, out) for part in host_parts]
        ops.device_attention(layer, batch, q, k, v, out)
        run_at_once(jobs, lane() if len(jobs) > 1 else None)
        hidden = ops.post(layer, hidden, out)
    return OutputRows.of(batch.chunks, batch.last_row, hidden)
