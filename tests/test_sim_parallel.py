"""The simulator's two kinds of parallelism: tensor parallel ranks (per-GPU weights and KV / N,
all-reduces, host attention split over the ranks' cores) and data-parallel replicas (the host
divided, the workload dealt, throughput x N at one replica's latency). Pure and fast."""

from __future__ import annotations

import math

import pytest

from loadgen.datasets import DatasetOptions
from neo_async.config import SchedulerConfig
from neo_async.sim.hardware import load_calibration, load_gpu, load_host
from neo_async.sim.models import load_model_spec
from neo_async.sim.replicas import deal, replica_host
from neo_async.sim.roofline import RooflineCosts
from neo_async.sim.setup import Deployment
from neo_async.sim.workload import Workload


def _costs(tp: int, host: str = "dgx-h100-2gpu", host_threads: int | None = None) -> RooflineCosts:
    return RooflineCosts(load_model_spec("llama-3-70b"), load_gpu("H100"), load_host(host), load_calibration(), tp, host_threads)


def test_tensor_parallel_ranks_split_host_attention_over_their_cores():
    one, two = _costs(1, host_threads=2), _costs(2, host_threads=2)
    assert two.rank_threads == 1
    # bandwidth-bound at two threads: each rank reads half the bytes with one core, as one rank with two
    assert two.host_decode_attention(4, 8000, False) == pytest.approx(one.host_decode_attention(4, 8000, False), rel=0.02)
    # with every core: the channels bound both, so the split costs nothing and gains nothing
    big_one, big_two = _costs(1), _costs(2)
    kernel = lambda c: c.host_decode_attention(4, 100_000, False)  # noqa: E731
    assert kernel(big_two) == pytest.approx(kernel(big_one), rel=0.02)
    with pytest.raises(ValueError, match="at least one per rank"):
        _costs(2, host_threads=1)


def test_tensor_parallel_halves_per_gpu_weights_and_kv_and_adds_all_reduces():
    spec, h100, calibration = load_model_spec("llama-3-70b"), load_gpu("H100"), load_calibration()
    one, two = _costs(1), _costs(2)
    assert two.device_decode_attention(8, 4000, False) == pytest.approx(one.device_decode_attention(8, 4000, False) / 2)
    link = h100.nvlink_gbs * 1e9 * calibration.nvlink_efficiency
    all_reduce = calibration.allreduce_latency_s + 8 * spec.hidden_size * 2 / link  # 2 (tp - 1) / tp = 1
    layer = calibration.layer_overhead_s
    assert two.linear(8, False) - 2 * all_reduce - layer == pytest.approx((one.linear(8, False) - layer) / 2)
    with pytest.raises(ValueError, match="does not fit"):  # 70B in bf16 needs two 80 GB GPUs
        Deployment.named("llama-3-70b", "H100", "dgx-h100-2gpu", tp=1).pool_sizes("off")
    assert Deployment.named("llama-3-70b", "H100", "dgx-h100-2gpu", tp=2).pool_sizes("off").device_blocks > 0


def test_a_replica_gets_its_share_of_the_host():
    host = load_host("g5.12xlarge")
    quarter = replica_host(host, 4)
    assert (quarter.vcpus, quarter.memory_gib, quarter.socket_gbs) == (12, 48, pytest.approx(204.8 / 4))
    assert replica_host(host, 1) is host
    with pytest.raises(ValueError, match="at least 64 vCPUs"):
        replica_host(host, 64)
    assert deal(7, 3) == [[0, 3, 6], [1, 4], [2, 5]]


def _workload(num_prompts: int, rate: float) -> Workload:
    options = DatasetOptions(num_prompts=num_prompts, seed=0, input_len=500, output_len=100, range_ratio=0.1)
    return Workload("synthetic", None, options, request_rate=rate)


def test_replicas_multiply_throughput_at_one_replicas_latency():
    scheduler = SchedulerConfig(max_num_seqs=64)
    one = Deployment.named("llama-3-8b", "A10G", "g5.12xlarge", dp=1, scheduler=scheduler)
    four = one.replace(dp=4)
    _, single = one.replace(host=replica_host(one.host, 4)).run(_workload(60, 1.0), "neo")  # one replica's share
    run, whole = four.run(_workload(240, 4.0), "neo")
    assert whole["completed"] == 240 and [r.request_id for r in run.records] == list(range(240))
    assert whole["sim_num_gpus"] == 4 and whole["sim_data_parallel_size"] == 4
    assert whole["output_throughput"] == pytest.approx(4 * single["output_throughput"], rel=0.15)
    assert whole["median_tpot_ms"] == pytest.approx(single["median_tpot_ms"], rel=0.15)
    assert "4 replicas of llama-3-8b" in four.name


def test_keeping_plans_needs_one_replica():
    with pytest.raises(ValueError, match="one replica"):
        Deployment.named("llama-3-8b", "A10G", "g5.12xlarge", dp=2).run(_workload(4, math.inf), "neo", keep_plans=True)
