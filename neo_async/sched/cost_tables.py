"""Cost tables measured on this machine (`neo_async/profile/`), as a `CostModel` (pure: no torch,
no clock).

Parametrisation: decode attention is tabled over (requests, KV tokens per request) and prefill
attention over (chunk tokens, cached prefix tokens), so every grid cell is a real batch and the
bilinear interpolation is exact for the physics (time ~ a + b*requests + c*requests*length).

Fixed overheads are measured, not assumed: each table's intercept holds its own call's cost;
the executor's per-layer glue that no table isolates is the residual of whole probe steps, in
three parts: `layer_overhead`, the device work's glue of a sequential step (fitted on
device-only steps), charged through `linear()`; `host_layer_overhead`, the host decode job's
glue in a sequential step (its setup, staging fresh tensors; fitted on steps with host decodes
once `layer_overhead` is known), charged through `host_decode_attention()` so that only steps
with host decodes pay it; `pipelined_layer_overhead`, a pipelined step's whole glue (fitted on
pipelined steps), half per sub-batch through `linear()`. `iteration()` is the step's work
outside the layers.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from neo_async.sched.costs import Table1D, Table2D

FORMAT = 3  # bumped whenever the meaning of a field changes; other formats are never loaded

_TABLES_1D = ("linear_sequential", "linear_pipelined", "swap_blocks", "iteration_sampled", "iteration_prefill_tokens")
_TABLES_2D = (
    "prefill",
    "device_decode_sequential",
    "device_decode_pipelined",
    "host_decode_sequential",
    "host_decode_pipelined",
)


@dataclass(frozen=True)
class MeasuredCosts:
    """Seconds; per layer except the iteration tables. Implements `CostModel`."""

    num_layers: int
    linear_sequential: Table1D  # x: tokens in the (sub-)batch
    linear_pipelined: Table1D
    prefill: Table2D  # x: chunk tokens, y: cached prefix tokens (store + gather + attention)
    device_decode_sequential: Table2D  # x: requests, y: KV tokens per request
    device_decode_pipelined: Table2D
    host_decode_sequential: Table2D  # staging and (pipelined) the host lane's hand-off included
    host_decode_pipelined: Table2D
    swap_blocks: Table1D  # x: blocks, one layer, K and V
    iteration_sampled: Table1D  # x: sampled rows: batch tensors, embedding, logits, sampling
    iteration_prefill_tokens: Table1D  # x: prefill tokens beyond the sampled rows
    layer_overhead: float = 0.0  # sequential step, per layer (device work's glue)
    host_layer_overhead: float = 0.0  # sequential step with host decodes, per layer (host job's glue)
    pipelined_layer_overhead: float = 0.0  # pipelined step, per layer (both sub-batches)
    key: dict[str, Any] = field(default_factory=dict)  # what the numbers depend on (see profile/cache.py)
    meta: dict[str, Any] = field(default_factory=dict)  # how they were measured (mode, seconds, date)

    # ---- CostModel ----------------------------------------------------------------------

    def linear(self, num_tokens: int, pipelined: bool) -> float:
        if pipelined:
            return self.linear_pipelined(num_tokens) + self.pipelined_layer_overhead / 2
        return self.linear_sequential(num_tokens) + self.layer_overhead

    def prefill_attention(self, chunk_tokens: int, context_tokens: int) -> float:
        return self.prefill(chunk_tokens, max(0, context_tokens - chunk_tokens))

    def device_decode_attention(self, num_requests: int, kv_tokens: int, pipelined: bool) -> float:
        table = self.device_decode_pipelined if pipelined else self.device_decode_sequential
        return _per_request(table, num_requests, kv_tokens)

    def host_decode_attention(self, num_requests: int, kv_tokens: int, pipelined: bool) -> float:
        if num_requests <= 0:
            return 0.0
        if pipelined:
            return _per_request(self.host_decode_pipelined, num_requests, kv_tokens)
        return _per_request(self.host_decode_sequential, num_requests, kv_tokens) + self.host_layer_overhead

    def swap(self, num_blocks: int) -> float:
        return self.swap_blocks(num_blocks)

    def iteration(self, num_tokens: int, num_sampled: int) -> float:
        t = self.iteration_sampled(num_sampled) if num_sampled else 0.0
        extra = num_tokens - num_sampled
        return t + (self.iteration_prefill_tokens(extra) if extra > 0 else 0.0)

    # ---- JSON ---------------------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"format": FORMAT, "num_layers": self.num_layers}
        for name in _TABLES_1D + _TABLES_2D:
            data[name] = getattr(self, name).to_json()
        data |= {
            "layer_overhead": self.layer_overhead,
            "host_layer_overhead": self.host_layer_overhead,
            "pipelined_layer_overhead": self.pipelined_layer_overhead,
            "key": self.key,
            "meta": self.meta,
        }
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "MeasuredCosts":
        """Raises ValueError on another format or a malformed table."""
        if data.get("format") != FORMAT:
            raise ValueError(f"cost tables of format {data.get('format')!r}, this version reads {FORMAT}")
        try:
            tables: dict[str, Any] = {name: Table1D.from_json(data[name]) for name in _TABLES_1D}
            tables |= {name: Table2D.from_json(data[name]) for name in _TABLES_2D}
            return cls(
                num_layers=int(data["num_layers"]),
                layer_overhead=float(data["layer_overhead"]),
                host_layer_overhead=float(data["host_layer_overhead"]),
                pipelined_layer_overhead=float(data["pipelined_layer_overhead"]),
                key=dict(data["key"]),
                meta=dict(data.get("meta", {})),
                **tables,
            )
        except (KeyError, TypeError) as e:
            raise ValueError(f"malformed cost tables: {e!r}") from e

    def save(self, path: str | Path) -> None:
        """Written to a temporary file then renamed: readers never see half a file."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(self.to_json(), indent=1))
        tmp.replace(path)

    @classmethod
    def load(cls, path: str | Path) -> "MeasuredCosts":
        """Raises OSError, or ValueError when the file is not cost tables of this format."""
        try:
            data = json.loads(Path(path).read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not JSON ({e})") from e
        if not isinstance(data, dict):
            raise ValueError(f"{path}: not cost tables")
        return cls.from_json(data)


def _per_request(table: Table2D, num_requests: int, kv_tokens: int) -> float:
    if num_requests <= 0:
        return 0.0
    return table(num_requests, kv_tokens / num_requests)
