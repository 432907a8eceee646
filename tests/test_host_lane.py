"""The host lane: rust_cpuattn's HostLane (decode calls queued on a Rust thread, no GIL) and
neo_async's HostLane in front of it, against the synchronous kernel and float64."""

from __future__ import annotations

import gc
import sys
import threading
import time

import numpy as np
import pytest
import torch

import rust_cpuattn
from neo_async.runner.attention import KVCache
from neo_async.runner.host_lane import HostLane
from tests.test_rust_cpuattn import ATOL, _mutations, make_problem, reference_f64, stored

ARGS = ("q", "k_cache", "v_cache", "block_table", "rows", "seq_lens")


def _submit(lane, p, out, **kw):
    return lane.submit_decode(*(p[a] for a in ARGS), p["layer"], p["scale"], out=out, **kw)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_queued_calls_equal_the_synchronous_kernel_bitwise(dtype):
    lane = rust_cpuattn.HostLane()
    problems = [make_problem([3, 17, 40, 129][: 1 + i % 4], 8, 2, 64, 16, dtype, seed=20 + i) for i in range(8)]
    outs = [np.empty(p["q"].shape, np.float32) for p in problems]
    tickets = [_submit(lane, p, o) for p, o in zip(problems, outs)]
    for p, o, t in zip(problems, outs, tickets):
        t.wait()
        assert t.done
        np.testing.assert_array_equal(o, rust_cpuattn.paged_decode_attention(*(p[a] for a in ARGS), p["layer"], p["scale"]))
        np.testing.assert_allclose(o, reference_f64(p), atol=ATOL, rtol=0)


