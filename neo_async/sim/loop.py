"""The discrete-event loop: arrivals, the real scheduler, a cost model, a virtual clock.

Per iteration, as the live engine steps: requests that have arrived by `now` are added; the
scheduler plans; the plan is priced by `plan_time` (swap copies included) and the clock
advances by that much; every sampling chunk emits one token at the iteration's end; a request
that reached its max_tokens is finished. When nothing can run, the clock jumps to the next
arrival. Output tokens are placeholders (id 0): outputs are lengths, never text.

Prompts: with prefix caching on (the scheduler's pools cache), each prompt's token ids are the
load generator's (`PromptBuilder`, ids without a tokenizer): a spec's shared prefix
(`prefix_id`, vLLM's prefix_repetition) and shared blocks (`hash_ids`, Mooncake) are the same
ids in every request that names them, the rest random; the real scheduler finds the hits, a hit's
tokens are never prefilled, so their cost is never paid, and copies between the pools are priced
as swaps. With caching off, prompts repeat one placeholder id (no pool looks at them).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from loadgen.prompts import PromptBuilder
from loadgen.records import RequestRecord
from loadgen.workload import RequestSpec
from neo_async.sampling_params import SamplingParams
from neo_async.sched.costs import CostModel
from neo_async.sched.plan import ExecuteOutput, Plan
from neo_async.sched.predict import plan_time
from neo_async.sched.request import Request
from neo_async.sched.scheduler import Scheduler
from neo_async.sim.clock import VirtualClock

TOKEN_ID = 0
VOCAB_SIZE = 32000  # of the prompts' random ids (a Llama-2 vocabulary)


@dataclass(frozen=True)
class Iteration:
    start_s: float
    end_s: float
    num_seqs: int
    num_batched_tokens: int
    num_host_decodes: int
    num_device_decodes: int
    num_swap_blocks: int
    num_preempted: int
    is_pipelined: bool


@dataclass
class SimRun:
    records: list[RequestRecord]  # in workload order
    duration_s: float  # first arrival slot (0) -> last token
    iterations: list[Iteration]
    plans: list[Plan] = field(default_factory=list)  # only with keep_plans
    admitted_before: list[list[str]] = field(default_factory=list)  # per iteration: request ids added just before it
    num_preemptions: int = 0
    num_swapped_out: int = 0
    num_swapped_in: int = 0
    # prefix caching: prompt tokens looked up, found cached by pool (device, host), of the host's
    # found ones those copied to the device, cached device blocks demoted to the host
    num_prefix_query_tokens: int = 0
    num_prefix_hit_tokens: dict[str, int] = field(default_factory=lambda: {"device": 0, "host": 0})
    num_prefix_copied_tokens: int = 0
    num_demoted_blocks: int = 0

    @property
    def num_pipelined(self) -> int:
        return sum(it.is_pipelined for it in self.iterations)


def prompt_builder(seed: int = 0, vocab_size: int = VOCAB_SIZE) -> PromptBuilder:
    """The load generator's prompts as ids, without a tokenizer."""
    return PromptBuilder(None, "ids", seed=seed, vocab_size=vocab_size)


def new_request(index: int, spec: RequestSpec, arrival_s: float, prompts: PromptBuilder | None = None) -> Request:
    """Request `index` of a workload: prompt ids from `prompts` (shared prefixes and blocks as the
    spec names them), or one placeholder id repeated when None."""
    params = SamplingParams(max_tokens=spec.output_len, ignore_eos=True)
    token_ids = prompts.token_ids(spec, index) if prompts is not None else [TOKEN_ID] * spec.prompt_len
    return Request(
        request_id=str(index),
        token_ids=token_ids,
        params=params,
        arrival_time=arrival_s,
        max_total_tokens=spec.prompt_len + spec.output_len,
    )


