"""Block copies between the device pool and the host pool, one layer at a time.

A plan's swap runs (coalesced runs of consecutive blocks) are turned into index arrays once
per step; each layer then copies its (layer, run) slabs, K and V: through rust_cpuattn's
`copy_blocks` (on the kernel's threads, GIL released) when both pools are in host memory,
else one torch copy per run: non-blocking towards a GPU (ordered before the step's kernels on
the same stream), blocking towards the host (the host kernel reads the blocks right after).
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

    def copy_layer(self, layer: int) -> None:
        if not self.runs:
            return
        if self.use_rust:
            src, dst = self.src, self.dst
            rust_cpuattn.copy_blocks(src.k, src.v, dst.k, dst.v, self.src_ids, self.dst_ids, layers=(layer, layer + 1))
            return
        non_blocking = self.dst.device.type == "cuda"
        for run in self.runs:
            s, d, n = run.src_start, run.dst_start, run.num_blocks
            self.dst.k[layer, d : d + n].copy_(self.src.k[layer, s : s + n], non_blocking=non_blocking)
            self.dst.v[layer, d : d + n].copy_(self.src.v[layer, s : s + n], non_blocking=non_blocking)
