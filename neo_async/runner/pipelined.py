"""The pipelined layer loop: a plan's two sub-batches overlapped per layer (asymmetric
pipelining; the split is `sched/pipeline.py`).

b0 holds the prefills, the device decodes and some host decodes; b1 host decodes only. The
device lane (the calling thread: torch, row ops, device attention, swap copies) and the host
lane (a worker thread: host decode attention) work at the same time, b1 one layer ahead:

    before:   copies(0), pre(b1,0), submit H1(0)
    layer i:  pre(b0,i), submit H0(i), device attention(b0,i)     | host: H1(i), then H0(i)
              wait H1(i), post(b1,i), copies(i+1), pre(b1,i+1), submit H1(i+1)
              wait H0(i), post(b0,i)

Invariants: the swap copies of layer i run before any K/V of layer i is read or written (the
Plan's contract): copies(i+1) precede pre(b1,i+1), and b0 reaches layer i+1 later still. While
a host job runs, the device lane touches other slabs only: the two sub-batches hold different
requests (so different blocks), and a layer's copies run while no host job of that layer is in
flight. Each layer's staged inputs and outputs are fresh tensors (the job owns them until its
wait), so layer i+1's staging never overwrites layer i's.
"""

from __future__ import annotations

import time

from neo_async.runner.host_lane import HostLane, InlineLane, Waitable
from neo_async.runner.layer_ops import LayerOps
from neo_async.runner.output_rows import OutputRows
from neo_async.runner.swap import LayerCopy
from neo_async.sched.plan import KVLocation, Plan, ScheduledChunk


class _SubBatch:
    """One sub-batch's rows and hidden state, and its layer in flight on the host lane."""

    def __init__(self, ops: LayerOps, chunks: list[ScheduledChunk]) -> None:
        self.ops = ops
        self.batch, self.hidden, self.rope = ops.begin(chunks)
        self.out = None  # [T, Hq, D] float32 of the layer in flight
        self.job = None
        self.handle: Waitable | None = None
        self.wait_s = 0.0  # time spent waiting for this sub-batch's host jobs

    def pre(self, layer: int, lane: HostLane | InlineLane, device_attention: bool) -> None:
        """pre, then the host decodes' attention submitted to the lane (and, when asked, the
        device attention of the other rows, on this thread)."""
        q, k, v, self.out = self.ops.pre(layer, self.hidden, self.rope)
        self.job = self.ops.host_decode_job(layer, self.batch, q, k, v, self.out)
        self.handle = lane.submit(self.job) if self.job is not None else None
        if device_attention:
            self.ops.device_attention(layer, self.batch, q, k, v, self.out)

    def post(self, layer: int) -> None:
        """Waits for the host attention in flight, then post."""
        if self.handle is not None:
            waiting = time.perf_counter()
            self.handle.wait()
            self.wait_s += time.perf_counter() - waiting
            self.job.finish()
        out, self.out, self.job, self.handle = self.out, None, None, None
        self.hidden = self.ops.post(layer, self.hidden, out)


def run_pipelined(
    ops: LayerOps, plan: Plan, copies: list[LayerCopy], lane: HostLane | InlineLane
) -> tuple[OutputRows, float]:
    """-> the output rows of both sub-batches (b0's, then b1's), and the seconds the device
    lane waited for the host lane."""
    b0 = _SubBatch(ops, [c for c in plan.chunks if c.sub_batch == 0])
    b1 = _SubBatch(ops, [c for c in plan.chunks if c.sub_batch == 1])
    assert not b1.batch.prefills and all(g.location is KVLocation.HOST for g in b1.batch.decodes), "b1 is host decodes only"
    num_layers = ops.model.spec.num_layers
    try:
        for copy in copies:
            copy.copy_layer(0)
        b1.pre(0, lane, device_attention=False)
        for layer in range(num_layers):
            b0.pre(layer, lane, device_attention=True)
            b1.post(layer)
            if layer + 1 < num_layers:
                for copy in copies:  # before any K/V of layer + 1 is read or written
                    copy.copy_layer(layer + 1)
                b1.pre(layer + 1, lane, device_attention=False)
            b0.post(layer)
    except BaseException:
        lane.drain()  # no job of this plan may outlive it
        raise
    rows = OutputRows.of(b0.batch.chunks, b0.batch.last_row, b0.hidden) + OutputRows.of(
        b1.batch.chunks, b1.batch.last_row, b1.hidden
    )
    return rows, b0.wait_s + b1.wait_s
