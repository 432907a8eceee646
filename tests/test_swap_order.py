"""A plan's swap-in and swap-out may share host blocks: the scheduler swaps in first, freeing the
swapped-in request's host blocks, and a swap-out later in the same plan may be given them when
the host pool is nearly full. The executor therefore copies swap-ins before swap-outs."""

from __future__ import annotations

import random

import pytest
import torch

from neo_async.config import Config
from neo_async.engine import Engine
from neo_async.sched.plan import CopyRun, Plan
from tests.model_factory import write_random_checkpoint
from tests.test_scheduler_offload import make_request, make_scheduler, run_step


def _overlapping_plan() -> Plan | None:
    """The first plan of seeded random workloads whose swap-out writes a host block its swap-in
    reads, or None."""
    for seed in range(400):
        rng = random.Random(seed)
        s = make_scheduler(
            device_blocks=rng.randint(6, 12), host_blocks=rng.randint(6, 14), block_size=4,
            swap_in_watermark=rng.choice([0.5, 0.9, 1.0]), max_num_seqs=rng.choice([4, 8, 16]),
        )
        num_added = 0
        for _ in range(200):
            if rng.random() < 0.4 and num_added < 30:
                try:
                    s.add(make_request(f"r{num_added}", rng.randint(1, 20), max_tokens=rng.randint(1, 24)))
                except ValueError:  # longer than either pool
                    pass
                num_added += 1
            plan = run_step(s)
            read = {r.src_start + i for r in plan.swap_in for i in range(r.num_blocks)}
            written = {r.dst_start + i for r in plan.swap_out for i in range(r.num_blocks)}
            if read & written:
                return plan
    return None


def test_the_scheduler_plans_swap_outs_into_host_blocks_a_swap_in_frees():
    assert _overlapping_plan() is not None


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    path = tmp_path_factory.mktemp("swap")
    write_random_checkpoint(path, "llama_gqa", seed=9)
    config = Config().override(
        model=str(path), dtype="float32", block_size=16, offload="neo", device_kv_tokens=128, host_kv_tokens=128, cost_tables="none"
    )
    return Engine(config)


def test_the_executor_reads_swap_in_sources_before_swap_out_writes(engine):
    device, host = engine.worker.cache, engine.worker.host_cache
    gen = torch.Generator().manual_seed(5)
    for cache in (device, host):
        cache.k.copy_(torch.randn(cache.k.shape, generator=gen))
        cache.v.copy_(torch.randn(cache.v.shape, generator=gen))
    host_before = (host.k[:, 2].clone(), host.v[:, 2].clone())
    device_before = (device.k[:, 5].clone(), device.v[:, 5].clone())
    # host block 2 goes to device block 1, and device block 5 takes host block 2's place
    plan = Plan(swap_in=[CopyRun(2, 1, 1)], swap_out=[CopyRun(5, 2, 1)])
    engine.worker.executor.execute(plan)
    assert torch.equal(device.k[:, 1], host_before[0]) and torch.equal(device.v[:, 1], host_before[1])
    assert torch.equal(host.k[:, 2], device_before[0]) and torch.equal(host.v[:, 2], device_before[1])
