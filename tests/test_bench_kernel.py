"""`neo-async bench kernel` on a tiny grid: it runs the real kernel and probes and reports
consistent rows (the numbers themselves are the benchmark's business, not a test's)."""

import json

import pytest

from neo_async.bench import kernel as bench_kernel

rust_cpuattn = pytest.importorskip("rust_cpuattn")


@pytest.mark.parametrize("cold", [False, True])
def test_tiny_grid_writes_consistent_rows(tmp_path, cold):
    out = tmp_path / "kernel.json"
    argv = ["--batch", "2", "--ctx", "40", "--heads", "9/3/64", "--dtype", "bf16,f32", "--threads", "1,2",
            "--iters", "5", "--warmup", "1", "--calls-per-probe", "2", "--pool-mib", "8", "--bw-mib", "8",
            "--output", str(out)]
    before = rust_cpuattn.get_num_threads()
    assert bench_kernel.main(argv + (["--cold-calls"] if cold else [])) == 0
    assert rust_cpuattn.get_num_threads() == before
    payload = json.loads(out.read_text())
    assert payload["cold_calls"] is cold and payload["calls_per_probe"] == 2
    rows = payload["rows"]
    assert [(r["dtype"], r["threads"]) for r in rows] == [("bf16", 1), ("bf16", 2), ("f32", 1), ("f32", 2)]
    for r in rows:
        case = bench_kernel.Case(r["batch"], r["ctx"], 9, 3, 64, r["dtype"], r["threads"])
        assert r["kernel_gbs"] == pytest.approx(case.kv_bytes / (r["kernel_ms"] * 1e-3) / 1e9, rel=1e-9)
        assert r["ratio_bw"] == pytest.approx(r["kernel_gbs"] / r["read_gbs"], rel=1e-9)
        assert r["speedup"] == pytest.approx(r["torch_ms"] / r["kernel_ms"], rel=1e-9)
        assert r["torch_best"] in ("sdpa", "grouped_matmul")


def test_layers_rotate_through_the_whole_pool():
    case = bench_kernel.Case(1, 16, 9, 3, 64, "bf16", 1)
    pools = bench_kernel.Pools(case, 1 << 20)
    seen = [pools.next_layer() for _ in range(2 * pools.num_layers)]
    assert sorted(seen[: pools.num_layers]) == list(range(pools.num_layers))
    assert seen[: pools.num_layers] == seen[pools.num_layers :]
