"""MeasuredCosts (pure): the CostModel it implements from hand-made tables, its JSON round trip
and its refusal of other formats and malformed files."""

from __future__ import annotations

import json

import pytest

from neo_async.sched.cost_tables import FORMAT, MeasuredCosts
from neo_async.sched.costs import Table1D, Table2D
from neo_async.sched.predict import Load, pipelined_time, sequential_time


def _decode_table(a: float, b: float, c: float) -> Table2D:
    """z = a + b*requests + c*requests*length on a grid: bilinear, so exact between points."""
    xs, ys = (1.0, 4.0, 16.0), (16.0, 256.0, 1024.0)
    return Table2D(xs, ys, tuple(tuple(a + b * n + c * n * length for length in ys) for n in xs))


def costs(**overrides) -> MeasuredCosts:
    fields = dict(
        num_layers=10,
        linear_sequential=Table1D((1.0, 100.0), (1e-3, 100e-3)),  # 1 ms per token
        linear_pipelined=Table1D((1.0, 100.0), (2e-3, 200e-3)),
        prefill=Table2D((16.0, 256.0), (0.0, 1024.0), ((1e-3, 3e-3), (10e-3, 30e-3))),
        device_decode_sequential=_decode_table(1e-4, 1e-5, 1e-8),
        device_decode_pipelined=_decode_table(2e-4, 1e-5, 1e-8),
        host_decode_sequential=_decode_table(1e-4, 2e-5, 4e-8),
        host_decode_pipelined=_decode_table(3e-4, 2e-5, 4e-8),
        swap_blocks=Table1D((1.0, 64.0), (1e-5, 64e-5)),
        iteration_sampled=Table1D((1.0, 64.0), (2e-3, 65e-3)),  # 1 ms + 1 ms per row
        iteration_prefill_tokens=Table1D((16.0, 512.0), (16e-6, 512e-6)),
        layer_overhead=50e-6,
        host_layer_overhead=30e-6,
        pipelined_layer_overhead=80e-6,
        key={"dtype": "bfloat16", "model": {"num_layers": 10}},
        meta={"mode": "quick"},
    )
    return MeasuredCosts(**(fields | overrides))


def test_linear_adds_the_layer_overhead_once_sequential_and_half_per_sub_batch_pipelined():
    c = costs()
    assert c.linear(10, pipelined=False) == pytest.approx(10e-3 + 50e-6)
    assert c.linear(10, pipelined=True) == pytest.approx(20e-3 + 40e-6)
    assert c.linear(1, False) < c.linear(256, False)  # extrapolated along the last segment


def test_decode_attention_is_read_per_request_and_exact_for_bilinear_physics():
    c = costs()
    # 8 requests of 512 tokens: between grid points on both axes
    assert c.device_decode_attention(8, 8 * 512, False) == pytest.approx(1e-4 + 8e-5 + 1e-8 * 8 * 512)
    assert c.device_decode_attention(8, 8 * 512, True) == pytest.approx(2e-4 + 8e-5 + 1e-8 * 8 * 512)
    assert c.host_decode_attention(3, 3 * 100, False) == pytest.approx(1e-4 + 6e-5 + 4e-8 * 300 + 30e-6)
    assert c.host_decode_attention(3, 3 * 100, True) == pytest.approx(3e-4 + 6e-5 + 4e-8 * 300)
    assert c.host_decode_attention(0, 0, True) == 0.0


def test_prefill_attention_is_tabled_over_the_cached_prefix():
    c = costs()
    assert c.prefill_attention(16, 16) == pytest.approx(1e-3)  # no prefix
    assert c.prefill_attention(256, 256 + 1024) == pytest.approx(30e-3)
    assert c.prefill_attention(16, 16 + 512) == pytest.approx(2e-3)


