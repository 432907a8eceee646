"""Iteration costs: the one interface the scheduler's policy and the simulator price plans with
(pure: no torch, no clock).

Every cost is seconds. Per-layer costs are for one transformer layer; an iteration adds the
per-iteration cost (embedding, logits, sampling, bookkeeping). A cost model is either tables
measured on this machine (`neo_async/profile/`) or a roofline model of other hardware (the
simulator's); both implement `CostModel`.

`pipelined` selects the lane budget: on the CPU device, a pipelined step runs torch on fewer
threads (the host lane has the others), so its linear layers cost more; on a GPU it changes
nothing.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from typing import Protocol


class CostModel(Protocol):
    num_layers: int

    def linear(self, num_tokens: int, pipelined: bool) -> float:
        """pre + post of one layer (norms, QKV, RoPE, KV store, O projection, MLP) for T tokens."""
        ...

    def prefill_attention(self, chunk_tokens: int, context_tokens: int) -> float:
        """One prefill chunk's attention in one layer; context includes the chunk."""
        ...

    def device_decode_attention(self, num_requests: int, kv_tokens: int, pipelined: bool) -> float:
        """Decode attention of device requests holding kv_tokens in all, one layer."""
        ...

    def host_decode_attention(self, num_requests: int, kv_tokens: int, pipelined: bool) -> float:
        """Decode attention on the host lane, staging included, one layer."""
        ...

    def swap(self, num_blocks: int) -> float:
        """Copying num_blocks KV blocks (K and V) of one layer between the pools."""
        ...

    def iteration(self, num_tokens: int, num_sampled: int) -> float:
        """Per-iteration work outside the layers: embedding, logits and sampling of
        num_sampled rows, scheduling and bookkeeping."""
        ...


@dataclass(frozen=True)
class Table1D:
    """y(x), piecewise linear through measured points; beyond the ends, the nearest segment's
    line (never below zero)."""

    xs: tuple[float, ...]
    ys: tuple[float, ...]

    def __post_init__(self) -> None:
        if len(self.xs) != len(self.ys) or not self.xs:
            raise ValueError("a table needs as many ys as xs, at least one")
        if any(b <= a for a, b in zip(self.xs, self.xs[1:])):
            raise ValueError("a table's xs must increase")

    def __call__(self, x: float) -> float:
        xs, ys = self.xs, self.ys
        if len(xs) == 1:
            return ys[0] * x / xs[0] if xs[0] else ys[0]
        i = min(max(bisect.bisect_right(xs, x) - 1, 0), len(xs) - 2)
        slope = (ys[i + 1] - ys[i]) / (xs[i + 1] - xs[i])
        return max(0.0, ys[i] + slope * (x - xs[i]))

    def to_json(self) -> dict:
        return {"xs": list(self.xs), "ys": list(self.ys)}

    @classmethod
    def from_json(cls, data: dict) -> "Table1D":
        return cls(tuple(data["xs"]), tuple(data["ys"]))


@dataclass(frozen=True)
class Table2D:
    """z(x, y) on a grid, bilinear inside, extended linearly from the edge cells outside
    (never below zero). zs[i][j] is z at (xs[i], ys[j])."""

    xs: tuple[float, ...]
    ys: tuple[float, ...]
    zs: tuple[tuple[float, ...], ...]

    def __post_init__(self) -> None:
        if len(self.xs) < 2 or len(self.ys) < 2:
            raise ValueError("a 2-D table needs at least 2 points on each axis")
        if len(self.zs) != len(self.xs) or any(len(row) != len(self.ys) for row in self.zs):
            raise ValueError("zs must be len(xs) rows of len(ys) values")
        for axis in (self.xs, self.ys):
            if any(b <= a for a, b in zip(axis, axis[1:])):
                raise ValueError("a table's axes must increase")

    def __call__(self, x: float, y: float) -> float:
        i = _cell(self.xs, x)
        j = _cell(self.ys, y)
        tx = (x - self.xs[i]) / (self.xs[i + 1] - self.xs[i])
        ty = (y - self.ys[j]) / (self.ys[j + 1] - self.ys[j])
        z = self.zs
        low = z[i][j] + (z[i + 1][j] - z[i][j]) * tx
        high = z[i][j + 1] + (z[i + 1][j + 1] - z[i][j + 1]) * tx
        return max(0.0, low + (high - low) * ty)

    def to_json(self) -> dict:
        return {"xs": list(self.xs), "ys": list(self.ys), "zs": [list(row) for row in self.zs]}

    @classmethod
    def from_json(cls, data: dict) -> "Table2D":
        return cls(tuple(data["xs"]), tuple(data["ys"]), tuple(tuple(row) for row in data["zs"]))


def _cell(axis: tuple[float, ...], value: float) -> int:
    return min(max(bisect.bisect_right(axis, value) - 1, 0), len(axis) - 2)
