"""`neo-async bench kernel` on a tiny grid: it runs the real kernel and probes and reports
consistent rows (the numbers themselves are the benchmark's business, not a test's)."""

import json

import numpy as np
import pytest
import rust_cpuattn

from neo_async.bench import kernel as bench_kernel


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
    assert payload["cold_calls"] is cold and payload["calls_per_probe"] == (None if cold else 2)
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


@pytest.mark.parametrize(("cold", "kernel_calls", "probe_pairs"), [(False, 1 + 3 + 5, 3), (True, 1 + 5, 5)])
def test_interleaving_of_calls_and_probes(monkeypatch, cold, kernel_calls, probe_pairs):
    """warmup 1, 5 timed calls, 2 per probe pair: 3 pairs, each followed by an untimed call;
    cold: a pair before every timed call and no untimed ones."""
    log = []
    real_decode, real_bw = rust_cpuattn.paged_decode_attention, rust_cpuattn.read_bandwidth

    def decode(*args, **kwargs):
        log.append(("call", args[6]))
        return real_decode(*args, **kwargs)

    def bandwidth(*args, **kwargs):
        log.append(("probe", "slab_bytes" in kwargs))
        return real_bw(*args, **kwargs)

    monkeypatch.setattr(rust_cpuattn, "paged_decode_attention", decode)
    monkeypatch.setattr(rust_cpuattn, "read_bandwidth", bandwidth)
    case = bench_kernel.Case(2, 40, 9, 3, 64, "bf16", 1)
    pools = bench_kernel.Pools(case, 4 << 20)
    buf = np.ones(1 << 16, np.float32)
    bench_kernel.time_kernel(case, pools, 1, 5, buf, calls_per_probe=2, cold=cold)
    calls = [x for kind, x in log if kind == "call"]
    assert len(calls) == kernel_calls
    assert [x for kind, x in log if kind == "probe"] == [False, True] * probe_pairs
    # Every call reads another layer; probes come in (sequential, scattered) pairs.
    assert len(set(calls)) == len(calls)
    kinds = [kind for kind, _ in log]
    expected_group = ["probe", "probe"] + (["call"] if cold else ["call", "call", "call"])
    assert kinds[:1] == ["call"] and kinds[1 : 1 + len(expected_group)] == expected_group
