"""How `neo-async serve --data-parallel-size N` divides one machine among N replicas: pure
functions, no processes, no I/O beyond reading the environment handed in.

Each replica is a child `neo-async serve` on 127.0.0.1 with its own port, its own slice of this
process's CPU affinity (the engine sizes its torch and host-kernel thread pools from its
affinity), its own GPU(s) through CUDA_VISIBLE_DEVICES when GPUs are visible, and its own host
pool: with host_kv_tokens = auto, each replica's share of RAM is host_memory_fraction / N; a
number given for host_kv_tokens is per replica.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from neo_async.config import AUTO, Config


@dataclass(frozen=True)
class ReplicaSpec:
    index: int
    port: int
    cpu_ids: tuple[int, ...]  # the CPU affinity of the replica's process
    gpu_ids: tuple[str, ...]  # its CUDA_VISIBLE_DEVICES entries; empty: no GPU (or none visible)
    argv: tuple[str, ...]  # `neo-async serve` arguments, after the subcommand

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def env(self, base: dict[str, str]) -> dict[str, str]:
        env = {**base, "PYTHONUNBUFFERED": "1"}
        if self.gpu_ids:
            env["CUDA_VISIBLE_DEVICES"] = ",".join(self.gpu_ids)
        return env


def visible_gpu_ids(env: dict[str, str], num_detected: int) -> list[str]:
    """The GPUs this process may hand out: CUDA_VISIBLE_DEVICES when set (empty or "-1": none),
    else the `num_detected` devices the driver lists."""
    listed = env.get("CUDA_VISIBLE_DEVICES")
    if listed is None:
        return [str(i) for i in range(num_detected)]
    ids = [item.strip() for item in listed.split(",") if item.strip()]
    return [] if ids[:1] == ["-1"] else ids


def split_evenly(items: list, num_parts: int) -> list[tuple]:
    """items cut into num_parts contiguous runs whose lengths differ by at most one."""
    size, extra = divmod(len(items), num_parts)
    parts, start = [], 0
    for i in range(num_parts):
        end = start + size + (1 if i < extra else 0)
        parts.append(tuple(items[start:end]))
        start = end
    return parts


def config_argv(config: Config) -> list[str]:
    """Flags that rebuild `config` in a child `neo-async serve` (every field that differs from
    the default; server host and port are left to the caller)."""
    argv: list[str] = []
    default = Config()
    for group in dataclasses.fields(Config):
        ours, base = getattr(config, group.name), getattr(default, group.name)
        for f in dataclasses.fields(ours):
            value = getattr(ours, f.name)
            if group.name == "server" and f.name in ("host", "port"):
                continue
            if value == getattr(base, f.name) or value is None:
                continue
            flag = "--" + f.name.replace("_", "-")
            if isinstance(value, bool):
                argv.append(flag if value else "--no-" + flag[2:])
            else:
                argv += [flag, str(value)]
    return argv


def plan_replicas(
    config: Config, num_replicas: int, ports: list[int], cpu_ids: list[int], gpu_ids: list[str]
) -> list[ReplicaSpec]:
    """One spec per replica; raises ValueError when the machine cannot give each its share."""
    if num_replicas < 1:
        raise ValueError(f"data_parallel_size must be >= 1, got {num_replicas}")
    if len(ports) != num_replicas:
        raise ValueError(f"{num_replicas} replicas need {num_replicas} ports, got {len(ports)}")
    if len(cpu_ids) < num_replicas:
        raise ValueError(f"{num_replicas} replicas need at least {num_replicas} CPUs; this process may use {len(cpu_ids)}")
    if gpu_ids and len(gpu_ids) < num_replicas:
        raise ValueError(
            f"{num_replicas} replicas need {num_replicas} GPUs, {len(gpu_ids)} visible "
            f"(CUDA_VISIBLE_DEVICES={','.join(gpu_ids)}): lower --data-parallel-size or expose more GPUs"
        )
    shared = config_argv(config)
    if config.cache.host_kv_tokens == AUTO:
        shared += ["--host-memory-fraction", repr(config.cache.host_memory_fraction / num_replicas)]
    cpu_parts = split_evenly(sorted(cpu_ids), num_replicas)
    gpu_parts = split_evenly(gpu_ids, num_replicas) if gpu_ids else [()] * num_replicas
    return [
        ReplicaSpec(i, port, cpus, gpus, (*shared, "--host", "127.0.0.1", "--port", str(port)))
        for i, (port, cpus, gpus) in enumerate(zip(ports, cpu_parts, gpu_parts))
    ]
