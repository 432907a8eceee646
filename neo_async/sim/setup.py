"""One simulated deployment: hardware, model, pools, scheduler settings and its cost model; it
runs a workload under an offload mode and returns the load generator's result document.

Parallelism: `tp` GPUs per replica (tensor parallel, priced by the roofline) and `dp` replicas
on the host (data parallel, replicas.py: each with tp GPUs of its own and 1/dp of the host's
vCPUs, RAM and memory channels; the workload dealt among them)."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path

from neo_async.config import AUTO, SchedulerConfig
from neo_async.model.spec import ModelSpec
from neo_async.sched.costs import CostModel
from neo_async.sim.hardware import HARDWARE_DIR, Calibration, Gpu, Host, load_calibration, load_gpu, load_host
from neo_async.sim.loop import SimRun, prompt_builder, simulate
from neo_async.sim.models import load_model_spec
from neo_async.sim.replicas import deal, merge_runs, replica_host
from neo_async.sim.roofline import RooflineCosts
from neo_async.sim.system import build_scheduler, pool_sizes
from neo_async.sim.workload import Workload, result_of


@dataclass(frozen=True)
class Deployment:
    model: ModelSpec
    gpu: Gpu
    host: Host
    calibration: Calibration
    tp: int = 1  # GPUs per replica (tensor parallel)
    dp: int = 1  # replicas (data parallel), each on tp GPUs and 1/dp of the host
    host_threads: int | None = None  # one replica's kernel threads (all its ranks)
    device_kv_tokens: int | str | None = None  # None / "auto": what fits next to the weights
    host_kv_tokens: int | str = AUTO
    block_size: int = 16
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    cost_tables: str | None = None  # MeasuredCosts JSON (`neo-async profile`) replacing the roofline
    # the pools cache by prefix (the engine's default is on; the paper's experiments ran without)
    enable_prefix_caching: bool = False

    @classmethod
    def named(cls, model: str, gpu: str, host: str, directory: Path = HARDWARE_DIR, **kwargs) -> "Deployment":
        return cls(load_model_spec(model), load_gpu(gpu, directory), load_host(host, directory), load_calibration(directory), **kwargs)

    def replace(self, **changes) -> "Deployment":
        return dataclasses.replace(self, **changes)

    @property
    def name(self) -> str:
        gpus = f"{self.tp}x{self.gpu.name}" if self.tp > 1 else self.gpu.name
        replicas = f"{self.dp} replicas of " if self.dp > 1 else ""
        return f"{replicas}{self.model.name} on {gpus} + {self.host.name}"

    @property
    def replica_host(self) -> Host:
        """The part of the host one replica gets."""
        return replica_host(self.host, self.dp)

    def costs(self) -> CostModel:
        if self.cost_tables:
            from neo_async.sched.cost_tables import MeasuredCosts

            return MeasuredCosts.load(self.cost_tables)
        return RooflineCosts(
            self.model, self.gpu, self.replica_host, self.calibration, self.tp, self.host_threads, self.block_size
        )

    def pool_sizes(self, offload: str):
        """One replica's pools."""
        return pool_sizes(
            self.model, self.gpu, self.replica_host, self.calibration, self.tp, offload,
            self.device_kv_tokens, self.host_kv_tokens, self.block_size,
        )

    def settings(self, offload: str) -> dict:
        """What the result file records about the simulated system (pools: per replica)."""
        sizes = self.pool_sizes(offload)
        return {
            "sim_model": self.model.name,
            "sim_gpu": self.gpu.name,
            "sim_num_gpus": self.tp * self.dp,
            "sim_tensor_parallel_size": self.tp,
            "sim_data_parallel_size": self.dp,
            "sim_host": self.host.name,
            "sim_host_threads": getattr(self.costs(), "host_threads", None),
            "sim_cost_model": self.cost_tables or "roofline",
            "offload": offload,
            "pipeline": self.scheduler.pipeline,
            "device_kv_tokens": sizes.device_blocks * sizes.block_size,
            "host_kv_tokens": sizes.host_blocks * sizes.block_size,
            "max_num_seqs": self.scheduler.max_num_seqs,
            "max_num_batched_tokens": self.scheduler.max_num_batched_tokens,
            "tpot_slo_ms": self.scheduler.tpot_slo_ms,
            "enable_prefix_caching": self.enable_prefix_caching,
        }

    def run(
        self, workload: Workload, offload: str, request_rate: float | None = None, label: str | None = None,
        keep_plans: bool = False,
    ) -> tuple[SimRun, dict]:
        if keep_plans and self.dp > 1:
            raise ValueError("keep_plans needs one replica")
        specs = workload.specs()
        sizes = self.pool_sizes(offload)
        costs = self.costs()
        rate = workload.request_rate if request_rate is None else request_rate
        offsets = workload.offsets(specs, rate)
        shares = deal(len(specs), self.dp)
        runs = [
            simulate([specs[i] for i in share], offsets[share],
                     build_scheduler(self.scheduler, sizes, offload, costs, self.enable_prefix_caching),
                     costs, keep_plans=keep_plans, prompts=prompt_builder(workload.options.seed) if self.enable_prefix_caching else None)
            for share in shares
        ]
        run = runs[0] if self.dp == 1 else merge_runs(runs, shares, len(specs))
        result = result_of(run, workload, label or offload, self.model.name, self.settings(offload), rate)
        return run, result


def throughput_workload(output_len: int, num_prompts: int, input_len: int = 1000, seed: int = 0) -> Workload:
    """The paper's throughput setting: input 1000 +-10%, the given output +-10%, all at once."""
    from loadgen.datasets import DatasetOptions

    options = DatasetOptions(num_prompts=num_prompts, seed=seed, input_len=input_len, output_len=output_len, range_ratio=0.1)
    return Workload("synthetic", None, options, request_rate=math.inf)
