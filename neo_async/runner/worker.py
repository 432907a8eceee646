"""One rank's data plane: the device, its thread budget, the model (or this rank's shard of
it), the device and host KV caches, and the executor that runs a Plan on them.

Build order: Worker, then cost tables (the profiler measures a Worker through its executor's
own operations), then the Engine (scheduler and block accounting over the Worker's pool
sizes, output processing, stats). Nothing here knows about requests beyond a Plan."""

from __future__ import annotations

import time

import torch
import torch.distributed as dist

from neo_async.config import AUTO, CPU_DEVICE_KV_TOKENS, CacheConfig, ModelConfig
from neo_async.model.llama import LlamaModel
from neo_async.model.loader import load_model
from neo_async.model.tensor_parallel import Shard
from neo_async.platform.devices import device_free_bytes, host_available_bytes, pick_device, torch_dtype
from neo_async.runner.attention import KVCache
from neo_async.runner.executor import Executor
from neo_async.runner.layer_ops import LayerOps
from neo_async.runner.sampler import Sampler
from neo_async.runner.threads import ThreadBudget
from neo_async.sched.plan import ExecuteOutput, KVLocation, Plan


class Worker:
    def __init__(
        self, model_cfg: ModelConfig, cache_cfg: CacheConfig, device: torch.device | None = None, shard: Shard | None = None,
    ) -> None:
        """shard: this process's tensor-parallel rank (joined already); every rank builds its
        Worker at the same time (the pool sizes are agreed by a collective), and only rank 0
        samples."""
        self.device = device or pick_device()
        self.shard = shard or Shard()
        self.threads = ThreadBudget.configure(self.device, model_cfg.device_threads, model_cfg.host_threads)
        dtype = torch_dtype(model_cfg.dtype)
        started = time.perf_counter()
        skip_tokenizer = model_cfg.skip_tokenizer_init or self.shard.rank > 0
        loaded = load_model(model_cfg.model, dtype, self.device, skip_tokenizer, shard=self.shard)
        self.spec = loaded.spec  # the rank's (its heads) when sharded
        self.tokenizer = loaded.tokenizer
        self.max_model_len = min(model_cfg.max_model_len or self.spec.max_position_embeddings, self.spec.max_position_embeddings)
        self.model = LlamaModel(self.spec, loaded.weights, self.max_model_len, self.shard)
        self.block_size = cache_cfg.block_size
        per_block = self.spec.kv_bytes_per_token(dtype.itemsize) * self.block_size
        self.num_device_blocks = num_device_blocks(cache_cfg, self.device, per_block, self.max_model_len)
        self.num_host_blocks = num_host_blocks(cache_cfg, per_block, self.max_model_len, self.shard.size)
        if self.shard.is_sharded:  # one block table for every rank: the smallest pools
            sizes = torch.tensor([self.num_device_blocks, self.num_host_blocks], dtype=torch.int64, device=self.device)
            dist.all_reduce(sizes, op=dist.ReduceOp.MIN, group=self.shard.group)
            self.num_device_blocks, self.num_host_blocks = (int(x) for x in sizes)
        kv_shape = (self.spec.num_layers, self.spec.num_kv_heads, self.block_size, self.spec.head_dim)
        self.cache = KVCache(kv_shape[0], self.num_device_blocks, *kv_shape[1:], dtype, self.device)
        self.host_cache = None
        if self.num_host_blocks:
            pin = self.device.type == "cuda"
            self.host_cache = KVCache(kv_shape[0], self.num_host_blocks, *kv_shape[1:], dtype, torch.device("cpu"),
                                      pin_for_cuda=pin)
        caches = {KVLocation.DEVICE: self.cache}
        if self.host_cache is not None:
            caches[KVLocation.HOST] = self.host_cache
        self.sampler = Sampler(self.spec.vocab_size, self.spec.eos_token_ids, self.device)
        self.executor = Executor(LayerOps(self.model, caches, self.threads), self.sampler, samples=self.shard.rank == 0)
        self.load_s = time.perf_counter() - started
        self.failure: str | None = None  # a single process never fails apart (see RankGroup)

    def execute(self, plan: Plan) -> ExecuteOutput:
        return self.executor.execute(plan)

    @property
    def bytes_per_block(self) -> int:
        """One block's K and V over every layer, in either pool, on every rank together."""
        return self.cache.bytes_per_block * self.shard.size

    def close(self) -> None:
        if self.executor.host_lane is not None:
            self.executor.host_lane.close()
            self.executor.host_lane = None


def num_device_blocks(cfg: CacheConfig, device: torch.device, bytes_per_block: int, max_model_len: int) -> int:
    """device_kv_tokens' blocks; for "auto" a share of free device memory (the CPU device:
    CPU_DEVICE_KV_TOKENS when unset)."""
    tokens = cfg.device_kv_tokens
    if tokens is None:
        tokens = AUTO if device.type == "cuda" else CPU_DEVICE_KV_TOKENS
    if tokens != AUTO:
        return max(1, int(tokens) // cfg.block_size)
    budget = int(device_free_bytes(device) * cfg.device_memory_fraction)
    return max(1, blocks_within(budget, bytes_per_block, cfg.block_size, max_model_len))


def num_host_blocks(cfg: CacheConfig, bytes_per_block: int, max_model_len: int, num_ranks: int = 1) -> int:
    """0 when offload is off; host_kv_tokens' blocks, or for "auto" a share of available RAM
    bounded by host_kv_auto_max_gib (the pool is touched at start-up), divided among the ranks
    of one machine."""
    if cfg.offload == "off":
        return 0
    if cfg.host_kv_tokens != AUTO:
        return int(cfg.host_kv_tokens) // cfg.block_size
    budget = min(int(host_available_bytes() * cfg.host_memory_fraction), int(cfg.host_kv_auto_max_gib * 2**30)) // num_ranks
    return blocks_within(budget, bytes_per_block, cfg.block_size, max_model_len)


def blocks_within(budget_bytes: int, bytes_per_block: int, block_size: int, max_model_len: int) -> int:
    """Blocks of KV that fit in budget_bytes, never more than 256 full contexts."""
    cap = -(-max_model_len // block_size) * 256
    return min(budget_bytes // bytes_per_block, cap)
