"""A rank's thread budget: torch's intra-op pool (the device lane on the CPU device) and
rust_cpuattn's team (host attention), in sequential and pipelined steps."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from neo_async.native import rust_cpuattn


@dataclass(frozen=True)
class ThreadBudget:
    device: int  # torch's intra-op threads in sequential steps
    host: int  # rust_cpuattn's team (0 without the native kernel)
    pipelined_device: int | None  # torch's threads during pipelined steps; None: unchanged (CUDA)
    sequential_host_parts: int  # kernel calls a sequential step's host attention is split into

    @classmethod
    def configure(cls, device: torch.device, device_threads: int | None, host_threads: int | None) -> ThreadBudget:
        """Sizes both pools (process-wide) and returns the budget."""
        num_device, num_host = configure_threads(device, device_threads, host_threads)
        return cls(
            device=num_device,
            host=num_host,
            pipelined_device=pipelined_device_threads(device, device_threads, num_host),
            sequential_host_parts=sequential_host_parts(device, num_device, num_host),
        )


def configure_threads(device: torch.device, device_threads: int | None, host_threads: int | None) -> tuple[int, int]:
    """Size torch's intra-op pool and rust_cpuattn's pool; returns both sizes.

    Default kernel threads: 1 on the CPU device, where the kernel runs between torch's ops on
    the calling thread while torch's OpenMP workers still spin-wait on the other cores (a
    second kernel thread fights them: measured slower at 500-token contexts); with a CUDA
    device, every core but one, which the launching thread keeps (it runs the host job's
    hand-offs and launches the next layer's kernels while the kernel's team works).
    """
    cores = len(os.sched_getaffinity(0))
    if device.type == "cpu":
        torch.set_num_threads(max(1, device_threads or cores))
    num_torch = torch.get_num_threads()
    if rust_cpuattn is None:
        return num_torch, 0
    rust_cpuattn.set_num_threads(host_threads or default_host_threads(device, cores))
    return num_torch, rust_cpuattn.get_num_threads()


def default_host_threads(device: torch.device, cores: int) -> int:
    """rust_cpuattn's team when `host_threads` is not set (see `configure_threads`)."""
    return 1 if device.type == "cpu" else max(1, cores - 1)


def pipelined_device_threads(device: torch.device, device_threads: int | None, num_host_threads: int) -> int | None:
    """torch's intra-op budget during a pipelined step on the CPU device: the cores the host
    lane (its worker thread running the kernel's team) does not use, so the two lanes overlap on
    separate cores; None on CUDA (torch's CPU threads are not the device lane there). Sequential
    steps keep the full budget."""
    if device.type != "cpu":
        return None
    cores = len(os.sched_getaffinity(0))
    return device_threads or max(1, cores - max(1, num_host_threads))


def sequential_host_parts(device: torch.device, num_device_threads: int, num_host_threads: int) -> int:
    """Kernel calls a sequential step's host decode attention is split into, run at once: one on
    the calling thread, one on the host lane. On the CPU device torch idles while a sequential
    step's host attention runs, so the device lane's cores take a share (2 when torch has at
    least twice the host lane's threads); on CUDA 1 (the kernel's team has every core)."""
    if device.type != "cpu":
        return 1
    return 2 if num_device_threads >= 2 * max(1, num_host_threads) else 1


@contextlib.contextmanager
def torch_threads(num_threads: int | None) -> Iterator[None]:
    """torch's intra-op pool sized num_threads for the block (unchanged when None)."""
    before = torch.get_num_threads()
    if num_threads is not None and num_threads != before:
        torch.set_num_threads(num_threads)
    try:
        yield
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)
