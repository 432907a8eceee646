"""Data-parallel replicas in the simulator: N copies of one deployment on one machine, each with
its own GPUs and 1/N of the host, the requests dealt among them in turn.

NOTE: round-robin dealing is what the router's policies amount to when every replica sees the
same mix of requests; a load-aware router does better when lengths vary widely, so the merged
figures are a floor for N replicas behind `power_of_two`.
"""

from __future__ import annotations

import dataclasses

from neo_async.sim.hardware import Host
from neo_async.sim.loop import SimRun


def replica_host(host: Host, num_replicas: int) -> Host:
    """One replica's share of the host: its vCPUs, RAM and memory channels divided by N (the
    replicas run at once, so they share the channels); a core's own bandwidth stays."""
    if num_replicas < 1:
        raise ValueError(f"data_parallel_size must be >= 1, got {num_replicas}")
    if num_replicas == 1:
        return host
    if host.vcpus < num_replicas:
        raise ValueError(f"{num_replicas} replicas need at least {num_replicas} vCPUs; {host.name} has {host.vcpus}")
    return dataclasses.replace(
        host,
        name=f"{host.name}/{num_replicas}",
        vcpus=host.vcpus // num_replicas,
        memory_gib=host.memory_gib / num_replicas,
        socket_gbs=host.socket_gbs / num_replicas,
    )


def deal(num_requests: int, num_replicas: int) -> list[list[int]]:
    """Request indices per replica: request i goes to replica i mod N."""
    return [list(range(r, num_requests, num_replicas)) for r in range(num_replicas)]


def merge_runs(runs: list[SimRun], shares: list[list[int]], num_requests: int) -> SimRun:
    """One run of the whole deployment from its replicas' runs (each in its share's order, on
    the same clock): records back in workload order, the last replica's end as the duration."""
    records = [None] * num_requests
    for run, share in zip(runs, shares, strict=True):
        for index, record in zip(share, run.records, strict=True):
            record.request_id = index
            records[index] = record
    iterations = sorted((it for run in runs for it in run.iterations), key=lambda it: it.start_s)
    return SimRun(
        records=records,  # type: ignore[arg-type]  # every slot is filled: the shares partition the indices
        duration_s=max(run.duration_s for run in runs),
        iterations=iterations,
        num_preemptions=sum(run.num_preemptions for run in runs),
        num_swapped_out=sum(run.num_swapped_out for run in runs),
        num_swapped_in=sum(run.num_swapped_in for run in runs),
        num_prefix_query_tokens=sum(run.num_prefix_query_tokens for run in runs),
        num_prefix_hit_tokens={k: sum(run.num_prefix_hit_tokens[k] for run in runs) for k in ("device", "host")},
        num_prefix_copied_tokens=sum(run.num_prefix_copied_tokens for run in runs),
        num_demoted_blocks=sum(run.num_demoted_blocks for run in runs),
    )
