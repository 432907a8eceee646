"""Cost tables cached on disk, keyed by everything that changes the numbers.

Directory: $NEO_ASYNC_CACHE_DIR, else $XDG_CACHE_HOME/neo-async/profiles, else
~/.cache/neo-async/profiles. File: `costs-<hash of the key>.json`. A file is reused only when
its stored key equals the wanted one (a hash collision, a hand-edited file or another
version's tables are never reused); an unreadable or malformed file is ignored with a warning.
A full profile may stand in for a quick one: the mode is not part of the key.
"""

from __future__ import annotations

import hashlib
import json
import os
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog
import torch

import neo_async
from neo_async.config import SchedulerConfig
from neo_async.native import rust_cpuattn
from neo_async.sched.cost_tables import FORMAT, MeasuredCosts

if TYPE_CHECKING:
    from neo_async.engine import Engine

log = structlog.get_logger("neo_async.profile")

# /proc/cpuinfo flags that change how fast torch's and the kernel's code runs
ISA_FLAGS = ("avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx512_bf16", "avx512_fp16",
             "amx_tile", "amx_bf16", "amx_int8")


def cache_dir() -> Path:
    if os.environ.get("NEO_ASYNC_CACHE_DIR"):
        return Path(os.environ["NEO_ASYNC_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "neo-async" / "profiles"


def grid_limits(engine: Engine) -> tuple[int, int]:
    """The tables' token and request bounds: the scheduler's limits, raised to the defaults
    (within half the context, where prefill chunks still have room for a cached prefix), so
    that engines with smaller limits share one profile."""
    default, cfg = SchedulerConfig(), engine.config.scheduler
    tokens = min(max(cfg.max_num_batched_tokens, default.max_num_batched_tokens), engine.max_model_len // 2)
    return max(tokens, cfg.max_num_batched_tokens), max(cfg.max_num_seqs, default.max_num_seqs)


def profile_key(engine: Engine) -> dict[str, Any]:
    """What the tables depend on: model shape, dtype, device, thread budgets, block size, the
    grids' bounds (the scheduler's limits), the code (package, torch, native kernel), the
    tables' format. JSON types only, so that a stored key compares equal after a round trip."""
    s, cfg = engine.spec, engine.config
    return {
        "format": FORMAT,
        "model": {
            "num_layers": s.num_layers, "hidden_size": s.hidden_size, "num_heads": s.num_heads,
            "num_kv_heads": s.num_kv_heads, "head_dim": s.head_dim, "intermediate_size": s.intermediate_size,
            "vocab_size": s.vocab_size, "attention_bias": s.attention_bias,
        },
        "dtype": cfg.model.dtype,
        "device": device_name(engine.device),
        "device_threads": engine.num_device_threads,
        "pipelined_device_threads": engine.executor.pipelined_device_threads,
        "host_threads": engine.num_host_threads,
        "block_size": cfg.cache.block_size,
        "grid_limits": list(grid_limits(engine)),
        "linear_dtype": str(engine.model.weights.lm_head.compute_dtype),
        "max_model_len": engine.max_model_len,
        "version": package_version(),
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


def package_version() -> str:
    try:
        return metadata.version("neo-async")
    except metadata.PackageNotFoundError:
        return neo_async.__version__


def cache_path(key: dict[str, Any], directory: Path | None = None) -> Path:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]
    return (directory or cache_dir()) / f"costs-{digest}.json"


def load_cached(key: dict[str, Any], directory: Path | None = None) -> MeasuredCosts | None:
    """The cached tables for exactly this key, or None (missing, foreign, stale or corrupt)."""
    path = cache_path(key, directory)
    if not path.exists():
        return None
    try:
        costs = MeasuredCosts.load(path)
    except (OSError, ValueError) as e:
        log.warning("profile_cache_unreadable", path=str(path), error=str(e))
        return None
    if costs.key != key:
        log.warning("profile_cache_foreign", path=str(path), differs=sorted(_differences(costs.key, key)))
        return None
    return costs


def store(costs: MeasuredCosts, directory: Path | None = None) -> Path:
    path = cache_path(costs.key, directory)
    costs.save(path)
    return path


def load_or_profile(engine: Engine, quick: bool = True) -> MeasuredCosts:
    """The engine's start-up: its cached tables, else a profile (stored for the next start)."""
    key = profile_key(engine)
    costs = load_cached(key)
    if costs is not None:
        log.info("profile_cache_hit", path=str(cache_path(key)), mode=costs.meta.get("mode"))
        return costs
    from neo_async.profile.measure import profile_engine

    costs = profile_engine(engine, quick=quick)
    try:
        path = store(costs)
        log.info("profile_cached", path=str(path))
    except OSError as e:  # a read-only home must not stop the engine
        log.warning("profile_cache_unwritable", path=str(cache_path(key)), error=str(e))
    return costs


def load_for(engine: Engine, path: Path) -> MeasuredCosts:
    """Tables written by `neo-async profile` for this engine; ValueError when they were measured
    for another machine, model, dtype, thread split or version (named), or cannot be read."""
    try:
        costs = MeasuredCosts.load(path)
    except OSError as e:
        raise ValueError(f"cost_tables: cannot read {path}: {e}") from None
    key = profile_key(engine)
    if costs.key != key:
        differs = ", ".join(sorted(_differences(costs.key, key)))
        raise ValueError(f"cost_tables: {path} was measured for another setup (differs in: {differs}); run `neo-async profile`")
    return costs


def _differences(a: dict[str, Any], b: dict[str, Any]) -> set[str]:
    return {k for k in set(a) | set(b) if a.get(k) != b.get(k)}
