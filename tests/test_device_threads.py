"""Thread budgets on the CPU device: a pipelined step gives torch the cores the host lane does
not use and restores the full budget afterwards."""

import os

import torch

from neo_async.runner.device import pipelined_device_threads
from neo_async.runner.executor import _device_threads


def test_pipelined_budget_leaves_the_host_lane_its_cores():
    cores = len(os.sched_getaffinity(0))
    cpu = torch.device("cpu")
    assert pipelined_device_threads(cpu, None, 1) == max(1, cores - 1)
    assert pipelined_device_threads(cpu, 3, 1) == 3  # an explicit device_threads wins
    assert pipelined_device_threads(torch.device("cuda"), None, 1) is None


def test_budget_is_restored_after_the_step_even_on_error():
    before = torch.get_num_threads()
    target = 1 if before > 1 else 2
    with _device_threads(target):
        assert torch.get_num_threads() == target
    assert torch.get_num_threads() == before
    try:
        with _device_threads(target):
            raise RuntimeError("step failed")
    except RuntimeError:
        pass
    assert torch.get_num_threads() == before
