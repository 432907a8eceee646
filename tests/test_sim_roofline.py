"""The roofline cost model against rooflines computed by hand, and the hardware files' sources."""

from __future__ import annotations

import re

import pytest

from neo_async.sim.hardware import HARDWARE_DIR, load_calibration, load_gpu, load_host
from neo_async.sim.models import load_model_spec, num_params
from neo_async.sim.roofline import RooflineCosts

# Llama-2-7B: hidden 4096, FFN 11008, 32 heads of 128 (no GQA)
LAYER_PARAMS = 4096 * 3 * 4096 + 4096 * 4096 + 3 * 4096 * 11008  # QKV, O, gate+up+down


def t4_costs(host: str = "g4dn.2xlarge", **kwargs) -> RooflineCosts:
    return RooflineCosts(load_model_spec("llama-2-7b"), load_gpu("T4"), load_host(host), load_calibration(), **kwargs)


def test_model_sizes_match_published_parameter_counts() -> None:
    assert num_params(load_model_spec("llama-2-7b")) == 6_738_149_376  # 6.74B
    assert round(num_params(load_model_spec("llama-3-8b")) / 1e9, 2) == 8.03
    assert round(num_params(load_model_spec("llama-3-70b")) / 1e9, 1) == 70.6
    assert load_model_spec("llama-3-8b").kv_bytes_per_token(2) == 32 * 2 * 8 * 128 * 2


def test_decode_linear_is_weight_bound_and_prefill_compute_bound() -> None:
    costs = t4_costs()
    weights_s = (LAYER_PARAMS * 2 + 1 * (6 * 4096 + 3 * 11008) * 2) / (320e9 * 0.8)
    assert costs.linear(1, False) == pytest.approx(weights_s + 40e-6)
    # the T4's power cap: 24 TFLOPS sustained, under 0.6 x 65 TFLOPS of datasheet peak
    compute_s = 2 * 2048 * LAYER_PARAMS / 24e12
    assert costs.linear(2048, False) == pytest.approx(compute_s + 40e-6)
    a10g = RooflineCosts(load_model_spec("llama-2-7b"), load_gpu("A10G"), load_host("g5.8xlarge"), load_calibration())
    assert a10g.linear(4096, False) == pytest.approx(2 * 4096 * LAYER_PARAMS / (125e12 * 0.6) + 40e-6)


def test_attention_costs() -> None:
    costs = t4_costs()
    kv_token = 2 * 4096 * 2  # K and V of one token in one layer, bf16
    assert costs.device_decode_attention(4, 1000, False) == pytest.approx((1000 * kv_token + 4 * 2 * 4096 * 2) / 256e9)
    # prefill of 500 tokens from scratch: 4 * (pairs) * q_size flops at 40% of peak
    pairs = 500 * (500 - 499 / 2)
    assert costs.prefill_attention(500, 500) == pytest.approx(4 * pairs * 4096 / min(65e12 * 0.4, 24e12))
    # host: 8 vCPUs = 4 cores x 12 GB/s (under 0.8 x 140.8 GB/s of channels), our kernel at 0.55
    host_bw = 4 * 12e9 * 0.55
    staged = 3 * (2 * 4096 + 2 * 4096) * 2 / (16 * 0.985e9 * 0.8)
    expected = 1000 * kv_token / host_bw + 2 * 10e-6 + staged + 30e-6
    assert costs.host_decode_attention(3, 1000, False) == pytest.approx(expected)


def test_host_attention_turns_compute_bound_with_grouped_query_heads() -> None:
    costs = RooflineCosts(load_model_spec("llama-3-8b"), load_gpu("A10G"), load_host("g5.16xlarge"), load_calibration())
    bandwidth_s = 10_000 * (2 * 1024 * 2) / (0.8 * 204.8e9 * 0.55)
    compute_s = 10_000 * 4 * 4096 / (64 * 12.8e9)
    kernel = costs.host_decode_attention(1, 10_000, False) - costs.host_decode_attention(1, 0, False)
    assert kernel == pytest.approx(max(bandwidth_s, compute_s))


def test_host_bandwidth_bounded_by_cores_then_dies_then_channels() -> None:
    efficiency = load_calibration().stream_efficiency
    host = load_host("g5.16xlarge")
    assert host.read_gbs(2, efficiency) == pytest.approx(20.0)  # one core (2 hyperthreads)
    assert host.read_gbs(64, efficiency) == pytest.approx(0.8 * 204.8)  # 4 dies' links exceed the channels
    # g5 sizes: 4 and 8 cores fit one Zen 2 die (its fabric link reads 46.9 GB/s), 16 cores two
    gbs = {name: load_host(name).read_gbs(load_host(name).vcpus, efficiency) for name in ("g5.2xlarge", "g5.4xlarge", "g5.8xlarge")}
    assert gbs == pytest.approx({"g5.2xlarge": 46.9, "g5.4xlarge": 46.9, "g5.8xlarge": 2 * 46.9})
    # Intel hosts have no die bound: cores, then channels
    assert load_host("g4dn.4xlarge").read_gbs(16, efficiency) == pytest.approx(8 * 12.0)


def test_swap_and_tensor_parallelism() -> None:
    costs = t4_costs()
    block = 16 * 2 * 4096 * 2
    assert costs.swap(10) == pytest.approx(10e-6 + 10 * block / (16 * 0.985e9 * 0.8))
    calibration = load_calibration()
    spec, h100, host = load_model_spec("llama-3-70b"), load_gpu("H100"), load_host("dgx-h100")
    one = RooflineCosts(spec, h100, host, calibration, tp=1)
    two = RooflineCosts(spec, h100, host, calibration, tp=2)
    allreduce = 15e-6 + 2 * (1 / 2) * 8 * 8192 * 2 / (450e9 * 0.7)
    # weight-bound decode: half the weights per GPU, plus two all-reduces per layer
    assert two.linear(8, False) - 2 * allreduce - 40e-6 == pytest.approx((one.linear(8, False) - 40e-6) / 2)
    assert two.device_decode_attention(8, 4000, False) == pytest.approx(one.device_decode_attention(8, 4000, False) / 2)
    with pytest.raises(ValueError):
        RooflineCosts(spec, h100, host, calibration, tp=3)


@pytest.mark.parametrize("name", ["gpus.toml", "hosts.toml", "calibration.toml"])
def test_every_hardware_number_has_a_source_comment(name: str) -> None:
    """Above every value, past other values and [section] headers, the first line is a comment."""
    lines = (HARDWARE_DIR / name).read_text().splitlines()
    is_entry = [bool(re.match(r"^(\[|[A-Za-z_0-9-]+ = )", line)) for line in lines]
    for i, line in enumerate(lines):
        if is_entry[i] and not line.startswith("["):
            j = i
            while j > 0 and is_entry[j - 1]:
                j -= 1
            assert j > 0 and lines[j - 1].startswith("#"), f"{name}: {line!r} has no source comment"
