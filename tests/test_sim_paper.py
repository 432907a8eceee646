"""The paper's measurement rules (neo_async/sim/paper.py) against hand-computed values, and the
this-machine comparison (sim/bench_compare.py) on a benchmark file whose numbers are known."""

from __future__ import annotations

import json

import numpy as np
import pytest

from loadgen.records import RequestRecord
from neo_async.config import SchedulerConfig
from neo_async.sched.cost_tables import MeasuredCosts
from neo_async.sched.costs import Table1D, Table2D
from neo_async.sim import paper
from neo_async.sim.bench_compare import bench_specs, compare
from neo_async.sim.loop import simulate
from neo_async.sim.system import PoolSizes, build_scheduler


def test_window_throughput_drops_the_first_and_last_thirty_percent_of_gaps() -> None:
    # 11 completions, 10 gaps: as the artifact's get_tp, gaps [round(11 * 0.3), round(11 * 0.7)) = [3, 8) kept
    gaps = [1.0, 1.0, 1.0, 0.5, 0.5, 0.5, 0.5, 0.5, 1.0, 1.0]
    ends = list(np.cumsum([0.0, *gaps]))
    assert paper.window_throughput(list(reversed(ends))) == pytest.approx(2.0)  # order does not matter
    with pytest.raises(ValueError):
        paper.window_throughput([1.0])


def test_paper_latency_skips_the_first_quarter_by_arrival() -> None:
    records = []
    for i, (latency, output_len) in enumerate([(100.0, 1), (4.0, 2), (6.0, 3), (8.0, 4)]):
        r = RequestRecord(request_id=i, prompt_len=10, output_len=output_len, scheduled_s=float(3 - i))
        r.success, r.e2el_s = True, latency
        records.append(r)
    # arrival order is 3, 2, 1, 0: request 3 (8 s / 4) is skipped
    assert paper.mean_latency_per_token_s(records) == pytest.approx((2.0 + 2.0 + 100.0) / 3)


def test_the_artifact_settings() -> None:
    assert paper.A10G_DEVICE_BLOCKS == {"off": 1650, "neo": 1600}
    assert paper.T4_DEVICE_BLOCKS == {"off": 54, "neo": 52}
    assert max(paper.A10G_GAIN_CURVES["g5.16xlarge"].values()) == paper.A10G_GAINS["g5.16xlarge"]


def _costs() -> MeasuredCosts:
    flat = Table2D((1.0, 64.0), (16.0, 4096.0), ((1e-4, 2e-4), (2e-4, 4e-4)))
    return MeasuredCosts(
        num_layers=4,
        linear_sequential=Table1D((1.0, 512.0), (1e-4, 5e-3)),
        linear_pipelined=Table1D((1.0, 512.0), (2e-4, 6e-3)),
        prefill=Table2D((16.0, 512.0), (0.0, 2048.0), ((1e-4, 5e-4), (2e-3, 8e-3))),
        device_decode_sequential=flat, device_decode_pipelined=flat,
        host_decode_sequential=flat, host_decode_pipelined=flat,
        swap_blocks=Table1D((1.0, 64.0), (1e-5, 64e-5)),
        iteration_sampled=Table1D((1.0, 64.0), (1e-3, 3e-3)),
        iteration_prefill_tokens=Table1D((16.0, 512.0), (1e-5, 2e-4)),
    )


def test_compare_simulates_each_bench_row_with_its_pools_and_workload(tmp_path) -> None:
    costs = _costs()
    tables = tmp_path / "costs.json"
    costs.save(tables)
    specs = bench_specs(6, 300, 20, vocab_size=49152)
    assert all(270 <= s.prompt_len <= 330 and 18 <= s.output_len <= 22 for s in specs)
    expected = {}
    for mode, host_blocks in (("off", 0), ("neo", 200)):
        config = SchedulerConfig(max_num_seqs=64, max_num_batched_tokens=512, pipeline="off" if mode == "off" else "auto")
        scheduler = build_scheduler(config, PoolSizes(512 // 16, host_blocks, 16), mode, costs)
        assert (scheduler.policy is None) == (mode == "off")  # as the engine: no cost model without a host pool
        run = simulate(specs, np.zeros(len(specs)), scheduler, costs)
        expected[mode] = sum(r.num_output_tokens for r in run.records) / run.duration_s
    rows = [
        {"output_len": 20, "device_kv_tokens": 512, "mode": "off", "pipeline": "off", "tok_s": expected["off"],
         "pipelined_steps": "0/1", "preemptions": 0, "swaps_out": 0, "swaps_in": 0, "host_kv_blocks": 0},
        {"output_len": 20, "device_kv_tokens": 512, "mode": "neo", "pipeline": "auto", "tok_s": expected["neo"] / 2,
         "pipelined_steps": "0/1", "preemptions": 0, "swaps_out": 0, "swaps_in": 0, "host_kv_blocks": 200},
    ]
    bench = tmp_path / "bench.json"
    bench.write_text(json.dumps({"num_prompts": 6, "input_len": 300, "rows": rows}))
    got = compare(bench, tables)
    assert [r["error"] for r in got] == pytest.approx([0.0, 1.0])
