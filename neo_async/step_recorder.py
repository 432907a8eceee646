"""What the engine records about its iterations: timings, counters, the cost model's
predictions against measured executor time, the last `StepStats`, and debug events."""

from __future__ import annotations

import collections
import time

import structlog

from neo_async.engine_stats import StepStats
from neo_async.sched.plan import ExecuteOutput, Plan

log = structlog.get_logger("neo_async.engine")


class StepTimer:
    """Marks of one iteration: started, planned (schedule done), executed (executor done)."""

    def __init__(self) -> None:
        self.started = time.perf_counter()
        self.planned = self.executed = self.started

    def plan_done(self) -> None:
        self.planned = time.perf_counter()

    def execute_done(self, output: ExecuteOutput) -> None:
        """Also hands the measured executor time to the output (the policy learns from it)."""
        self.executed = time.perf_counter()
        output.execute_s = self.execute_s

    @property
    def schedule_s(self) -> float:
        return self.planned - self.started

    @property
    def execute_s(self) -> float:
        return self.executed - self.planned


class StepRecorder:
    def __init__(self, bytes_per_block: int) -> None:
        self.bytes_per_block = bytes_per_block
        self.num_prompt_tokens_total = 0
        self.num_generation_tokens_total = 0
        self.num_iterations_total = 0
        self.num_pipelined_iterations_total = 0
        self.num_deferred_total = 0
        self.schedule_seconds_total = 0.0
        # (predicted, measured) seconds of the executor in recent priced iterations: the predictor's error
        self.predictions: collections.deque[tuple[float, float]] = collections.deque(maxlen=100_000)
        self.num_swap_bytes_total = {"out": 0, "in": 0}
        self.num_host_prefill_tokens_total = 0
        self.last_step: StepStats | None = None

    def record(self, plan: Plan, timer: StepTimer, num_sampled: int) -> None:
        """One finished iteration: counters, predictions, debug events, `last_step`."""
        execute_s, schedule_s = timer.execute_s, timer.schedule_s
        self.schedule_seconds_total += schedule_s
        if plan.predicted_s is not None:
            self.predictions.append((plan.predicted_s, execute_s))
        moved = self._account_movement(plan)
        self.num_generation_tokens_total += num_sampled
        self.num_iterations_total += 1
        self.num_pipelined_iterations_total += plan.is_pipelined
        self.num_deferred_total += len(plan.deferred_ids)
        num_prefill = sum(c.num_tokens for c in plan.chunks if not c.is_decode)
        if plan.chunks:
            _log_iteration(plan, execute_s, schedule_s)
        self.last_step = StepStats(
            iteration_s=time.perf_counter() - timer.started,
            num_seqs=len(plan.chunks),
            num_batched_tokens=plan.num_batched_tokens,
            num_prefill_tokens=num_prefill,
            num_decode_tokens=plan.num_batched_tokens - num_prefill,
            num_preempted=len(plan.preempted_ids),
            num_host_seqs=plan.num_host_chunks,
            num_swapped_out=len(plan.swapped_out_ids),
            num_swapped_in=len(plan.swapped_in_ids),
            num_swap_out_bytes=moved["out"],
            num_swap_in_bytes=moved["in"],
            num_host_prefill_tokens=moved["host_prefill_tokens"],
            is_pipelined=plan.is_pipelined,
            num_deferred=len(plan.deferred_ids),
            predicted_s=plan.predicted_s,
            execute_s=execute_s,
            schedule_s=schedule_s,
        )

    def _account_movement(self, plan: Plan) -> dict[str, int]:
        """Bytes swapped and host prefill tokens of this plan (added to the totals), and debug
        events for placements and swaps."""
        moved = {
            "out": Plan.num_run_blocks(plan.swap_out) * self.bytes_per_block,
            "in": Plan.num_run_blocks(plan.swap_in) * self.bytes_per_block,
            "host_prefill_tokens": sum(c.num_tokens for c in plan.chunks if c.is_host and not c.is_decode),
        }
        self.num_swap_bytes_total["out"] += moved["out"]
        self.num_swap_bytes_total["in"] += moved["in"]
        self.num_host_prefill_tokens_total += moved["host_prefill_tokens"]
        for chunk in plan.chunks:
            if chunk.start_pos == 0:
                log.debug(
                    "kv_placed", request_id=chunk.request_id, location=chunk.location.value, num_tokens=len(chunk.prompt_token_ids)
                )
        for direction, ids in (("out", plan.swapped_out_ids), ("in", plan.swapped_in_ids)):
            for request_id in ids:
                log.debug("kv_swapped", request_id=request_id, direction=direction)
        for request_id in plan.preempted_ids:
            log.debug("kv_preempted", request_id=request_id)
        return moved


def _log_iteration(plan: Plan, execute_s: float, schedule_s: float) -> None:
    sides = [[c for c in plan.chunks if c.sub_batch == j] for j in (0, 1)]
    log.debug(
        "iteration",
        mode="pipelined" if plan.is_pipelined else "sequential",
        sub_batch_sizes=[len(side) for side in sides] if plan.is_pipelined else [len(plan.chunks)],
        device_tokens=sum(c.num_tokens for c in plan.chunks if not c.is_host),
        host_tokens=sum(c.num_tokens for c in plan.chunks if c.is_host),
        host_decodes=sum(c.is_host and c.is_decode for c in plan.chunks),
        deferred=len(plan.deferred_ids),
        predicted_ms=None if plan.predicted_s is None else round(plan.predicted_s * 1000, 3),
        measured_ms=round(execute_s * 1000, 3),
        schedule_ms=round(schedule_s * 1000, 3),
    )