def simulate(
    specs: list[RequestSpec],
    offsets: np.ndarray,
    scheduler: Scheduler,
    costs: CostModel,
    keep_plans: bool = False,
    check: bool = False,
    max_iterations: int = 10_000_000,
    prompts: PromptBuilder | None = None,
) -> SimRun:
    """Run every request to completion (or refusal); `check` runs scheduler.check() each step.
    Prompt ids from `prompts`; by default the load generator's when the pools cache (seed 0),
    else placeholders."""
    if prompts is None and scheduler.device_pool.enable_caching:
        prompts = prompt_builder()
    clock = VirtualClock()
    records = [
        RequestRecord(
            request_id=i, prompt_len=s.prompt_len, output_len=s.output_len,
            scheduled_s=float(t), trace_timestamp_s=s.timestamp_s,
        )
        for i, (s, t) in enumerate(zip(specs, offsets, strict=True))
    ]
    order = [int(i) for i in np.argsort(offsets, kind="stable")]
    run = SimRun(records, 0.0, [])
    next_arrival = 0
    admitted: list[str] = []
    num_idle, max_idle = 0, 64
    while next_arrival < len(order) or scheduler.num_unfinished:
        while next_arrival < len(order) and offsets[order[next_arrival]] <= clock.now:
            index = order[next_arrival]
            if _admit(scheduler, index, specs[index], records[index], prompts):
                admitted.append(str(index))
            next_arrival += 1
        plan = scheduler.schedule() if scheduler.num_unfinished else Plan()
        if not plan.chunks and plan.deferred_ids and num_idle < max_idle:
            num_idle += 1  # everything deferred: the starvation bound runs it within a few plans
            continue
        num_idle = 0
        if not plan.chunks:
            if next_arrival >= len(order):
                raise RuntimeError(f"no progress at t={clock.now:.3f} s with {scheduler.num_unfinished} requests left")
            clock.jump_to(max(clock.now, float(offsets[order[next_arrival]])))
            continue
        if len(run.iterations) >= max_iterations:
            raise RuntimeError(f"more than {max_iterations} iterations")
        start = clock.now
        swap_blocks = Plan.num_run_blocks(plan.swap_out) + Plan.num_run_blocks(plan.swap_in)
        clock.advance(plan_time(costs, plan.chunks, plan.is_pipelined, swap_blocks))
        output = ExecuteOutput({c.request_id: TOKEN_ID for c in plan.chunks if c.is_sampling})
        for request in scheduler.update(plan, output):
            record = records[int(request.request_id)]
            t = clock.now - record.sent_s
            if not record.chunk_times_s:
                record.ttft_s = t
            record.chunk_times_s.append(t)
            if request.num_output_tokens >= request.params.max_tokens or request.num_tokens >= request.max_total_tokens:
                scheduler.finish(request.request_id)
                _complete(record, request.num_output_tokens, t)
        if check:
            scheduler.check()
        run.iterations.append(_iteration(plan, start, clock.now, swap_blocks))
        if keep_plans:
            run.plans.append(plan)
            run.admitted_before.append(admitted)
        admitted = []
    run.duration_s = clock.now
    run.num_preemptions = scheduler.num_preemptions_total
    run.num_swapped_out = scheduler.num_swapped_out_total
    run.num_swapped_in = scheduler.num_swapped_in_total
    run.num_prefix_query_tokens = scheduler.num_prefix_query_tokens_total
    run.num_prefix_hit_tokens = {k.value: v for k, v in scheduler.num_prefix_hit_tokens_total.items()}
    run.num_prefix_copied_tokens = scheduler.num_prefix_copied_tokens_total
    run.num_demoted_blocks = scheduler.num_demoted_blocks_total
    return run


def _admit(scheduler: Scheduler, index: int, spec: RequestSpec, record: RequestRecord, prompts: PromptBuilder | None) -> bool:
    """Add the request as the server would; a request no pool can hold fails at once (HTTP 400)."""
    record.is_sent = True
    record.sent_s = record.scheduled_s
    request = new_request(index, spec, record.scheduled_s, prompts)
    error = scheduler.capacity_error(request.max_total_tokens)
    if error is not None:
        record.error = error
        record.http_status = 400
        return False
    scheduler.add(request)
    return True


def _complete(record: RequestRecord, num_output_tokens: int, t: float) -> None:
    record.success = True
    record.e2el_s = t
    record.num_output_tokens = num_output_tokens
    record.usage_completion_tokens = num_output_tokens
    record.usage_prompt_tokens = record.prompt_len
    record.finish_reason = "length"
    record.http_status = 200


def _iteration(plan: Plan, start: float, end: float, swap_blocks: int) -> Iteration:
    decodes = [c for c in plan.chunks if c.is_decode]
    num_host = sum(c.is_host for c in decodes)
    return Iteration(
        start_s=start,
        end_s=end,
        num_seqs=len(plan.chunks),
        num_batched_tokens=plan.num_batched_tokens,
        num_host_decodes=num_host,
        num_device_decodes=len(decodes) - num_host,
        num_swap_blocks=swap_blocks,
        num_preempted=len(plan.preempted_ids),
        is_pipelined=plan.is_pipelined,
    )
