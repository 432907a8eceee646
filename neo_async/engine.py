"""The synchronous engine: one `step()` = schedule, execute, update."""

from __future__ import annotations

import time
import uuid

import structlog

from neo_async.config import Config
from neo_async.engine_stats import EngineStats, StepStats
from neo_async.errors import EngineOverloadedError
from neo_async.kv.block_pool import BlockPool
from neo_async.model.llama import LlamaModel
from neo_async.model.loader import load_model
from neo_async.output_processor import OutputProcessor
from neo_async.outputs import RequestDelta
from neo_async.runner.attention import KVCache
from neo_async.runner.device import configure_threads, device_free_bytes, pick_device, torch_dtype
from neo_async.runner.executor import Executor
from neo_async.runner.sampler import Sampler
from neo_async.sampling_params import SamplingParams
from neo_async.sched.request import Request
from neo_async.sched.scheduler import Scheduler

log = structlog.get_logger("neo_async.engine")


class Engine:
    def __init__(self, config: Config) -> None:
        config.validate()
        self.config = config
        self.device = pick_device()
        self.num_torch_threads, self.num_kernel_threads = configure_threads(
            self.device, config.model.torch_threads, config.model.kernel_threads
        )
        dtype = torch_dtype(config.model.dtype)
        started = time.perf_counter()
        loaded = load_model(config.model.model, dtype, self.device)
        self.spec = loaded.spec
        self.tokenizer = loaded.tokenizer
        self.model_name = config.model.served_model_name or loaded.spec.name
        self.max_model_len = min(config.model.max_model_len or self.spec.max_position_embeddings, self.spec.max_position_embeddings)
        self.model = LlamaModel(self.spec, loaded.weights, self.max_model_len)
        cache_cfg = config.cache
        num_blocks = self._num_device_blocks(dtype.itemsize)
        self.cache = KVCache(
            self.spec.num_layers, num_blocks, self.spec.num_kv_heads, cache_cfg.block_size, self.spec.head_dim, dtype, self.device
        )
        self.pool = BlockPool(num_blocks, cache_cfg.block_size, "device")
        self.scheduler = Scheduler(config.scheduler, self.pool)
        self.sampler = Sampler(self.spec.vocab_size, self.spec.eos_token_ids, self.device)
        self.executor = Executor(self.model, self.cache, self.sampler)
        self.outputs = OutputProcessor(self.tokenizer, self.spec.eos_token_ids)
        self.num_prompt_tokens_total = 0
        self.num_generation_tokens_total = 0
        self.num_iterations_total = 0
        self.last_step: StepStats | None = None
        log.info(
            "engine_ready",
            model=self.model_name,
            device=str(self.device),
            dtype=config.model.dtype,
            device_kv_blocks=num_blocks,
            block_size=cache_cfg.block_size,
            max_model_len=self.max_model_len,
            torch_threads=self.num_torch_threads,
            kernel_threads=self.num_kernel_threads,
            load_s=round(time.perf_counter() - started, 2),
        )

    def _num_device_blocks(self, dtype_bytes: int) -> int:
        cfg = self.config.cache
        if cfg.device_kv_tokens is not None:
            return max(1, cfg.device_kv_tokens // cfg.block_size)
        per_block = self.spec.kv_bytes_per_token(dtype_bytes) * cfg.block_size
        budget = int(device_free_bytes(self.device) * cfg.device_memory_fraction)
        cap = -(-self.max_model_len // cfg.block_size) * 256  # never more than 256 full contexts
        return max(1, min(budget // per_block, cap))

    # ---- requests -------------------------------------------------------------------------

    def make_request(
        self, prompt: str | list[int], params: SamplingParams, request_id: str | None = None, arrival_time: float | None = None
    ) -> Request:
        """Validate and tokenize; raises ValueError on bad input. Does not queue."""
        params.validate()
        if isinstance(prompt, str):
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

    def add_request(self, request: Request) -> None:
        if len(self.scheduler.waiting) >= self.config.scheduler.max_waiting:
            raise EngineOverloadedError(f"{len(self.scheduler.waiting)} requests are waiting; try again later")
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
        output = self.executor.execute(plan)
        advanced = self.scheduler.update(plan, output)
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
        num_prefill = sum(c.num_tokens for c in plan.chunks if not c.is_decode)
        self.last_step = StepStats(
            iteration_s=time.perf_counter() - started,
            num_seqs=len(plan.chunks),
            num_batched_tokens=plan.num_batched_tokens,
            num_prefill_tokens=num_prefill,
            num_decode_tokens=plan.num_batched_tokens - num_prefill,
            num_preempted=len(plan.preempted_ids),
        )
        return deltas

    def stats(self) -> EngineStats:
        return EngineStats(
            num_running=len(self.scheduler.running),
            num_waiting=len(self.scheduler.waiting),
            num_device_blocks_total=self.pool.num_blocks,
            num_device_blocks_used=self.pool.num_used,
            num_host_blocks_total=0,
            num_host_blocks_used=0,
            num_requests_on_host=0,
            num_preemptions_total=self.scheduler.num_preemptions_total,
            num_prompt_tokens_total=self.num_prompt_tokens_total,
            num_generation_tokens_total=self.num_generation_tokens_total,
            num_iterations_total=self.num_iterations_total,
        )

    def check(self) -> None:
        """Raise AssertionError if any KV accounting invariant is broken."""
        self.scheduler.check()
