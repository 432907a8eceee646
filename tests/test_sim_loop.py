"""The event loop's invariants: time never goes back, every request finishes with exactly the
tokens the workload asked for, results in the load generator's shape, and no torch."""

from __future__ import annotations

import math
import subprocess
import sys

import pytest

from loadgen.datasets import DatasetOptions
from loadgen.schema import check_result
from neo_async.config import SchedulerConfig
from neo_async.sim.clock import VirtualClock
from neo_async.sim.loop import simulate
from neo_async.sim.system import build_scheduler, pool_sizes
from neo_async.sim.workload import Workload, result_of
from neo_async.sim.testing import mixed_specs, poisson_offsets, t4_deployment


def run_mixed(offload: str, pipeline: str, rate: float, n: int = 60):
    deployment = t4_deployment(scheduler=SchedulerConfig(max_num_seqs=32, pipeline=pipeline))
    d = deployment
    sizes = pool_sizes(d.model, d.gpu, d.host, d.calibration, d.tp, offload, d.device_kv_tokens, d.host_kv_tokens)
    costs = d.costs()
    scheduler = build_scheduler(d.scheduler, sizes, offload, costs)
    specs, offsets = mixed_specs(n), poisson_offsets(n, rate)
    return specs, offsets, simulate(specs, offsets, scheduler, costs, check=True), scheduler


@pytest.mark.parametrize("offload,pipeline", [("off", "off"), ("neo", "off"), ("neo", "on"), ("neo", "auto"), ("full", "auto")])
@pytest.mark.parametrize("rate", [math.inf, 2.0])
def test_time_forward_every_request_finishes_token_counts_match(offload: str, pipeline: str, rate: float) -> None:
    specs, offsets, run, scheduler = run_mixed(offload, pipeline, rate)
    assert scheduler.num_unfinished == 0
    previous_end = 0.0
    for it in run.iterations:
        assert previous_end <= it.start_s < it.end_s
        previous_end = it.end_s
    assert run.duration_s == pytest.approx(previous_end)
    for spec, offset, record in zip(specs, offsets, run.records, strict=True):
        assert record.success, record.error
        assert record.num_output_tokens == spec.output_len == len(record.chunk_times_s)
        assert record.prompt_len == spec.prompt_len
        assert record.sent_s == pytest.approx(offset)
        assert 0 < record.ttft_s <= record.e2el_s
        assert record.chunk_times_s == sorted(record.chunk_times_s)
        assert record.e2el_s == record.chunk_times_s[-1]
        assert offset + record.e2el_s <= run.duration_s + 1e-9
    total = sum(s.prompt_len + s.output_len - 1 for s in specs)  # the last token is never fed back
    recomputed = sum(it.num_batched_tokens for it in run.iterations) - total
    assert recomputed >= 0 and (recomputed == 0) == (run.num_preemptions == 0)


def test_neo_uses_the_host_and_beats_device_only_on_a_starved_t4() -> None:
    _, _, off, _ = run_mixed("off", "off", math.inf, n=40)
    _, _, neo, _ = run_mixed("neo", "auto", math.inf, n=40)
    assert any(it.num_host_decodes for it in neo.iterations)
    assert neo.duration_s < off.duration_s


def test_refused_requests_fail_like_the_server_and_the_result_validates() -> None:
    deployment = t4_deployment(host_kv_tokens=1024, scheduler=SchedulerConfig(max_num_seqs=8))
    options = DatasetOptions(num_prompts=12, input_len=800, output_len=20, range_ratio=0.9, seed=3)
    workload = Workload("synthetic", None, options, request_rate=4.0)
    run, result = deployment.run(workload, "neo")
    assert check_result(result) == []
    refused = [r for r in run.records if not r.success]
    assert refused and all(r.http_status == 400 and "KV" in r.error for r in refused)
    assert result["completed"] + result["failed"] == 12
    assert result["simulated"] and result["offload"] == "neo"


def test_virtual_clock_refuses_to_go_back() -> None:
    clock = VirtualClock()
    clock.advance(1.5)
    with pytest.raises(ValueError):
        clock.advance(-0.1)
    with pytest.raises(ValueError):
        clock.jump_to(1.0)
    with pytest.raises(ValueError):
        clock.advance(float("nan"))
    assert clock.jump_to(2.0) == 2.0


