"""Thread budgets on the CPU device: a pipelined step gives torch the cores the host lane does
not use and restores the full budget afterwards."""

import os

import torch

from neo_async.runner.threads import pipelined_device_threads, torch_threads


def test_pipelined_budget_leaves_the_host_lane_its_cores():
    cores = len(os.sched_getaffinity(0))
    cpu = torch.device("cpu")
    assert pipelined_device_threads(cpu, None, 1) == max(1, cores - 1)
    assert pipelined_device_threads(cpu, 3, 1) == 3  # an explicit device_threads wins
    assert pipelined_device_threads(torch.device("cuda"), None, 1) is None


def test_budget_is_restored_after_the_step_even_on_error():
    before = torch.get_num_threads()
    target = 1 if before > 1 else 2
    with torch_threads(target):
        assert torch.get_num_threads() == target
    assert torch.get_num_threads() == before
    try:
        with torch_threads(target):
            raise RuntimeError("step failed")
    except RuntimeError:
        pass
    assert torch.get_num_threads() == before


def test_next_to_a_gpu_the_launching_thread_keeps_a_core():
    """With a CUDA device the kernel's team takes every core but one, so the thread launching
    the GPU's kernels is never crowded out by it; on the CPU device the kernel runs on the
    calling thread alone."""
    from neo_async.native import rust_cpuattn
    from neo_async.runner.threads import configure_threads, default_host_threads

    assert default_host_threads(torch.device("cuda"), 16) == 15
    assert default_host_threads(torch.device("cuda"), 1) == 1
    assert default_host_threads(torch.device("cpu"), 16) == 1
    before = torch.get_num_threads(), rust_cpuattn.get_num_threads() if rust_cpuattn else None
    try:
        _num_torch, num_host = configure_threads(torch.device("cuda"), None, None)
        cores = len(os.sched_getaffinity(0))
        assert rust_cpuattn is None or num_host == max(1, cores - 1)
        configure_threads(torch.device("cuda"), None, 2)  # an explicit budget wins
        assert rust_cpuattn is None or rust_cpuattn.get_num_threads() == 2
    finally:
        torch.set_num_threads(before[0])
        if rust_cpuattn is not None:
            rust_cpuattn.set_num_threads(before[1])
