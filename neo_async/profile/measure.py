"""The profile: every cost table measured on a constructed Worker, before an engine serves on it.

`profile_worker(worker, config, quick)` borrows the blocks of both caches (or a scratch host
pool when the worker has none), waits until the host pools' background population is over (it would
compete for the cores), measures each table on its grid (`grids.py`) through the code paths of
real steps (`points.py`), fits the per-layer overheads to whole probe steps (`probes.py`), and
gives every block back. quick: coarse grids and few repeats (about 30 s for the embedded model
on two cores); full: finer grids, more repeats.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import structlog
import torch

from neo_async.profile.grids import Grids, make_grids
from neo_async.profile.key import grid_limits, profile_key
from neo_async.profile.points import Points
from neo_async.profile.probes import StepShape, fit_overheads, measure_steps, runnable
from neo_async.profile.scratch import scratch_blocks, wait_host_pools_populated
from neo_async.profile.timing import Bench, Timer
from neo_async.runner.attention import KVCache
from neo_async.runner.host_lane import HostLane
from neo_async.sched.cost_tables import MeasuredCosts
from neo_async.sched.costs import Table1D, Table2D

if TYPE_CHECKING:
    from neo_async.config import Config
    from neo_async.kv.block_pool import BlockPool
    from neo_async.runner.worker import Worker

log = structlog.get_logger("neo_async.profile")

SCRATCH_HOST_BYTES = 256 << 20
DECODE_AXES = ("decode_requests", "decode_lengths")  # host pool borrowed for the host tables when the worker has none


@dataclasses.dataclass(frozen=True)
class Settings:
    repeats: int
    point_budget_s: float
    budget_s: float  # soft bound of the whole profile: past it, every point is timed once

    @classmethod
    def of(cls, quick: bool) -> "Settings":
        return cls(repeats=5, point_budget_s=0.3, budget_s=30.0) if quick else cls(9, 2.0, 600.0)


@contextlib.contextmanager
def borrowed(
    worker: Worker, config: Config, timer: Timer, pools: tuple[BlockPool, BlockPool] | None = None
) -> Iterator[Points]:
    """Points on scratch blocks: every block of the worker's caches (before an engine accounts
    for them), or the free blocks of an engine's (device, host) pools, given back on exit; a
    scratch host pool when the worker has none."""
    wait_host_pools_populated()
    host_cache = worker.host_cache
    if host_cache is None:
        spec, bs = worker.spec, worker.block_size
        num_blocks = max(8, SCRATCH_HOST_BYTES // worker.cache.bytes_per_block)
        host_cache = KVCache(spec.num_layers, num_blocks, spec.num_kv_heads, bs, spec.head_dim, worker.cache.k.dtype,
                             torch.device("cpu"), pin_for_cuda=worker.device.type == "cuda")
        wait_host_pools_populated()
    lane = worker.executor.host_lane or HostLane("neo-profile-lane")
    try:
        with _scratch(worker, pools) as (device_ids, host_ids):
            if worker.host_cache is None:
                host_ids = list(range(host_cache.k.shape[1]))
            if not device_ids or not host_ids:
                raise RuntimeError("profiling needs free blocks in both pools: profile before serving")
            yield Points(worker, config, timer, device_ids, host_cache, host_ids, lane)
    finally:
        if lane is not worker.executor.host_lane:
            lane.close()


@contextlib.contextmanager
def _scratch(worker: Worker, pools: tuple[BlockPool, BlockPool] | None) -> Iterator[tuple[list[int], list[int]]]:
    if pools is None:
        yield list(range(worker.num_device_blocks)), list(range(worker.num_host_blocks))
        return
    with scratch_blocks(pools[0]) as device_ids, scratch_blocks(pools[1]) as host_ids:
        yield device_ids, host_ids


def profile_worker(worker: Worker, config: Config, quick: bool = True, settings: Settings | None = None,
                   pools: tuple[BlockPool, BlockPool] | None = None, agree: Callable[[Any], Any] | None = None) -> MeasuredCosts:
    """Every table and the fitted overheads, measured on the worker (see `borrowed` for pools).
    A tensor-parallel rank: every rank profiles at once, `agree` handing rank 0's timing
    decisions to the others (see `Timer.agree`), so their collectives pair up; rank 0's tables
    are the step's (the ranks run their shares side by side)."""
    settings = settings or Settings.of(quick)
    started = time.perf_counter()
    timer = Timer(worker.device, repeats=settings.repeats, point_budget_s=settings.point_budget_s,
                  deadline=started + settings.budget_s, agree=agree)
    mode = "quick" if quick else "full"
    log.info("profile_started", mode=mode, budget_s=settings.budget_s)
    with borrowed(worker, config, timer, pools) as points:
        grids = profile_grids(worker, config, points, quick)
        tables: dict[str, Table1D | Table2D] = {}
        over_budget = False
        for name in POINTS:
            t0 = time.perf_counter()
            tables[name] = measure_table(points, grids, name)
            elapsed = time.perf_counter() - started
            log.info("profile_table", table=name, seconds=round(time.perf_counter() - t0, 2), elapsed_s=round(elapsed, 1))
            if elapsed > settings.budget_s and not over_budget and worker.shard.rank == 0:
                over_budget = True
                log.warning("profile_over_budget", budget_s=settings.budget_s, elapsed_s=round(elapsed, 1),
                            hint="the remaining points are timed once each, without warm-up")
        costs = MeasuredCosts(num_layers=worker.spec.num_layers, **tables)  # type: ignore[arg-type]
        t0 = time.perf_counter()
        steps = measure_steps(points, overhead_probes(worker, config))
        costs = fit_overheads(costs, steps)
        log.info("profile_table", table="layer_overhead", seconds=round(time.perf_counter() - t0, 2),
                 layer_overhead_us=round(costs.layer_overhead * 1e6, 1),
                 host_layer_overhead_us=round(costs.host_layer_overhead * 1e6, 1),
                 pipelined_layer_overhead_us=round(costs.pipelined_layer_overhead * 1e6, 1))
    seconds = time.perf_counter() - started
    log.info("profile_done", mode=mode, seconds=round(seconds, 1))
    meta = {"mode": mode, "seconds": round(seconds, 2), "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    return dataclasses.replace(costs, key=profile_key(worker, config), meta=meta)


def profile_grids(worker: Worker, config: Config, points: Points, quick: bool) -> Grids:
    max_tokens, max_seqs = grid_limits(worker, config)
    bs = worker.block_size
    swap_cap = 4 * -(-worker.max_model_len // bs)  # a few requests' worth of blocks, one layer
    num_swap = min(len(points.device_ids), len(points.host_ids), swap_cap)
    return make_grids(max_tokens, max_seqs, worker.max_model_len, bs, num_swap, quick)


# each table's points: (axes of the grid, measured under the pipelined budget, the point's bench)
POINTS: dict[str, tuple[tuple[str, ...], bool, Callable[..., Bench]]] = {
    "linear_sequential": (("linear_tokens",), False, lambda p, t: p.linear(t)),
    "linear_pipelined": (("linear_tokens",), True, lambda p, t: p.linear(t)),
    "device_decode_sequential": (DECODE_AXES, False, lambda p, n, length: p.device_decode(n, length)),
    "device_decode_pipelined": (DECODE_AXES, True, lambda p, n, length: p.device_decode(n, length)),
    "host_decode_sequential": (DECODE_AXES, False, lambda p, n, length: p.host_decode(n, length, False)),
    "host_decode_pipelined": (DECODE_AXES, True, lambda p, n, length: p.host_decode(n, length, True)),
    "swap_blocks": (("swap_blocks",), False, lambda p, n: p.swap(n)),
    "iteration_sampled": (("sampled_rows",), False, lambda p, n: p.iteration_sampled(n)),
    "iteration_prefill_tokens": (("prefill_tokens",), False, lambda p, t: p.iteration_prefill_tokens(t)),
    "prefill": (("prefill_chunks", "prefill_prefixes"), False, lambda p, c, prefix: p.prefill(c, prefix)),
}


def measure_points(points: Points, name: str, at: list[tuple[int, ...]]) -> list[float]:
    """Seconds of the table `name`'s cost at each point (timed in round-robin passes)."""
    _axes, pipelined, bench = POINTS[name]
    return points.measure([bench(points, *p) for p in at], pipelined)


def measure_table(points: Points, grids: Grids, name: str) -> Table1D | Table2D:
    axes = [getattr(grids, a) for a in POINTS[name][0]]
    if len(axes) == 1:
        ys = measure_points(points, name, [(x,) for x in axes[0]])
        return Table1D(tuple(float(x) for x in axes[0]), tuple(ys))
    xs, ys = axes
    zs = measure_points(points, name, [(x, y) for x in xs for y in ys])
    rows = tuple(tuple(zs[i * len(ys) : (i + 1) * len(ys)]) for i in range(len(xs)))
    return Table2D(tuple(float(x) for x in xs), tuple(float(y) for y in ys), rows)


def overhead_probes(worker: Worker, config: Config) -> list[StepShape]:
    """Steps the overheads are fitted to: small batches, where the glue is a visible share;
    device-only ones for the device glue, sequential ones with host decodes for the host job's
    glue, the pipelined ones with the device lane busy (device decodes in b0), so its glue shows."""
    n = max(2, min(8, config.scheduler.max_num_seqs // 2))
    kv = min(256, worker.max_model_len - 1)
    shapes = [
        StepShape(device_decodes=1, kv_tokens=kv),
        StepShape(device_decodes=n, kv_tokens=kv),
        StepShape(device_decodes=2 * n, kv_tokens=kv),
        StepShape(device_decodes=n, host_decodes=n, kv_tokens=kv),
        StepShape(device_decodes=1, host_decodes=2, kv_tokens=kv),
        StepShape(device_decodes=n, host_decodes=n, kv_tokens=kv, pipelined=True),
        StepShape(device_decodes=2 * n, host_decodes=2, kv_tokens=kv, pipelined=True),
    ]
    return runnable(shapes, worker.host_cache is not None)
