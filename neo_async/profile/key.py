"""What a profile's tables depend on (the key they are cached under) and the bounds of their
grids."""

from __future__ import annotations

import functools
import hashlib
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

import neo_async
from neo_async.config import Config, SchedulerConfig
from neo_async.native import rust_cpuattn
from neo_async.sched.cost_tables import FORMAT

if TYPE_CHECKING:
    from neo_async.runner.worker import Worker

# /proc/cpuinfo flags that change how fast torch's and the kernel's code runs
ISA_FLAGS = ("avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx512_bf16", "avx512_fp16",
             "amx_tile", "amx_bf16", "amx_int8")


def grid_limits(worker: Worker, config: Config) -> tuple[int, int]:
    """The tables' token and request bounds: the scheduler's limits, raised to the defaults
    (within half the context, where prefill chunks still have room for a cached prefix), so
    that engines with smaller limits share one profile."""
    default, cfg = SchedulerConfig(), config.scheduler
    tokens = min(max(cfg.max_num_batched_tokens, default.max_num_batched_tokens), worker.max_model_len // 2)
    return max(tokens, cfg.max_num_batched_tokens), max(cfg.max_num_seqs, default.max_num_seqs)


def profile_key(worker: Worker, config: Config) -> dict[str, Any]:
    """What the tables depend on: model shape, dtype, device, thread budgets, block size, the
    grids' bounds (the scheduler's limits), the code (package, torch, native kernel), the
    tables' format. JSON types only, so that a stored key compares equal after a round trip."""
    s, cfg = worker.spec, config
    return {
        "format": FORMAT,
        "model": {
            "num_layers": s.num_layers, "hidden_size": s.hidden_size, "num_heads": s.num_heads,
            "num_kv_heads": s.num_kv_heads, "head_dim": s.head_dim, "intermediate_size": s.intermediate_size,
            "vocab_size": s.vocab_size, "attention_bias": s.attention_bias, "tensor_parallel_size": s.tp_size,
        },
        "dtype": cfg.model.dtype,
        "device": device_name(worker.device),
        "device_threads": worker.threads.device,
        "pipelined_device_threads": worker.threads.pipelined_device,
        "host_threads": worker.threads.host,
        "block_size": cfg.cache.block_size,
        "grid_limits": list(grid_limits(worker, config)),
        "linear_dtype": str(worker.model.weights.lm_head.compute_dtype),
        "max_model_len": worker.max_model_len,
        "version": package_version(),
        "code": code_fingerprint(),
        "torch": torch.__version__,
        "native_kernel": rust_cpuattn is not None,
    }


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return cpu_name()


def cpu_name(cpuinfo: str | None = None) -> str:
    """The CPU model (name, family, model, stepping, cache) and the ISA flags that matter."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            import platform

            return platform.processor() or platform.machine()
    fields: dict[str, str] = {}
    for line in cpuinfo.split("\n\n")[0].splitlines():
        name, _, value = line.partition(":")
        fields.setdefault(name.strip(), value.strip())
    flags = set(fields.get("flags", "").split())
    parts = [fields.get("model name", "unknown cpu")]
    parts += [f"{k}={fields[k]}" for k in ("cpu family", "model", "stepping", "cache size") if k in fields]
    parts.append("isa=" + ",".join(f for f in ISA_FLAGS if f in flags))
    return "; ".join(parts)


# the code the measured timings depend on (the data plane); the rest of the package prices
# nothing the tables hold
_TIMED_PACKAGES = ("model", "runner", "kernels", "platform")


@functools.cache
def code_fingerprint() -> str:
    """A digest of the data plane's sources and the native extension's file: tables measured on
    other code (a rebuilt kernel, a changed layer) are measured again, whatever the version."""
    digest = hashlib.sha256()
    root = Path(neo_async.__file__).parent
    files = sorted(f for name in _TIMED_PACKAGES for f in (root / name).glob("*.py"))
    if rust_cpuattn is not None:
        files += [Path(f) for f in (getattr(rust_cpuattn, "__file__", None),) if f]
        native = getattr(rust_cpuattn, "rust_cpuattn", None)  # the compiled module inside the package
        files += [Path(f) for f in (getattr(native, "__file__", None),) if f]
    for f in files:
        digest.update(f.name.encode())
        digest.update(f.read_bytes())
    return digest.hexdigest()[:16]


def package_version() -> str:
    try:
        return metadata.version("neo-async")
    except metadata.PackageNotFoundError:
        return neo_async.__version__
