"""A simulated serving system: hardware, model, pool sizes and the scheduler built on them,
as the engine builds them (the same Scheduler, BlockPools and config)."""

from __future__ import annotations

from dataclasses import dataclass

from neo_async.config import AUTO, SchedulerConfig
from neo_async.kv.block_pool import BlockPool
from neo_async.model.spec import ModelSpec
from neo_async.sched.costs import CostModel
from neo_async.sched.scheduler import Scheduler
from neo_async.sim.hardware import Calibration, Gpu, Host
from neo_async.sim.models import num_params

GIB = 2**30


@dataclass(frozen=True)
class PoolSizes:
    device_blocks: int
    host_blocks: int
    block_size: int


def weights_gib(model: ModelSpec, dtype_bytes: int = 2) -> float:
    return num_params(model) * dtype_bytes / GIB


def device_kv_tokens_auto(model: ModelSpec, gpu: Gpu, tp: int, calibration: Calibration, dtype_bytes: int = 2) -> int:
    """KV tokens that fit next to the weights on tp GPUs (the engine's device_kv_tokens = auto)."""
    per_gpu = gpu.memory_gib * calibration.memory_fraction - weights_gib(model, dtype_bytes) / tp - calibration.reserve_gib
    if per_gpu <= 0:
        raise ValueError(f"{model.name} does not fit on {tp} x {gpu.name} ({weights_gib(model):.1f} GiB of weights)")
    return int(per_gpu * tp * GIB // model.kv_bytes_per_token(dtype_bytes))


def host_kv_tokens_auto(model: ModelSpec, host: Host, calibration: Calibration, dtype_bytes: int = 2) -> int:
    return int(host.memory_gib * calibration.host_memory_fraction * GIB // model.kv_bytes_per_token(dtype_bytes))


def pool_sizes(
    model: ModelSpec,
    gpu: Gpu,
    host: Host,
    calibration: Calibration,
    tp: int,
    offload: str,
    device_kv_tokens: int | str | None,
    host_kv_tokens: int | str,
    block_size: int = 16,
) -> PoolSizes:
    if device_kv_tokens in (None, AUTO):
        device_kv_tokens = device_kv_tokens_auto(model, gpu, tp, calibration)
    if host_kv_tokens == AUTO:
        host_kv_tokens = host_kv_tokens_auto(model, host, calibration)
    host_blocks = 0 if offload == "off" else int(host_kv_tokens) // block_size
    return PoolSizes(max(1, int(device_kv_tokens) // block_size), host_blocks, block_size)


def build_scheduler(
    config: SchedulerConfig, sizes: PoolSizes, offload: str, costs: CostModel | None, enable_prefix_caching: bool = False
) -> Scheduler:
    """As the engine builds it: with offload off the scheduler gets no cost model (the engine
    loads none: there is nothing to decide), whatever prices the simulated iterations."""
    device = BlockPool(sizes.device_blocks, sizes.block_size, "device", enable_caching=enable_prefix_caching)
    host = BlockPool(sizes.host_blocks, sizes.block_size, "host", enable_caching=enable_prefix_caching)
    return Scheduler(config, device, host, offload, costs=None if offload == "off" else costs)
