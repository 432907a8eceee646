"""Block copies between the device pool and the host pool, one layer at a time.

A plan's swap runs (coalesced runs of consecutive blocks) are turned into index arrays once
per step; each layer then copies its (layer, run) slabs, K and V: through rust_cpuattn's
`copy_blocks` (on the kernel's threads, GIL released) when both pools are in host memory.
Between a GPU and the host, every layer's copies are issued at once on a bulk stream of their
own (never queued with the latency-critical q/k/v/o copies), one event per layer; a layer's
`copy_layer` waits for its event, on the host and on the compute stream, so the Plan's
ordering contract holds while the copies of later layers run under earlier layers' compute.
"""

from __future__ import annotations

import torch

from neo_async.native import rust_cpuattn
from neo_async.runner.attention import KVCache
from neo_async.sched.plan import CopyRun


class LayerCopy:
    def __init__(self, runs: list[CopyRun], src: KVCache, dst: KVCache) -> None:
        self.runs = runs
        self.src = src
        self.dst = dst
        self.use_rust = rust_cpuattn is not None and src.device.type == "cpu" and dst.device.type == "cpu"
        if self.use_rust and runs:
            self.src_ids = torch.tensor([r.src_start + i for r in runs for i in range(r.num_blocks)], dtype=torch.int64)
            self.dst_ids = torch.tensor([r.dst_start + i for r in runs for i in range(r.num_blocks)], dtype=torch.int64)
        self.events = None
        if runs and "cuda" in (src.device.type, dst.device.type):
            from neo_async.runner import cuda_lane

            gpu = src.device if src.device.type == "cuda" else dst.device
            self.events = cuda_lane.enqueue_layers(gpu, self._copy_runs, src.k.shape[0])

    def copy_layer(self, layer: int) -> None:
        if not self.runs:
            return
        if self.use_rust:
            src, dst = self.src, self.dst
            rust_cpuattn.copy_blocks(src.k, src.v, dst.k, dst.v, self.src_ids, self.dst_ids, layers=(layer, layer + 1))
        elif self.events is not None:
            from neo_async.runner import cuda_lane

            cuda_lane.wait_layer(self.events[layer])
        else:
            self._copy_runs(layer)

    def _copy_runs(self, layer: int) -> None:
        """One torch copy per run, K and V (non-blocking on a CUDA stream: pinned host pools)."""
        for run in self.runs:
            s, d, n = run.src_start, run.dst_start, run.num_blocks
            self.dst.k[layer, d : d + n].copy_(self.src.k[layer, s : s + n], non_blocking=True)
            self.dst.v[layer, d : d + n].copy_(self.src.v[layer, s : s + n], non_blocking=True)
