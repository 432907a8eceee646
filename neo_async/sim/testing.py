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
