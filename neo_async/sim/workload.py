"""Workloads and results in the load generator's terms: its dataset loaders and arrival
processes in, its summary JSON (loadgen.metrics.summarize) and records out."""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime

import numpy as np

from loadgen import arrivals, report
from loadgen.datasets import DatasetOptions, load_dataset
from loadgen.metrics import DEFAULT_PERCENTILES, summarize
from loadgen.workload import RequestSpec
from neo_async.sim.loop import SimRun


@dataclass(frozen=True)
class Workload:
    """A dataset (loadgen's loaders; no tokenizer: lengths only) and its arrivals."""

    dataset_name: str = "synthetic"
    dataset_path: str | None = None
    options: DatasetOptions = DatasetOptions()
    request_rate: float = math.inf
    burstiness: float = 1.0
    use_trace_timestamps: bool = False
    trace_time_scale: float = 1.0

    def specs(self) -> list[RequestSpec]:
        if self.dataset_name == "sharegpt":
            raise ValueError("the simulator takes lengths only: sharegpt needs a tokenizer")
        return load_dataset(self.dataset_name, self.dataset_path, self.options)

    def offsets(self, specs: list[RequestSpec], request_rate: float | None = None) -> np.ndarray:
        if self.use_trace_timestamps:
            return arrivals.trace_offsets([s.timestamp_s for s in specs], self.trace_time_scale)
        rate = self.request_rate if request_rate is None else request_rate
        return arrivals.rate_offsets(len(specs), rate, self.burstiness, np.random.default_rng(self.options.seed))

    def rate_of_record(self, request_rate: float | None = None) -> float | str:
        if self.use_trace_timestamps:
            return "trace"
        return report.json_rate(self.request_rate if request_rate is None else request_rate)


def result_of(
    run: SimRun,
    workload: Workload,
    label: str,
    model_id: str,
    settings: dict,
    request_rate: float | None = None,
    percentiles: tuple[float, ...] = DEFAULT_PERCENTILES,
) -> dict:
    """The load generator's result document for a simulated run (settings + summary)."""
    result = {
        "date": datetime.now().strftime("%Y%m%d-%H%M%S"),
        "label": label,
        "model_id": model_id,
        "tokenizer_id": "(simulated: lengths only)",
        "base_url": "simulated",
        "endpoint": "/v1/completions",
        "dataset_name": workload.dataset_name,
        "dataset_path": workload.dataset_path,
        "prompt_format": "ids",
        "request_rate": workload.rate_of_record(request_rate),
        "burstiness": workload.burstiness,
        "max_concurrency": None,
        "use_trace_timestamps": workload.use_trace_timestamps,
        "trace_time_scale": workload.trace_time_scale,
        "ignore_eos": True,
        "seed": workload.options.seed,
        "simulated": True,
        **settings,
    }
    result.update(summarize(run.records, run.duration_s, percentiles))
    result["num_iterations"] = len(run.iterations)
    result["num_pipelined_iterations"] = run.num_pipelined
    result["num_preemptions"] = run.num_preemptions
    result["num_swapped_out"] = run.num_swapped_out
    result["num_swapped_in"] = run.num_swapped_in
    result |= prefix_cache_summary(run)
    return result


def prefix_cache_summary(run: SimRun) -> dict:
    """Prefix-cache counters and hit rates (shares of the prompt tokens looked up), per pool; a
    host hit copied to the device counts as a host hit and among the copied ones too."""
    queries = run.num_prefix_query_tokens
    share = lambda n: n / queries if queries else 0.0  # noqa: E731
    return {
        "prefix_cache_query_tokens": queries,
        "prefix_cache_hit_tokens_device": run.num_prefix_hit_tokens["device"],
        "prefix_cache_hit_tokens_host": run.num_prefix_hit_tokens["host"],
        "prefix_cache_copied_tokens": run.num_prefix_copied_tokens,
        "prefix_cache_demoted_blocks": run.num_demoted_blocks,
        "prefix_cache_hit_rate": share(sum(run.num_prefix_hit_tokens.values())),
        "prefix_cache_hit_rate_device": share(run.num_prefix_hit_tokens["device"]),
        "prefix_cache_hit_rate_host": share(run.num_prefix_hit_tokens["host"]),
        "prefix_cache_hit_rate_host_in_place": share(run.num_prefix_hit_tokens["host"] - run.num_prefix_copied_tokens),
    }