def test_iteration_is_the_sampled_rows_plus_the_prefill_tokens_beyond_them():
    c = costs()
    assert c.iteration(0, 0) == 0.0
    assert c.iteration(8, 8) == pytest.approx(9e-3)  # a decode batch of 8
    assert c.iteration(8 + 256, 8) == pytest.approx(9e-3 + 256e-6)
    assert c.iteration(128, 0) == pytest.approx(128e-6)
    assert c.swap(32) == pytest.approx(32e-5)


def test_the_predictor_prices_a_plan_from_the_tables():
    c = costs()
    load = Load(num_tokens=4, num_sampled=4, device_decodes=2, device_kv_tokens=512, host_decodes=2, host_kv_tokens=512)
    layer = (4e-3 + 50e-6) + (1e-4 + 2e-5 + 1e-8 * 512) + (1e-4 + 4e-5 + 4e-8 * 512 + 30e-6)
    assert sequential_time(c, load) == pytest.approx(10 * layer + 5e-3)
    b0 = Load(num_tokens=2, num_sampled=2, device_decodes=2, device_kv_tokens=512)
    b1 = Load(num_tokens=2, num_sampled=2, host_decodes=2, host_kv_tokens=512)
    d0 = 4e-3 + 40e-6 + 2e-4 + 2e-5 + 1e-8 * 512
    d1 = 4e-3 + 40e-6
    h1 = 3e-4 + 4e-5 + 4e-8 * 512
    assert pipelined_time(c, b0, b1) == pytest.approx(10 * (max(d0, h1) + d1) + 5e-3)


def test_the_host_job_glue_is_charged_only_to_sequential_steps_with_host_decodes():
    c = costs()
    device_only = Load(num_tokens=4, num_sampled=4, device_decodes=4, device_kv_tokens=1024)
    without = costs(host_layer_overhead=0.0)
    assert sequential_time(c, device_only) == pytest.approx(sequential_time(without, device_only))
    with_host = Load(num_tokens=4, num_sampled=4, device_decodes=2, device_kv_tokens=512, host_decodes=2, host_kv_tokens=512)
    assert sequential_time(c, with_host) == pytest.approx(sequential_time(without, with_host) + 10 * 30e-6)
    b0 = Load(num_tokens=2, num_sampled=2, device_decodes=2, device_kv_tokens=512)
    b1 = Load(num_tokens=2, num_sampled=2, host_decodes=2, host_kv_tokens=512)
    assert pipelined_time(c, b0, b1) == pytest.approx(pipelined_time(without, b0, b1))  # its own overhead
    assert c.host_decode_attention(0, 0, False) == 0.0


def test_json_round_trip_keeps_every_field(tmp_path):
    c = costs()
    assert MeasuredCosts.from_json(json.loads(json.dumps(c.to_json()))) == c
    path = tmp_path / "sub" / "costs.json"
    c.save(path)
    assert MeasuredCosts.load(path) == c
    assert not list(path.parent.glob("*.tmp"))


def test_other_formats_and_malformed_files_are_refused(tmp_path):
    data = costs().to_json()
    with pytest.raises(ValueError, match="format"):
        MeasuredCosts.from_json(data | {"format": FORMAT + 1})
    old = {k: v for k, v in data.items() if k != "host_layer_overhead"} | {"format": 1}
    with pytest.raises(ValueError, match="format"):  # one overhead for every sequential step
        MeasuredCosts.from_json(old)
    broken = dict(data)
    del broken["host_decode_pipelined"]
    with pytest.raises(ValueError, match="malformed"):
        MeasuredCosts.from_json(broken)
    with pytest.raises(ValueError):
        MeasuredCosts.from_json(data | {"linear_sequential": {"xs": [2, 1], "ys": [1, 2]}})
    path = tmp_path / "costs.json"
    path.write_text('{"format": 1, "num_layers": ')
    with pytest.raises(ValueError, match="not JSON"):
        MeasuredCosts.load(path)
    path.write_text("[1, 2]")
    with pytest.raises(ValueError):
        MeasuredCosts.load(path)
