"""The profiler on a tiny random model: a quick profile measures every table through the
engine's code paths and gives every borrowed block back; its tables grow where physics says
they must; the cache reuses a table only for exactly the same key (threads, dtype, block size,
...) and ignores foreign or corrupt files; `neo-async profile` writes JSON and PNG plots."""

from __future__ import annotations

import json
import math
import shutil

import pytest
import torch

from neo_async.config import Config, SchedulerConfig
from neo_async.engine import Engine
from neo_async.native import rust_cpuattn
from neo_async.profile import cache, key
from neo_async.profile.measure import Settings, profile_worker
from neo_async.profile.timing import Bench, Timer
from neo_async.sampling_params import SamplingParams
from neo_async.sched.cost_tables import MeasuredCosts
from neo_async.sched.costs import Table1D
from tests.model_factory import write_random_checkpoint

LIMITS = dict(max_num_seqs=8, max_num_batched_tokens=256, max_model_len=512)
# NOTE: one torch thread: on a loaded two-core machine, two OpenMP threads stall for a time slice
# whenever the other core is taken, which can make any point of a table look slow
THREADS = dict(device_threads=1, host_threads=1)
ONE_CALL = Settings(repeats=1, point_budget_s=0.0, budget_s=0.0)  # every point timed once, no warm-up


@pytest.fixture(autouse=True)
def cache_in_tmp(tmp_path, monkeypatch):
    monkeypatch.setenv("NEO_ASYNC_CACHE_DIR", str(tmp_path / "profiles"))


@pytest.fixture(autouse=True)
def restore_threads():
    before = torch.get_num_threads(), rust_cpuattn.get_num_threads() if rust_cpuattn else None
    yield
    torch.set_num_threads(before[0])
    if rust_cpuattn is not None:
        rust_cpuattn.set_num_threads(before[1])


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny")
    write_random_checkpoint(path, "llama_gqa", seed=11)
    return path


def _engine(checkpoint, **overrides) -> Engine:
    base = dict(model=str(checkpoint), dtype="float32", block_size=16, device_kv_tokens=1024, host_kv_tokens=1024)
    base |= LIMITS | THREADS | {"cost_tables": "none"}
    return Engine(Config().override(**(base | overrides)))


def _pools(engine: Engine):
    """The engine's pools: a profile next to a running engine borrows their free blocks only."""
    return engine.device_pool, engine.host_pool


@pytest.fixture(scope="module")
def profiled(checkpoint):
    engine = _engine(checkpoint)
    free_before = (list(engine.device_pool._free), list(engine.host_pool._free))
    threads_before = torch.get_num_threads()
    costs = profile_worker(engine.worker, engine.config, quick=True, pools=_pools(engine))
    return engine, costs, free_before, threads_before


def _generate(engine: Engine, prompts: list[list[int]], profile_after_step: int | None = None) -> list[list[int]]:
    params = SamplingParams(temperature=0.0, max_tokens=6, ignore_eos=True)
    requests = [engine.make_request(p, params, f"r{i}") for i, p in enumerate(prompts)]
    for r in requests:
        engine.add_request(r)
    step = 0
    while engine.has_unfinished:
        engine.step()
        engine.check()
        step += 1
        if step == profile_after_step:
            profile_worker(engine.worker, engine.config, quick=True, settings=ONE_CALL, pools=_pools(engine))
            engine.check()
    return [r.output_token_ids for r in requests]


PROMPTS = [[5, 9, 33, 7] * 10, [100, 3, 8] * 7, list(range(30, 90))]


