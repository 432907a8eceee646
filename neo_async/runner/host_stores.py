"""Prefill K/V written into a host pool from a GPU without draining the GPU every layer.

A store's rows are copied to host buffers on a copy lane (after the compute stream's work so
far) and scattered into the pool later, on the calling thread, once that copy is done:

    store(layer i):  settle every pending store of another layer (layer i - 1: its copy ran
                     under layer i's projections, so the wait is short), then enqueue layer i's
    store(last):     enqueue, then settle everything: when a step's last layer is stored, the
                     step's K/V are all in the pool (one wait per step, not one per layer)

Invariant: a pending store's rows are read by nobody before they are settled. Within a step
the rows stored at layer i are the prefilling requests' own: that layer's attention takes them
from the caller (`KVCache.prefill`'s k_new, v_new), host decodes and swaps touch other blocks
or other layers, and the next step finds everything settled.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from neo_async.runner.staging import Lane, LaneEvent


@dataclass
class _Pending:
    layer: int
    k: torch.Tensor  # [T, Hkv, D] in the pool's dtype, host buffer
    v: torch.Tensor
    block_ids: torch.Tensor  # [T] int64, host
    offsets: torch.Tensor  # [T] int64, host
    copied: LaneEvent


class HostStores:
    def __init__(self, lane: Lane, k_pool: torch.Tensor, v_pool: torch.Tensor) -> None:
        self.lane = lane
        self.k_pool = k_pool  # [layers, blocks, Hkv, bs, D], host
        self.v_pool = v_pool
        self.pending: list[_Pending] = []

    def store(self, layer: int, k: torch.Tensor, v: torch.Tensor, block_ids: torch.Tensor, offsets: torch.Tensor) -> None:
        """k, v [T, Hkv, D] (the lane's device) stored at (block_ids[t], offsets[t]) of `layer`."""
        self.settle(keep_layer=layer)
        dtype = self.k_pool.dtype
        k_host, v_host = self.lane.host_buffer(tuple(k.shape), dtype), self.lane.host_buffer(tuple(v.shape), dtype)
        self.lane.copy_to_host(k_host, k.to(dtype))
        self.lane.copy_to_host(v_host, v.to(dtype))
        copied = self.lane.event()
        copied.record()
        self.pending.append(_Pending(layer, k_host, v_host, block_ids.cpu(), offsets.cpu(), copied))
        if layer == self.k_pool.shape[0] - 1:
            self.settle()

    def settle(self, keep_layer: int | None = None) -> None:
        """Every pending store (but those of keep_layer) waited for and scattered, in order."""
        kept = []
        for p in self.pending:
            if p.layer == keep_layer:
                kept.append(p)
                continue
            p.copied.wait_host()
            self.k_pool[p.layer][p.block_ids, :, p.offsets] = p.k
            self.v_pool[p.layer][p.block_ids, :, p.offsets] = p.v
        self.pending = kept