def test_queued_store_writes_the_new_rows_first():
    p = make_problem([1, 16, 17, 40], 6, 2, 64, 16, "bfloat16", seed=31)
    rng = np.random.default_rng(6)
    k_new = rng.uniform(-1, 1, (4, 2, 64)).astype(np.float32)
    v_new = rng.uniform(-1, 1, (4, 2, 64)).astype(np.float32)
    out = np.empty(p["q"].shape, np.float32)
    _submit(rust_cpuattn.HostLane(), p, out, k_new=k_new, v_new=v_new).wait()
    bs = p["k_cache"].shape[3]
    for b, n in enumerate(p["seq_lens"]):
        blk = p["block_table"][p["rows"][b], (n - 1) // bs]
        np.testing.assert_array_equal(p["k_cache"][p["layer"], blk, :, (n - 1) % bs], stored(k_new[b], "bfloat16"))
    np.testing.assert_allclose(out, reference_f64(p), atol=ATOL, rtol=0)


def test_the_ticket_keeps_the_arrays_alive():
    """Inputs dropped by the caller right after submitting (torch tensors export no buffer:
    only the ticket's references keep their memory) still give the right answer."""
    p = make_problem([300, 500, 700], 8, 2, 64, 16, "float32", seed=41)
    expect = reference_f64(p)
    lane = rust_cpuattn.HostLane()
    tensors = {a: torch.from_numpy(p[a].copy()) for a in ARGS}
    out = torch.empty(p["q"].shape)
    ticket = lane.submit_decode(*(tensors[a] for a in ARGS), p["layer"], p["scale"], out=out)
    del tensors
    gc.collect()
    for _ in range(20):  # reuse freed memory, if it were freed
        torch.full((4096, 64), float("nan"))
    ticket.wait()
    np.testing.assert_allclose(out.numpy(), expect, atol=ATOL, rtol=0)


def test_a_dropped_ticket_waits_for_its_call():
    p = make_problem([2000, 2000], 8, 2, 64, 16, "float32", seed=42)
    out = np.full(p["q"].shape, np.nan, np.float32)
    ticket = _submit(rust_cpuattn.HostLane(), p, out)
    del ticket  # blocks until the call has run
    np.testing.assert_allclose(out, reference_f64(p), atol=ATOL, rtol=0)


@pytest.mark.parametrize("name,mutate", _mutations(), ids=[m[0] for m in _mutations()])
def test_bad_calls_raise_value_error_at_submit_or_wait(name, mutate):
    p = make_problem([5, 20], 4, 2, 64, 16, "bfloat16", seed=1)
    kw = dict(q=p["q"], k_cache=p["k_cache"], v_cache=p["v_cache"], block_table=p["block_table"],
              rows=p["rows"], seq_lens=p["seq_lens"], layer=p["layer"], scale=p["scale"],
              out=np.empty(p["q"].shape, np.float32))
    over = mutate(p)
    if name == "out read-only":
        over["out"].setflags(write=False)
    kw.update(over)
    lane = rust_cpuattn.HostLane()
    with pytest.raises((ValueError, TypeError)):
        lane.submit_decode(**kw).wait()
    # the lane still serves after a failed call
    good = np.empty(p["q"].shape, np.float32)
    _submit(lane, p, good).wait()
    np.testing.assert_allclose(good, reference_f64(p), atol=ATOL, rtol=0)


def test_calls_progress_while_the_caller_holds_the_gil():
    """The caller never releases the GIL (a pure-Python spin) yet the queued call ends: the
    lane's thread needs nothing from Python to start or finish it."""
    p = make_problem([4000] * 4, 8, 2, 64, 16, "float32", seed=43)
    out = np.empty(p["q"].shape, np.float32)
    old = sys.getswitchinterval()
    sys.setswitchinterval(10.0)  # no forced GIL hand-offs for 10 s
    try:
        ticket = _submit(rust_cpuattn.HostLane(), p, out)
        deadline = time.perf_counter() + 5.0
        while not ticket.done and time.perf_counter() < deadline:
            pass
        assert ticket.done
    finally:
        sys.setswitchinterval(old)
    ticket.wait()
    np.testing.assert_allclose(out, reference_f64(p), atol=ATOL, rtol=0)


def _cache_with_requests(seed: int, lens: list[int]) -> tuple[KVCache, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    cache = KVCache(2, 64, 2, 16, 64, torch.bfloat16, torch.device("cpu"))
    cache.k.copy_(torch.randn(cache.k.shape, generator=gen))
    cache.v.copy_(torch.randn(cache.v.shape, generator=gen))
    width = max(-(-n // 16) for n in lens)
    table = torch.tensor([[i * width + j for j in range(width)] for i in range(len(lens))], dtype=torch.int32)
    return cache, table, torch.tensor(lens, dtype=torch.int32)


@pytest.mark.parametrize("native", [True, False], ids=["rust-lane", "python-thread"])
def test_neo_host_lane_runs_decode_jobs_like_the_calling_thread(native):
    lens = [7, 33, 100]
    gen = torch.Generator().manual_seed(7)
    q = torch.randn(3, 8, 64, generator=gen)
    k_new, v_new = torch.randn(3, 2, 64, generator=gen), torch.randn(3, 2, 64, generator=gen)
    outs = []
    for on_lane in (False, True):
        cache, table, seq_lens = _cache_with_requests(3, lens)
        out = torch.empty(3, 8, 64)
        job = cache.decode_job(1, q, table, seq_lens, 0.125, k_new=k_new, v_new=v_new, out=out)
        if on_lane:
            lane = HostLane(native=native)
            handle = lane.submit(job)
            assert isinstance(handle, rust_cpuattn.DecodeTicket) == native
            handle.wait()
            lane.close()
        else:
            job.run()
        job.finish()
        outs.append((out, cache.k.clone()))
    torch.testing.assert_close(outs[1][0], outs[0][0], rtol=0, atol=0)
    torch.testing.assert_close(outs[1][1], outs[0][1], rtol=0, atol=0)


def test_neo_host_lane_drain_waits_for_both_queues():
    lane = HostLane()
    p = make_problem([3000] * 2, 8, 2, 64, 16, "float32", seed=44)
    out = np.full(p["q"].shape, np.nan, np.float32)
    ticket = _submit(lane._native, p, out)
    ran = threading.Event()
    lane.submit(lambda: (time.sleep(0.05), ran.set()))
    lane.drain()
    assert ticket.done and ran.is_set()
    lane.close()
