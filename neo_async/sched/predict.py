"""Predicted iteration time of a plan from a cost model (pure: no torch, no clock).

Sequential: per layer, the linear work of every token, then prefill attention, device decode
attention and host decode attention, one after the other.

Pipelined (two sub-batches, see `pipeline.py`): per layer, the device runs b0's linear work and
device attention while the host computes b1's attention, then b1's linear work while the host
computes b0's host decodes; each half lasts as long as the slower lane:

    layer = max(D0, H1) + max(D1, H0)
    D0 = linear(b0) + prefill attention(b0) + device decode attention(b0),  D1 = linear(b1)
    H0 = host decode attention(b0's host decodes),  H1 = host decode attention(b1)

Both add the swap copies of the layer and, once per iteration, the work outside the layers.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass, field

from neo_async.sched.costs import CostModel
from neo_async.sched.plan import ScheduledChunk


@dataclass
class Load:
    """The work of a batch or sub-batch, as the cost model sees it."""

    num_tokens: int = 0
    num_sampled: int = 0
    prefills: list[tuple[int, int]] = field(default_factory=list)  # (chunk tokens, context tokens)
    device_decodes: int = 0
    device_kv_tokens: int = 0
    host_decodes: int = 0
    host_kv_tokens: int = 0

    def add(self, chunk: ScheduledChunk) -> None:
        if chunk.is_decode:
            self.add_decode(chunk.seq_len, chunk.is_host, sampled=chunk.is_sampling)
            return
        self.num_tokens += chunk.num_tokens
        self.num_sampled += chunk.is_sampling
        self.prefills.append((chunk.num_tokens, chunk.seq_len))

    def add_decode(self, kv_tokens: int, is_host: bool, sampled: bool = True, count: int = 1) -> None:
        """count decodes (negative: taken away) of requests whose caches will hold kv_tokens in all."""
        self.num_tokens += count
        self.num_sampled += count * sampled
        if is_host:
            self.host_decodes += count
            self.host_kv_tokens += kv_tokens
        else:
            self.device_decodes += count
            self.device_kv_tokens += kv_tokens

    def remove_decode(self, chunk: ScheduledChunk) -> None:
        """Undo `add` of a decode chunk."""
        assert chunk.is_decode
        self.add_decode(-chunk.seq_len, chunk.is_host, sampled=chunk.is_sampling, count=-1)

    def copy(self) -> "Load":
        return dataclasses.replace(self, prefills=list(self.prefills))

    @classmethod
    def of(cls, chunks: Iterable[ScheduledChunk]) -> "Load":
        load = cls()
        for chunk in chunks:
            load.add(chunk)
        return load


@dataclass(frozen=True)
class LayerTimes:
    """One layer's predicted lane times: device and host work of each sub-batch."""

    device: tuple[float, float]
    host: tuple[float, float]

    @property
    def pipelined(self) -> float:
        return max(self.device[0], self.host[1]) + max(self.device[1], self.host[0])


def device_time(costs: CostModel, load: Load, pipelined: bool) -> float:
    t = costs.linear(load.num_tokens, pipelined) if load.num_tokens else 0.0
    t += sum(costs.prefill_attention(n, ctx) for n, ctx in load.prefills)
    if load.device_decodes:
        t += costs.device_decode_attention(load.device_decodes, load.device_kv_tokens, pipelined)
    return t


def host_time(costs: CostModel, load: Load, pipelined: bool) -> float:
    if not load.host_decodes:
        return 0.0
    return costs.host_decode_attention(load.host_decodes, load.host_kv_tokens, pipelined)


def sequential_time(costs: CostModel, load: Load, swap_blocks: int = 0) -> float:
    layer = device_time(costs, load, False) + host_time(costs, load, False)
    return _iteration(costs, layer, swap_blocks, load.num_tokens, load.num_sampled)


def pipelined_layer(costs: CostModel, b0: Load, b1: Load) -> LayerTimes:
    return LayerTimes(
        device=(device_time(costs, b0, True), device_time(costs, b1, True)),
        host=(host_time(costs, b0, True), host_time(costs, b1, True)),
    )


def pipelined_time(costs: CostModel, b0: Load, b1: Load, swap_blocks: int = 0) -> float:
    layer = pipelined_layer(costs, b0, b1).pipelined
    return _iteration(costs, layer, swap_blocks, b0.num_tokens + b1.num_tokens, b0.num_sampled + b1.num_sampled)


def plan_time(costs: CostModel, chunks: list[ScheduledChunk], is_pipelined: bool, swap_blocks: int = 0) -> float:
    """The predicted time of a plan's chunks (sub_batch read when is_pipelined)."""
    if not is_pipelined:
        return sequential_time(costs, Load.of(chunks), swap_blocks)
    b0 = Load.of(c for c in chunks if c.sub_batch == 0)
    b1 = Load.of(c for c in chunks if c.sub_batch == 1)
    return pipelined_time(costs, b0, b1, swap_blocks)


def _iteration(costs: CostModel, layer: float, swap_blocks: int, num_tokens: int, num_sampled: int) -> float:
    swap = costs.swap(swap_blocks) if swap_blocks else 0.0
    return costs.num_layers * (layer + swap) + costs.iteration(num_tokens, num_sampled)
