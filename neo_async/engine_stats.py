"""Snapshots of engine state, read by metrics and tests (no torch, no asyncio)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class StepStats:
    """One engine iteration, reported to step listeners after it finishes."""

    iteration_s: float
    num_seqs: int  # requests that ran this iteration
    num_batched_tokens: int  # prefill chunk tokens + decode tokens
    num_prefill_tokens: int
    num_decode_tokens: int
    num_preempted: int  # requests preempted (recompute) this iteration
    num_host_seqs: int = 0  # requests whose KV lives on the host
    num_swapped_out: int = 0
    num_swapped_in: int = 0
    num_swap_out_bytes: int = 0
    num_swap_in_bytes: int = 0
    num_host_prefill_tokens: int = 0
    is_pipelined: bool = False
    num_deferred: int = 0  # host decodes the policy left out of this iteration
    predicted_s: float | None = None  # the cost model's time for this iteration, when there is one
    execute_s: float = 0.0  # the executor's part of the iteration: the span the cost model predicts
    schedule_s: float = 0.0  # the scheduler's part (planning, the policy's search)

    @property
    def prediction_error(self) -> float | None:
        """|predicted - measured| / measured, when the iteration had a prediction."""
        if self.predicted_s is None or self.execute_s <= 0:
            return None
        return abs(self.predicted_s - self.execute_s) / self.execute_s


@dataclass(frozen=True)
class EngineStats:
    """A point-in-time view of the engine; cumulative counters only grow."""

    num_running: int
    num_waiting: int
    num_device_blocks_total: int
    num_device_blocks_used: int
    num_host_blocks_total: int
    num_host_blocks_used: int
    num_requests_on_host: int
    num_preemptions_total: int
    num_prompt_tokens_total: int
    num_generation_tokens_total: int
    num_iterations_total: int
    num_swapped_out_total: int = 0  # requests moved device -> host
    num_swapped_in_total: int = 0  # requests moved host -> device
    num_swap_out_bytes_total: int = 0
    num_swap_in_bytes_total: int = 0
    num_host_prefill_tokens_total: int = 0  # prompt tokens whose KV was written to the host pool
    num_pipelined_iterations_total: int = 0  # iterations run as two overlapped sub-batches
    num_deferred_total: int = 0  # host decodes left out of an iteration by the policy
    schedule_seconds_total: float = 0.0  # time spent planning iterations
    num_prefix_query_tokens_total: int = 0  # prompt tokens looked up in the prefix cache
    # of those, found cached (not computed), by pool: "device", "host"
    num_prefix_hit_tokens_total: dict[str, int] = field(default_factory=lambda: {"device": 0, "host": 0})
    num_demoted_blocks_total: int = 0  # cached device blocks copied to the host pool when evicted
    num_prefix_copied_tokens_total: int = 0  # of the host hits, copied to the device pool (not read in place)

    @property
    def num_prefix_hits_total(self) -> int:
        return sum(self.num_prefix_hit_tokens_total.values())

    @property
    def device_kv_usage(self) -> float:
        return self.num_device_blocks_used / max(1, self.num_device_blocks_total)

    @property
    def host_kv_usage(self) -> float:
        return self.num_host_blocks_used / max(1, self.num_host_blocks_total)
