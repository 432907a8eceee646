"""The synchronous engine: one `step()` = schedule, execute, update."""

from __future__ import annotations

import collections
import time
import uuid
from pathlib import Path

import structlog

import torch

from neo_async.config import AUTO, CPU_DEVICE_KV_TOKENS, Config
from neo_async.engine_stats import EngineStats, StepStats
from neo_async.errors import EngineOverloadedError
from neo_async.kv.block_pool import BlockPool
from neo_async.model.llama import LlamaModel
from neo_async.model.loader import load_model
from neo_async.output_processor import OutputProcessor
from neo_async.outputs import RequestDelta
from neo_async.runner.attention import KVCache
from neo_async.runner.device import (
    configure_threads,
    device_free_bytes,
    host_available_bytes,
    pick_device,
    pipelined_device_threads,
    sequential_host_parts,
    torch_dtype,
)
from neo_async.runner.executor import Executor
from neo_async.runner.sampler import Sampler
from neo_async.sampling_params import SamplingParams
from neo_async.sched.costs import CostModel
from neo_async.sched.plan import Plan
from neo_async.sched.request import Request
from neo_async.sched.scheduler import Scheduler

log = structlog.get_logger("neo_async.engine")


class Engine:
    def __init__(self, config: Config) -> None:
        config.validate()
        self.config = config
        self.device = pick_device()
        self.num_device_threads, self.num_host_threads = configure_threads(
            self.device, config.model.device_threads, config.model.host_threads
        )
        dtype = torch_dtype(config.model.dtype)
        started = time.perf_counter()
        loaded = load_model(config.model.model, dtype, self.device, config.model.skip_tokenizer_init)
        self.spec = loaded.spec
        self.tokenizer = loaded.tokenizer
        self.model_name = config.model.served_model_name or loaded.spec.name
        self.max_model_len = min(config.model.max_model_len or self.spec.max_position_embeddings, self.spec.max_position_embeddings)
        self.model = LlamaModel(self.spec, loaded.weights, self.max_model_len)
        cache_cfg = config.cache
        block_size = cache_cfg.block_size
        kv_shape = (self.spec.num_layers, self.spec.num_kv_heads, block_size, self.spec.head_dim)
        num_blocks = self._num_device_blocks(dtype.itemsize)
        self.cache = KVCache(kv_shape[0], num_blocks, *kv_shape[1:], dtype, self.device)
        self.device_pool = BlockPool(num_blocks, block_size, "device", cache_cfg.enable_prefix_caching)
        num_host_blocks = self._num_host_blocks(dtype.itemsize)
        self.host_cache = None
        if num_host_blocks:
            cpu = torch.device("cpu")
            pin = self.device.type == "cuda"
            self.host_cache = KVCache(kv_shape[0], num_host_blocks, *kv_shape[1:], dtype, cpu, pin_for_cuda=pin)
        self.host_pool = BlockPool(num_host_blocks, block_size, "host", cache_cfg.enable_prefix_caching)
        self.sampler = Sampler(self.spec.vocab_size, self.spec.eos_token_ids, self.device)
        self.executor = Executor(self.model, self.cache, self.sampler, self.host_cache)
        self.executor.pipelined_device_threads = pipelined_device_threads(
            self.device, config.model.device_threads, self.num_host_threads
        )
        self.executor.sequential_host_parts = sequential_host_parts(self.device, self.num_device_threads, self.num_host_threads)
        self.costs = self._cost_model(cache_cfg.offload if num_host_blocks else "off")
        self.scheduler = Scheduler(config.scheduler, self.device_pool, self.host_pool, cache_cfg.offload, costs=self.costs)
        self.outputs = OutputProcessor(self.tokenizer, self.spec.eos_token_ids)
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
        log.info(
            "engine_ready",
            model=self.model_name,
            device=str(self.device),
            dtype=config.model.dtype,
            offload=self.scheduler.placement.offload,
            device_kv_blocks=num_blocks,
            host_kv_blocks=num_host_blocks,
            block_size=block_size,
            max_model_len=self.max_model_len,
            device_threads=self.num_device_threads,
            host_threads=self.num_host_threads,
            load_s=round(time.perf_counter() - started, 2),
        )

    def _cost_model(self, offload: str) -> CostModel | None:
        """The policy's cost tables: none without a host pool (nothing to decide) or when
        cost_tables is "none"; "auto": cached for this machine, else a quick profile now (a
        profile that fails is logged as a warning and the fixed rules serve); else the tables at
        that path, refused when measured for another machine or setup."""
        source = self.config.scheduler.cost_tables
        if offload == "off" or source == "none":
            return None
        from neo_async.profile.cache import load_or_profile, load_for

        if source == AUTO:
            try:
                return load_or_profile(self, quick=True)
            except Exception as e:  # noqa: BLE001 - a failed profile must not stop serving
                log.warning("cost_tables_unavailable", error=repr(e), fallback="fixed rules, sequential steps")
                return None
        return load_for(self, Path(source))

    def _num_device_blocks(self, dtype_bytes: int) -> int:
        cfg = self.config.cache
        tokens = cfg.device_kv_tokens
        if tokens is None:
            tokens = AUTO if self.device.type == "cuda" else CPU_DEVICE_KV_TOKENS
        if tokens != AUTO:
            return max(1, int(tokens) // cfg.block_size)
        budget = int(device_free_bytes(self.device) * cfg.device_memory_fraction)
        return max(1, self._blocks_within(budget, dtype_bytes))

    def _num_host_blocks(self, dtype_bytes: int) -> int:
        """0 when offload is off; host_kv_tokens' blocks, or for "auto" a share of available RAM
        bounded by host_kv_auto_max_gib (the pool is touched at start-up)."""
        cfg = self.config.cache
        if cfg.offload == "off":
            return 0
        if cfg.host_kv_tokens != AUTO:
            return int(cfg.host_kv_tokens) // cfg.block_size
        budget = min(int(host_available_bytes() * cfg.host_memory_fraction), int(cfg.host_kv_auto_max_gib * 2**30))
        return self._blocks_within(budget, dtype_bytes)

    def _blocks_within(self, budget_bytes: int, dtype_bytes: int) -> int:
        """Blocks of KV that fit in budget_bytes, never more than 256 full contexts."""
        block_size = self.config.cache.block_size
        per_block = self.spec.kv_bytes_per_token(dtype_bytes) * block_size
        cap = -(-self.max_model_len // block_size) * 256
        return min(budget_bytes // per_block, cap)

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
        self.num_prompt_tokens_total += request.num_prompt_tokens

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
        started = time.perf_counter()
        plan = self.scheduler.schedule()
        executing = time.perf_counter()
        self.schedule_seconds_total += executing - started
        output = self.executor.execute(plan)
        execute_s = time.perf_counter() - executing
        output.execute_s = execute_s
        advanced = self.scheduler.update(plan, output)
        if plan.predicted_s is not None:
            self.predictions.append((plan.predicted_s, execute_s))
        moved = self._account_movement(plan)
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
        self.num_generation_tokens_total += len(advanced)
        self.num_iterations_total += 1
        self.num_pipelined_iterations_total += plan.is_pipelined
        self.num_deferred_total += len(plan.deferred_ids)
        num_prefill = sum(c.num_tokens for c in plan.chunks if not c.is_decode)
        iteration_s = time.perf_counter() - started
        if plan.chunks:
            self._log_iteration(plan, execute_s, executing - started)
        self.last_step = StepStats(
            iteration_s=iteration_s,
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
            schedule_s=executing - started,
        )
        return deltas

    @staticmethod
    def _log_iteration(plan: Plan, iteration_s: float, schedule_s: float) -> None:
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
            measured_ms=round(iteration_s * 1000, 3),
            schedule_ms=round(schedule_s * 1000, 3),
        )

    def _account_movement(self, plan: Plan) -> dict[str, int]:
        """Bytes swapped and host prefill tokens of this plan (added to the totals), and debug
        events for placements and swaps."""
        per_block = self.cache.bytes_per_block
        moved = {
            "out": Plan.num_run_blocks(plan.swap_out) * per_block,
            "in": Plan.num_run_blocks(plan.swap_in) * per_block,
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
            num_swap_out_bytes_total=self.num_swap_bytes_total["out"],
            num_swap_in_bytes_total=self.num_swap_bytes_total["in"],
            num_host_prefill_tokens_total=self.num_host_prefill_tokens_total,
            num_prompt_tokens_total=self.num_prompt_tokens_total,
            num_generation_tokens_total=self.num_generation_tokens_total,
            num_iterations_total=self.num_iterations_total,
            num_pipelined_iterations_total=self.num_pipelined_iterations_total,
            num_deferred_total=self.num_deferred_total,
            schedule_seconds_total=self.schedule_seconds_total,
        )

    def check(self) -> None:
        """Raise AssertionError if any KV accounting invariant (both pools, every request's
        location) is broken."""
        self.scheduler.check()
