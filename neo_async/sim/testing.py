"""Factories for tests of the simulator (and of code driven by it): small deployments and workloads."""

from __future__ import annotations

import math

import numpy as np

from loadgen.workload import RequestSpec
from neo_async.config import SchedulerConfig
from neo_async.sim.setup import Deployment


def t4_deployment(**changes) -> Deployment:
    """Llama-2-7B on a T4 with the paper's 54-block device pool."""
    base = dict(device_kv_tokens=864, host_kv_tokens=16384, scheduler=SchedulerConfig(max_num_seqs=64))
    base.update(changes)
    return Deployment.named("llama-2-7b", "T4", "g4dn.2xlarge", **base)


def mixed_specs(n: int, seed: int = 0) -> list[RequestSpec]:
    rng = np.random.default_rng(seed)
    return [RequestSpec(int(rng.integers(20, 500)), int(rng.integers(1, 60))) for _ in range(n)]


def poisson_offsets(n: int, rate: float, seed: int = 0) -> np.ndarray:
    if math.isinf(rate):
        return np.zeros(n)
    return np.concatenate([[0.0], np.cumsum(np.random.default_rng(seed).exponential(1 / rate, n - 1))])


def prefix_specs(n: int, num_prefixes: int, prefix_len: int, suffix_len: int, output_len: int, seed: int = 0) -> list[RequestSpec]:
    """vLLM's prefix_repetition workload (the load generator's loader)."""
    from loadgen.datasets import DatasetOptions, load_dataset

    options = DatasetOptions(num_prompts=n, seed=seed, prefix_len=prefix_len, suffix_len=suffix_len,
                             num_prefixes=num_prefixes, output_len=output_len)
    return load_dataset("prefix_repetition", None, options)
