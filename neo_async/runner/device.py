"""Which torch device plays "the device", and its thread budget on CPU-only machines."""

from __future__ import annotations

import os

import torch

_DTYPES = {"bfloat16": torch.bfloat16, "float32": torch.float32}


def pick_device() -> torch.device:
    """`cuda` when present; otherwise the CPU plays the device (with a capped KV pool)."""
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def torch_dtype(name: str) -> torch.dtype:
    return _DTYPES[name]


def configure_threads(device: torch.device, torch_threads: int | None) -> int:
    """Give torch its thread budget (CPU device only); returns the number set."""
    if device.type != "cpu":
        return torch.get_num_threads()
    threads = torch_threads or len(os.sched_getaffinity(0))
    torch.set_num_threads(max(1, threads))
    return torch.get_num_threads()


def device_free_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free)
    with open("/proc/meminfo") as f:
        info = {line.split(":")[0]: int(line.split()[1]) * 1024 for line in f}
    return info.get("MemAvailable", 0)