def test_result_document_matches_loadgen_schema() -> None:
    specs, offsets, run, _ = run_mixed("neo", "auto", 3.0, n=20)
    workload = Workload("synthetic", None, DatasetOptions(num_prompts=20), request_rate=3.0)
    result = result_of(run, workload, "neo", "llama-2-7b", {"offload": "neo"}, 3.0)
    assert check_result(result) == []
    assert result["completed"] == 20 and result["total_output_tokens"] == sum(s.output_len for s in specs)


def test_simulator_never_imports_torch() -> None:
    code = (
        "import sys, math\n"
        "import neo_async.sim.cli, neo_async.sim.planner, neo_async.sim.reproduce\n"
        "from neo_async.sim.testing import t4_deployment\n"
        "from neo_async.sim.workload import Workload\n"
        "from loadgen.datasets import DatasetOptions\n"
        "t4_deployment().run(Workload('synthetic', None, DatasetOptions(num_prompts=5, input_len=100, output_len=5)), 'neo')\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


def test_a_shared_prefix_workload_hits_the_cache_and_the_hits_are_not_paid() -> None:
    from neo_async.sim.testing import prefix_specs
    from neo_async.sim.workload import prefix_cache_summary

    d = t4_deployment(device_kv_tokens=2048)
    specs = prefix_specs(48, num_prefixes=6, prefix_len=512, suffix_len=32, output_len=16)
    offsets = poisson_offsets(48, 2.0)
    runs = {}
    for caching in (False, True):
        sizes = pool_sizes(d.model, d.gpu, d.host, d.calibration, d.tp, "neo", d.device_kv_tokens, d.host_kv_tokens)
        scheduler = build_scheduler(d.scheduler, sizes, "neo", d.costs(), enable_prefix_caching=caching)
        runs[caching] = simulate(specs, offsets, scheduler, d.costs(), check=True)
        assert scheduler.num_unfinished == 0 and scheduler.device_pool.num_used == scheduler.host_pool.num_used == 0
        prefilled = sum(it.num_batched_tokens for it in runs[caching].iterations)
        expected = sum(s.prompt_len + s.output_len - 1 for s in specs)  # every token once, but the hits
        hits = sum(runs[caching].num_prefix_hit_tokens.values())
        assert prefilled <= expected - hits + sum(s.prompt_len for s in specs) * runs[caching].num_preemptions
    summary = prefix_cache_summary(runs[True])
    assert summary["prefix_cache_hit_rate"] > 0.5 and prefix_cache_summary(runs[False])["prefix_cache_hit_rate"] == 0
    assert summary["prefix_cache_query_tokens"] >= sum(s.prompt_len for s in specs)
    ttft = {c: sorted(r.ttft_s for r in run.records)[len(specs) // 2] for c, run in runs.items()}
    assert ttft[True] < ttft[False] / 2


def test_simulate_cli_prints_the_hit_rates_of_a_prefix_workload() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "neo_async", "simulate", "--gpu", "T4", "--host", "g4dn.2xlarge", "--model", "llama-2-7b",
         "--device-kv-tokens", "2048", "--dataset-name", "prefix_repetition", "--num-prompts", "16",
         "--prefix-repetition-prefix-len", "256", "--prefix-repetition-suffix-len", "16",
         "--prefix-repetition-num-prefixes", "2", "--output-len", "4"],
        capture_output=True, text=True, timeout=300,
    )
    assert out.returncode == 0, out.stderr
    line = next(x for x in out.stdout.splitlines() if x.startswith("prefix cache:"))
    assert "hit 0.0%" not in line, line
    off = subprocess.run(
        [sys.executable, "-m", "neo_async", "simulate", "--gpu", "T4", "--host", "g4dn.2xlarge", "--model", "llama-2-7b",
         "--device-kv-tokens", "2048", "--no-enable-prefix-caching", "--num-prompts", "4", "--input-len", "64", "--output-len", "4"],
        capture_output=True, text=True, timeout=300,
    )
    assert off.returncode == 0 and "prefix cache:" not in off.stdout, off.stderr