def test_quick_profile_covers_the_engine_limits_and_gives_every_block_back(profiled):
    engine, costs, free_before, threads_before = profiled
    assert costs.num_layers == engine.spec.num_layers
    default = SchedulerConfig()  # smaller limits share the default grid (and its cache entry)
    tokens = max(min(default.max_num_batched_tokens, LIMITS["max_model_len"] // 2), LIMITS["max_num_batched_tokens"])
    assert max(costs.linear_sequential.xs) == tokens
    assert max(costs.device_decode_sequential.xs) == max(LIMITS["max_num_seqs"], default.max_num_seqs)
    assert max(costs.host_decode_pipelined.ys) == LIMITS["max_model_len"]
    assert max(costs.prefill.xs) == tokens
    for name, value in costs.to_json().items():
        if isinstance(value, dict) and "ys" in value:
            flat = [z for row in value["zs"] for z in row] if "zs" in value else value["ys"]
            assert all(math.isfinite(v) and v > 0 for v in flat), name
    assert min(costs.layer_overhead, costs.host_layer_overhead, costs.pipelined_layer_overhead) >= 0
    assert costs.meta["mode"] == "quick" and costs.meta["seconds"] < 60
    assert costs.key == cache.profile_key(engine.worker, engine.config)
    engine.check()
    assert (list(engine.device_pool._free), list(engine.host_pool._free)) == free_before
    assert torch.get_num_threads() == threads_before


def test_tables_grow_where_physics_says_they_must(profiled):
    _engine_, c, _, _ = profiled
    assert c.linear(256, False) > c.linear(1, False)
    assert c.linear(256, True) > c.linear(1, True)
    for pipelined in (False, True):
        assert c.host_decode_attention(8, 8 * 512, pipelined) > c.host_decode_attention(1, 16, pipelined)
        assert c.device_decode_attention(8, 8 * 512, pipelined) > c.device_decode_attention(1, 16, pipelined)
    assert c.prefill_attention(256, 256 + 256) > c.prefill_attention(16, 16)
    assert c.swap(max(c.swap_blocks.xs)) > c.swap(1)


def test_a_profile_between_steps_does_not_change_any_request(checkpoint):
    reference = _generate(_engine(checkpoint), PROMPTS)
    assert _generate(_engine(checkpoint), PROMPTS, profile_after_step=2) == reference


def test_load_or_profile_reuses_the_stored_table_for_the_same_key_only(profiled, monkeypatch):
    engine, costs, _, _ = profiled
    monkeypatch.setattr("neo_async.profile.cache.profile_worker", lambda w, c, quick=True: costs)
    assert cache.load_or_profile(engine.worker, engine.config) == costs
    assert cache.cache_path(costs.key).exists()

    def must_not_profile(*args, **kwargs):
        raise AssertionError("profiled although a table is cached")

    monkeypatch.setattr("neo_async.profile.cache.profile_worker", must_not_profile)
    assert cache.load_or_profile(engine.worker, engine.config) == costs


@pytest.mark.parametrize(
    "change, field",
    [
        (dict(device_threads=2), "device_threads"),
        (dict(host_threads=2), "host_threads"),
        (dict(dtype="bfloat16"), "dtype"),
        (dict(block_size=32), "block_size"),
        (dict(max_num_batched_tokens=1024), "grid_limits"),
    ],
)
def test_a_changed_setting_never_reuses_a_table(profiled, checkpoint, change, field):
    _engine_, costs, _, _ = profiled
    cache.store(costs)
    other = _engine(checkpoint, **change)
    key = cache.profile_key(other.worker, other.config)
    assert key[field] != costs.key[field]
    assert {k for k in key if key[k] != costs.key[k]} <= {field, "pipelined_device_threads", "linear_dtype"}
    assert cache.cache_path(key) != cache.cache_path(costs.key)
    assert cache.load_cached(key) is None


def test_tables_measured_on_other_code_are_not_reused(profiled, monkeypatch):
    """The key holds a digest of the data plane's sources and the native extension: a table
    stored by other code (a rebuilt kernel) is a miss, the same code a hit."""
    engine, costs, _, _ = profiled
    cache.store(costs)
    assert costs.key["code"] == key.code_fingerprint() and len(costs.key["code"]) == 16
    assert cache.load_cached(cache.profile_key(engine.worker, engine.config)) == costs
    key.code_fingerprint.cache_clear()
    monkeypatch.setattr(key, "_TIMED_PACKAGES", key._TIMED_PACKAGES[:-1])  # other sources
    try:
        changed = cache.profile_key(engine.worker, engine.config)
        assert changed["code"] != costs.key["code"]
        assert cache.load_cached(changed) is None
    finally:
        key.code_fingerprint.cache_clear()


class _Recorder:
    """Stands in for the module's logger (structlog may cache loggers configured by other
    tests, which capture_logs then misses)."""

    def __init__(self) -> None:
        self.events: list[str] = []

    def warning(self, event: str, **_kw) -> None:
        self.events.append(event)

    info = warning


def test_a_foreign_or_corrupt_file_is_not_reused(profiled, monkeypatch):
    engine, costs, _, _ = profiled
    path = cache.store(costs)
    other_key = costs.key | {"device": "another machine"}
    shutil.copy(path, cache.cache_path(other_key))  # as if the hash collided
    logs = _Recorder()
    monkeypatch.setattr(cache, "log", logs)
    assert cache.load_cached(other_key) is None
    assert logs.events == ["profile_cache_foreign"]

    path.write_text('{"format": 1, "linear')
    logs.events.clear()
    assert cache.load_cached(costs.key) is None
    assert logs.events == ["profile_cache_unreadable"]
    fresh = MeasuredCosts.from_json(costs.to_json() | {"meta": {"mode": "fresh"}})
    monkeypatch.setattr("neo_async.profile.cache.profile_worker", lambda w, c, quick=True: fresh)
    assert cache.load_or_profile(engine.worker, engine.config).meta == {"mode": "fresh"}  # profiled again, and stored
    assert cache.load_cached(costs.key) == fresh


def test_the_cache_directory_follows_the_environment(tmp_path, monkeypatch):
    assert cache.cache_dir() == tmp_path / "profiles"
    monkeypatch.delenv("NEO_ASYNC_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache.cache_dir() == tmp_path / "xdg" / "neo-async" / "profiles"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache.cache_dir() == tmp_path / "home" / ".cache" / "neo-async" / "profiles"


def test_the_cpu_name_keeps_the_model_and_the_isa_flags_that_matter():
    info = ("processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: 25\nmodel\t\t: 17\nmodel name\t: AMD EPYC 9R14\n"
            "cache size\t: 1024 KB\nflags\t\t: fpu sse2 avx2 fma avx512f avx512_bf16 rdrand\n\nprocessor\t: 1\n")
    name = key.cpu_name(info)
    assert name.startswith("AMD EPYC 9R14; cpu family=25; model=17")
    assert name.endswith("isa=avx2,fma,avx512f,avx512_bf16")
    assert key.cpu_name(info.replace(" avx512_bf16", "")) != name


def test_points_are_timed_in_round_robin_passes_and_once_past_the_deadline():
    calls = []
    benches = [Bench(lambda i, name=name: calls.append((name, i))) for name in "ab"]
    Timer(torch.device("cpu"), repeats=3, min_total_s=0.0).measure(benches)
    assert calls == [("a", 0), ("b", 0)] + [(name, i) for i in (1, 2, 3) for name in "ab"]  # warm-up, 3 passes
    calls.clear()
    Timer(torch.device("cpu"), repeats=3, deadline=0.0).measure(benches)
    assert calls == [("a", 0), ("b", 0)]  # no warm-up, one pass


def test_the_cli_writes_json_plots_and_the_cache(checkpoint, tmp_path):
    from neo_async.profile.cli import main

    out = tmp_path / "out"
    argv = ["--model", str(checkpoint), "--dtype", "float32", "--device-kv-tokens", "1024", "--host-kv-tokens", "1024",
            "--max-num-seqs", "8", "--max-num-batched-tokens", "64", "--max-model-len", "256",
            "--device-threads", "1", "--quick", "--budget-s", "0", "--heldout-points", "2", "--out", str(out), "--log-level", "warning"]
    assert main(argv) == 0
    costs = MeasuredCosts.load(out / "cost_tables.json")
    assert isinstance(costs.linear_pipelined, Table1D) and max(costs.linear_pipelined.xs) == 128  # 64 raised to the default, within half the context
    report = json.loads((out / "profile_report.json").read_text())
    assert report["heldout"]["linear_sequential"]["num_points"] == 2
    assert report["steps"]["num_points"] >= 3 and report["steps"]["median_error"] is not None
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert "linear_sequential.png" in pngs and "host_decode_pipelined.png" in pngs and "steps.png" in pngs
    assert all((out / p).read_bytes().startswith(b"\x89PNG") for p in pngs)
    assert cache.load_cached(costs.key) == costs


def test_a_failing_start_up_profile_falls_back_to_the_fixed_rules(checkpoint, monkeypatch):
    def broken(worker, config, quick=True):
        raise RuntimeError("no timer on this device")

    monkeypatch.setattr("neo_async.profile.cache.profile_worker", broken)
    engine = _engine(checkpoint, cost_tables="auto", device_threads=3)  # a key no other test profiled
    assert engine.costs is None and engine.scheduler.policy is None


def test_each_overhead_is_fitted_on_the_steps_that_pay_it():
    from neo_async.profile.probes import StepShape, build_plan, fit_overheads
    from neo_async.sched.predict import plan_time
    from tests.test_cost_tables import costs

    bare = costs(layer_overhead=0.0, host_layer_overhead=0.0, pipelined_layer_overhead=0.0)
    truth = costs(layer_overhead=40e-6, host_layer_overhead=300e-6, pipelined_layer_overhead=500e-6)
    shapes = [StepShape(device_decodes=1), StepShape(device_decodes=8), StepShape(device_decodes=2, host_decodes=4),
              StepShape(device_decodes=8, host_decodes=8), StepShape(device_decodes=4, host_decodes=4, pipelined=True)]
    plans = [build_plan(s, list(range(64)), list(range(64)), 16) for s in shapes]
    measured = [(plan_time(truth, p.chunks, p.is_pipelined), p) for p in plans]
    fitted = fit_overheads(bare, measured)
    assert fitted.layer_overhead == pytest.approx(40e-6, rel=1e-6)
    assert fitted.host_layer_overhead == pytest.approx(300e-6, rel=1e-6)
    assert fitted.pipelined_layer_overhead == pytest.approx(500e-6, rel=1e-6)
    # a step faster than the tables alone fits no negative overhead
    assert fit_overheads(bare, [(1e-9, plans[0])]).layer_overhead == 0.0


def test_the_prefill_grid_is_dense_where_its_attention_is_not_linear():
    from neo_async.profile.grids import make_grids

    for quick in (True, False):
        g = make_grids(512, 64, 8192, 16, 2048, quick)
        assert g.prefill_chunks == (16, 32, 64, 128, 256, 512)
        assert g.prefill_prefixes[:3] == (0, 64, 128)  # a cached prefix is another code path than none
        assert all(b <= 2 * a for a, b in zip(g.prefill_prefixes[1:], g.prefill_prefixes[2:]))
        assert g.prefill_prefixes[-1] + 512 <= (4096 if quick else 8192)


def test_the_swap_point_times_the_copies_it_issues(checkpoint, monkeypatch):
    """Between a GPU and the host, building a `LayerCopy` is what issues the copies (every
    layer, on the bulk stream), so it must happen inside the timed call: built when the bench
    was made, the copies would be done before any timing and the table would read ~0. Here
    the copies run at once (CPU), so the test checks where they are issued: none when the
    bench is made, every layer's in each call, and the point is per layer."""
    from neo_async.runner import swap
    from neo_async.profile import points as points_module
    from neo_async.profile.measure import borrowed

    built = []

    class RecordingCopy(swap.LayerCopy):
        def __init__(self, *args) -> None:
            built.append(args)
            super().__init__(*args)

    monkeypatch.setattr(points_module, "LayerCopy", RecordingCopy)
    engine = _engine(checkpoint)
    with borrowed(engine.worker, engine.config, Timer(engine.worker.device), _pools(engine)) as points:
        n = 3
        src, dst = points.device_ids[:n], points.host_ids[:n]
        engine.worker.cache.k[:, src] = torch.randn(engine.worker.cache.k[:, src].shape)
        bench = points.swap(n)
        assert built == [] and bench.units == engine.spec.num_layers
        assert int(points.host_cache.k[:, dst].count_nonzero()) == 0
        bench.run(0)  # device -> host, every layer
        assert len(built) == 1
        assert torch.equal(points.host_cache.k[:, dst], engine.worker.cache.k[:, src])


def test_a_point_of_several_units_is_timed_per_unit():
    import time

    bench = Bench(lambda i: time.sleep(0.004), units=4)
    seconds = Timer(torch.device("cpu"), repeats=3, min_total_s=0.0).measure([bench])[0]
    assert 0.0009 < seconds < 0.003
