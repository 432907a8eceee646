"""This machine, simulated against measured: `neo-async bench offload`'s throughput workload run
through the simulator with the cost tables `neo-async profile` measured here, each row of the
benchmark's JSON beside its simulation.

The workload is the benchmark's own (`bench.offload.make_workload`: the same seed, so the same
lengths), all requests at once; the pools are the row's (device cap, host blocks); the scheduler
settings are the ones given (the benchmark's defaults unless told). The scheduler's plans do not
depend on time here (every request is queued at 0), so simulated and measured runs make the same
plans and any difference is the cost tables' pricing of them.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np

from loadgen.workload import RequestSpec
from neo_async.config import SchedulerConfig
from neo_async.sched.cost_tables import MeasuredCosts
from neo_async.sim.loop import simulate
from neo_async.sim.models import load_model_spec
from neo_async.sim.system import PoolSizes, build_scheduler


def bench_specs(num_prompts: int, input_len: int, output_len: int, vocab_size: int, seed: int = 0) -> list[RequestSpec]:
    """The lengths `bench offload` sends (its generator draws token ids too: the vocabulary size
    matters for the lengths)."""
    from neo_async.bench.offload import make_workload

    return [RequestSpec(prompt_len=len(p), output_len=m) for p, m in make_workload(num_prompts, input_len, output_len, vocab_size, seed)]


def compare(
    bench_path: str | Path, cost_tables: str | Path, model: str = "smollm2-135m",
    scheduler: SchedulerConfig | None = None, block_size: int = 16, seed: int = 0,
) -> list[dict]:
    """One dict per benchmark row: measured and simulated tokens/s, their relative error, and
    what each run did (iterations, pipelined, preemptions, swaps)."""
    bench = json.loads(Path(bench_path).read_text())
    costs = MeasuredCosts.load(cost_tables)
    spec = load_model_spec(model)
    base = scheduler or SchedulerConfig(max_num_seqs=64, max_num_batched_tokens=512)  # bench offload's defaults
    rows = []
    for row in bench["rows"]:
        specs = bench_specs(bench["num_prompts"], bench["input_len"], row["output_len"], spec.vocab_size, seed)
        sizes = PoolSizes(row["device_kv_tokens"] // block_size, int(row.get("host_kv_blocks") or 0), block_size)
        config = dataclasses.replace(base, pipeline=row["pipeline"])  # "off" on the device-only rows
        run = simulate(specs, np.zeros(len(specs)), build_scheduler(config, sizes, row["mode"], costs), costs)
        simulated = sum(r.num_output_tokens for r in run.records) / run.duration_s
        rows.append({
            "output_len": row["output_len"],
            "device_kv_tokens": row["device_kv_tokens"],
            "mode": row["mode"],
            "pipeline": row["pipeline"],
            "measured_tok_s": row["tok_s"],
            "simulated_tok_s": simulated,
            "error": simulated / row["tok_s"] - 1,
            "measured_steps": f"{row['pipelined_steps']}, {row['preemptions']} preempted, swaps {row['swaps_out']}/{row['swaps_in']}",
            "simulated_steps": f"{run.num_pipelined}/{len(run.iterations)}, {run.num_preemptions} preempted, "
                               f"swaps {run.num_swapped_out}/{run.num_swapped_in}",
        })
    return rows


def format_comparison(rows: list[dict]) -> str:
    lines = [
        "| output | device cap | mode | pipeline | measured tok/s | simulated tok/s | error | measured steps | simulated steps |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['output_len']} | {r['device_kv_tokens']} | {r['mode']} | {r['pipeline']} | {r['measured_tok_s']:.1f} "
            f"| {r['simulated_tok_s']:.1f} | {r['error']:+.1%} | {r['measured_steps']} | {r['simulated_steps']} |"
        )
    return "\n".join(lines)
