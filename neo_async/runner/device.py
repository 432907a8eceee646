"""Which torch device plays "the device", and its thread budget on CPU-only machines."""

from __future__ import annotations

import os

import torch

from neo_async.native import rust_cpuattn

_DTYPES = {"bfloat16": torch.bfloat16, "float32": torch.float32}


def pick_device() -> torch.device:
    """`cuda` when present; otherwise the CPU plays the device (with a capped KV pool)."""
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def torch_dtype(name: str) -> torch.dtype:
    return _DTYPES[name]


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


def device_free_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free)
    return host_available_bytes()


def host_available_bytes() -> int:
    """MemAvailable: host memory that can be allocated without swapping."""
    with open("/proc/meminfo") as f:
        info = {line.split(":")[0]: int(line.split()[1]) * 1024 for line in f}
    return info.get("MemAvailable", 0)
