"""The synchronous engine: one `step()` = schedule, execute, update.

Build order: the Worker (one rank's data plane), then the cost tables measured on it, then the
engine's own parts (block accounting and the scheduler over the Worker's pool sizes, output
processing, the step recorder)."""

from __future__ import annotations

import time
import uuid

import structlog

from neo_async.config import Config
from neo_async.engine_stats import EngineStats
from neo_async.errors import EngineOverloadedError
from neo_async.kv.block_pool import BlockPool
from neo_async.output_processor import OutputProcessor
from neo_async.outputs import RequestDelta
from neo_async.profile.cache import cost_tables_for
from neo_async.parallel.rank_group import RankGroup, make_worker
from neo_async.runner.worker import Worker
from neo_async.sampling_params import SamplingParams
from neo_async.sched.costs import CostModel
from neo_async.sched.plan import ExecuteOutput
from neo_async.sched.request import Request
from neo_async.sched.scheduler import Scheduler
from neo_async.step_recorder import StepRecorder, StepTimer

log = structlog.get_logger("neo_async.engine")


class Engine:
    def __init__(self, config: Config, worker: Worker | RankGroup | None = None) -> None:
        """worker: the data plane to drive (built from config when None: one Worker, or the
        tensor-parallel ranks)."""
        config.validate()
        self.config = config
        self.worker = worker or make_worker(config)
        self.spec = self.worker.spec
        self.tokenizer = self.worker.tokenizer
        self.max_model_len = self.worker.max_model_len
        self.model_name = config.model.served_model_name or self.spec.name
        cache_cfg = config.cache
        num_device, num_host = self.worker.num_device_blocks, self.worker.num_host_blocks
        self.costs = self._cost_tables(cache_cfg.offload if num_host else "off")
        self.device_pool = BlockPool(num_device, cache_cfg.block_size, "device", cache_cfg.enable_prefix_caching)
        self.host_pool = BlockPool(num_host, cache_cfg.block_size, "host", cache_cfg.enable_prefix_caching)
        self.scheduler = Scheduler(config.scheduler, self.device_pool, self.host_pool, cache_cfg.offload, costs=self.costs)
        self.outputs = OutputProcessor(self.tokenizer, self.spec.eos_token_ids)
        self.recorder = StepRecorder(self.worker.bytes_per_block)
        log.info(
            "engine_ready",
            model=self.model_name,
            device=str(self.worker.device),
            dtype=config.model.dtype,
            offload=self.scheduler.placement.offload,
            device_kv_blocks=num_device,
            host_kv_blocks=num_host,
            block_size=cache_cfg.block_size,
            max_model_len=self.max_model_len,
            device_threads=self.worker.threads.device,
            host_threads=self.worker.threads.host,
            load_s=round(self.worker.load_s, 2),
        )

    def _cost_tables(self, offload: str) -> CostModel | None:
        """The policy's tables, measured on this Worker, or on every tensor-parallel rank at once."""
        if isinstance(self.worker, RankGroup):
            group = self.worker
            return cost_tables_for(group.worker, self.config, offload, lambda quick: group.profile(self.config, quick))
        return cost_tables_for(self.worker, self.config, offload)

    # ---- requests -------------------------------------------------------------------------

    def make_request(
        self, prompt: str | list[int], params: SamplingParams, request_id: str | None = None, arrival_time: float | None = None
    ) -> Request:
        """Validate and tokenize; raises ValueError on bad input. Does not queue.

        Without a tokenizer (skip_tokenizer_init) only token-id prompts are taken, and stop
        strings are refused: matching them needs the output as text.
        """
        params.validate()
        bad_bias = [t for t, _ in params.logit_bias if t >= self.spec.vocab_size]
        if bad_bias:
            raise ValueError(f"logit_bias names token ids outside the vocabulary [0, {self.spec.vocab_size}): {bad_bias[:5]}")
        if self.tokenizer is None and params.stop:
            raise ValueError("stop strings need a tokenizer, and this engine runs with skip_tokenizer_init; use stop_token_ids")
        if isinstance(prompt, str):
            if self.tokenizer is None:
                raise ValueError("prompt must be token ids: this engine runs with skip_tokenizer_init and cannot tokenize text")
            if not prompt:
                raise ValueError("prompt must not be empty")
            token_ids = self.tokenizer.encode(prompt)
        else:
            token_ids = list(prompt)
            if not token_ids:
                raise ValueError("prompt must hold at least one token")
            bad = [t for t in token_ids if not isinstance(t, int) or isinstance(t, bool) or not 0 <= t < self.spec.vocab_size]
            if bad:
                raise ValueError(f"token ids must be integers in [0, {self.spec.vocab_size}), got {bad[:5]}")
        if not token_ids:
            raise ValueError("prompt tokenizes to zero tokens")
        if len(token_ids) >= self.max_model_len:
            raise ValueError(f"prompt has {len(token_ids)} tokens; this model's context is {self.max_model_len} tokens")
        return Request(
            request_id=request_id or uuid.uuid4().hex,
            token_ids=token_ids,
            params=params,
            arrival_time=time.monotonic() if arrival_time is None else arrival_time,
            max_total_tokens=min(len(token_ids) + params.max_tokens, self.max_model_len),
        )

    def check_admission(self, request: Request, num_pending: int = 0) -> None:
        """Raise EngineOverloadedError when the queue (with num_pending requests not yet added) is
        full, ValueError when the request can never fit a KV pool."""
        waiting = len(self.scheduler.waiting) + num_pending
        if waiting >= self.config.scheduler.max_waiting:
            raise EngineOverloadedError(f"{waiting} requests are waiting; try again later")
        error = self.scheduler.capacity_error(request.max_total_tokens)
        if error is not None:
            raise ValueError(error)

    def add_request(self, request: Request) -> None:
        self.check_admission(request)
        self.scheduler.add(request)
        self.outputs.add(request)
        self.recorder.num_prompt_tokens_total += request.num_prompt_tokens

    def abort(self, request_id: str) -> RequestDelta | None:
        request = self.scheduler.finish(request_id)
        if request is None:
            return None
        delta = self.outputs.finish_aborted(request)
        self.outputs.drop(request_id)
        return delta

    @property
    def has_unfinished(self) -> bool:
        return self.scheduler.num_unfinished > 0

    # ---- the iteration --------------------------------------------------------------------

    def step(self) -> list[RequestDelta]:
        timer = StepTimer()
        plan = self.scheduler.schedule()
        timer.plan_done()
        output = self.worker.execute(plan)
        timer.execute_done(output)
        advanced = self.scheduler.update(plan, output)
        deltas = self._deltas(output, advanced)
        self.recorder.record(plan, timer, len(advanced))
        return deltas

    def _deltas(self, output: ExecuteOutput, advanced: list[Request]) -> list[RequestDelta]:
        """The output processor fed this step's prompt logprobs and tokens; finished requests
        are released."""
        for request_id, (first_pos, scored) in output.prompt_logprobs.items():
            self.outputs.on_prompt_logprobs(request_id, first_pos, scored)
        deltas = []
        for request in advanced:
            delta = self.outputs.on_token(request, output.logprobs.get(request.request_id))
            if delta is None:
                continue
            deltas.append(delta)
            if delta.is_finished:
                self.scheduler.finish(request.request_id)
        return deltas

    def stats(self) -> EngineStats:
        return EngineStats(
            num_running=len(self.scheduler.running),
            num_waiting=len(self.scheduler.waiting),
            num_device_blocks_total=self.device_pool.num_blocks,
            num_device_blocks_used=self.device_pool.num_used,
            num_host_blocks_total=self.host_pool.num_blocks,
            num_host_blocks_used=self.host_pool.num_used,
            num_requests_on_host=self.scheduler.num_running_on_host,
            num_preemptions_total=self.scheduler.num_preemptions_total,
            num_swapped_out_total=self.scheduler.num_swapped_out_total,
            num_swapped_in_total=self.scheduler.num_swapped_in_total,
            num_prefix_query_tokens_total=self.scheduler.num_prefix_query_tokens_total,
            num_prefix_hit_tokens_total={k.value: v for k, v in self.scheduler.num_prefix_hit_tokens_total.items()},
            num_demoted_blocks_total=self.scheduler.num_demoted_blocks_total,
            num_prefix_copied_tokens_total=self.scheduler.num_prefix_copied_tokens_total,
            num_swap_out_bytes_total=self.recorder.num_swap_bytes_total["out"],
            num_swap_in_bytes_total=self.recorder.num_swap_bytes_total["in"],
            num_host_prefill_tokens_total=self.recorder.num_host_prefill_tokens_total,
            num_prompt_tokens_total=self.recorder.num_prompt_tokens_total,
            num_generation_tokens_total=self.recorder.num_generation_tokens_total,
            num_iterations_total=self.recorder.num_iterations_total,
            num_pipelined_iterations_total=self.recorder.num_pipelined_iterations_total,
            num_deferred_total=self.recorder.num_deferred_total,
            schedule_seconds_total=self.recorder.schedule_seconds_total,
        )

    @property
    def failure(self) -> str | None:
        """Why the data plane cannot run another step (a tensor-parallel rank died), or None."""
        return self.worker.failure

    def close(self) -> None:
        """Stops the data plane (the tensor-parallel ranks' processes, the host lane)."""
        self.worker.close()

    def check(self) -> None:
        """Raise AssertionError if any KV accounting invariant (both pools, every request's
        location) is broken."""
        self.scheduler.check()
