"""rust_cpuattn: both kernels against a float64 numpy reference, zero-copy inputs (numpy and
torch), the fused K/V store, validation of bad inputs, and pools shared per slab between
threads."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import rust_cpuattn

KERNELS = {
    "fast": rust_cpuattn.paged_decode_attention,
    "reference": rust_cpuattn.reference_paged_decode_attention,
}
DTYPES = ["float32", "float16", "bfloat16"]
# Output error bound vs float64 for inputs in [-1, 1] (f32 arithmetic in the kernels).
ATOL = 5e-5


def bf16_bits(x: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16 bit patterns (uint16), rounding to nearest even; NaN stays NaN."""
    bits = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32).astype(np.uint64)
    rounded = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)
    return np.where(np.isnan(x), np.uint16(0x7FC0), rounded)


def bf16_to_f32(u: np.ndarray) -> np.ndarray:
    return (u.astype(np.uint32) << 16).view(np.float32)


def stored(x: np.ndarray, dtype: str) -> np.ndarray:
    """Values as the pool stores them (bf16 travels as uint16)."""
    if dtype == "float32":
        return x.astype(np.float32)
    if dtype == "float16":
        return x.astype(np.float16)
    return bf16_bits(x)


def widened(x: np.ndarray, dtype: str) -> np.ndarray:
    """Stored values back to float64, exactly."""
    if dtype == "bfloat16":
        return bf16_to_f32(x).astype(np.float64)
    return x.astype(np.float64)


def to_torch(x: np.ndarray, dtype: str | None = None) -> torch.Tensor:
    t = torch.from_numpy(x)
    if dtype == "bfloat16":
        return torch.from_numpy(x.view(np.int16)).view(torch.bfloat16)
    return t


def make_problem(seq_lens, hq, hkv, d, bs, dtype, seed=0, num_layers=3, extra_blocks=5, q_scale=1.0, bf16_q=False):
    """Pools `[L, N, Hkv, bs, D]` with NaN in every row no request reads, a shuffled block
    table (one spare row, -1 padding), permuted rows, ragged lengths. `bf16_q` rounds q to
    bf16-representable values (what a bf16 model produces)."""
    rng = np.random.default_rng(seed)
    used = [-(-n // bs) for n in seq_lens]
    num_blocks = sum(used) + extra_blocks
    width = max(used, default=1) + 1
    layer = num_layers - 1
    k = np.full((num_layers, num_blocks, hkv, bs, d), np.nan, np.float32)
    v = np.full_like(k, np.nan)
    ids = rng.permutation(num_blocks)
    row_ids = rng.permutation(len(seq_lens) + 1)
    table = np.full((len(seq_lens) + 1, width), -1, np.int32)
    nxt = 0
    for b, n in enumerate(seq_lens):
        for j in range(used[b]):
            blk = ids[nxt]
            nxt += 1
            table[row_ids[b], j] = blk
            valid = min(bs, n - j * bs)
            k[layer, blk, :, :valid] = rng.uniform(-1, 1, (hkv, valid, d))
            v[layer, blk, :, :valid] = rng.uniform(-1, 1, (hkv, valid, d))
    q = (rng.uniform(-1, 1, (len(seq_lens), hq, d)) * q_scale).astype(np.float32)
    if bf16_q:
        q = bf16_to_f32(bf16_bits(q))
    return dict(
        q=q,
        k_cache=stored(k, dtype),
        v_cache=stored(v, dtype),
        block_table=table,
        rows=row_ids[: len(seq_lens)].astype(np.int32),
        seq_lens=np.asarray(seq_lens, np.int32),
        layer=layer,
        scale=float(1.0 / np.sqrt(d)),
        dtype=dtype,
    )


def reference_f64(p) -> np.ndarray:
    """Gather each request's K/V through the block table, softmax and PV in float64."""
    q = p["q"].astype(np.float64)
    num_seqs, hq, d = q.shape
    k = widened(p["k_cache"], p["dtype"])[p["layer"]]  # [N, Hkv, bs, D]
    v = widened(p["v_cache"], p["dtype"])[p["layer"]]
    hkv, bs = k.shape[1], k.shape[2]
    g = hq // hkv
    out = np.zeros((num_seqs, hq, d))
    for b in range(num_seqs):
        n = int(p["seq_lens"][b])
        ids = p["block_table"][p["rows"][b], : -(-n // bs)]
        kb = k[ids].transpose(1, 0, 2, 3).reshape(hkv, -1, d)[:, :n]  # [Hkv, n, D]
        vb = v[ids].transpose(1, 0, 2, 3).reshape(hkv, -1, d)[:, :n]
        for h in range(hq):
            s = kb[h // g] @ q[b, h] * p["scale"]
            w = np.exp(s - s.max())
            out[b, h] = (w / w.sum()) @ vb[h // g]
    return out


def call(kernel, p, container="numpy", **kw):
    args = [p[name] for name in ("q", "k_cache", "v_cache", "block_table", "rows", "seq_lens")]
    if container == "torch":
        args = [to_torch(a, p["dtype"] if i in (1, 2) else None) for i, a in enumerate(args)]
        kw = {key: (to_torch(val, p["dtype"] if val.dtype != np.float32 else None) if isinstance(val, np.ndarray) else val) for key, val in kw.items()}
    return KERNELS[kernel](*args, p["layer"], p["scale"], **kw)


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("container", ["numpy", "torch"])
@pytest.mark.parametrize("heads", [(4, 4), (8, 4), (9, 3), (8, 2), (16, 2)])
@pytest.mark.parametrize("bf16_q", [False, True], ids=["f32q", "bf16q"])
def test_matches_float64(kernel, dtype, container, heads, bf16_q):
    p = make_problem([1, 15, 16, 17, 70], heads[0], heads[1], 64, 16, dtype, seed=sum(heads), bf16_q=bf16_q)
    out = call(kernel, p, container)
    assert isinstance(out, np.ndarray) and out.shape == p["q"].shape and out.dtype == np.float32
    assert np.isfinite(out).all()
    np.testing.assert_allclose(out, reference_f64(p), atol=ATOL, rtol=0)


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("d,bs", [(128, 32), (80, 8), (96, 16), (256, 16)])
@pytest.mark.parametrize("bf16_q", [False, True], ids=["f32q", "bf16q"])
def test_head_dims_and_block_sizes(kernel, d, bs, bf16_q):
    p = make_problem([3, 33, 64, 100], 8, 2, d, bs, "bfloat16", seed=d + bs, bf16_q=bf16_q)
    np.testing.assert_allclose(call(kernel, p), reference_f64(p), atol=ATOL, rtol=0)


@pytest.mark.parametrize("container", ["numpy", "torch"])
def test_out_is_written_in_place(container):
    p = make_problem([5, 40], 8, 2, 64, 16, "float16", seed=3)
    out = np.full(p["q"].shape, np.nan, np.float32)
    out_arg = out if container == "numpy" else torch.from_numpy(out)
    got = call("fast", p, container, out=out_arg)
    assert got is out_arg
    np.testing.assert_allclose(out, reference_f64(p), atol=ATOL, rtol=0)


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("new_dtype", ["same", "float32"])
@pytest.mark.parametrize("container", ["numpy", "torch"])
def test_store_new_rows(kernel, dtype, new_dtype, container):
    p = make_problem([1, 16, 17, 40], 6, 2, 64, 16, dtype, seed=11)
    rng = np.random.default_rng(5)
    shape = (4, 2, 64)
    k_new32 = rng.uniform(-1, 1, shape).astype(np.float32)
    v_new32 = rng.uniform(-1, 1, shape).astype(np.float32)
    k_new = k_new32 if new_dtype == "float32" else stored(k_new32, dtype)
    v_new = v_new32 if new_dtype == "float32" else stored(v_new32, dtype)
    k_before, v_before = p["k_cache"].copy(), p["v_cache"].copy()
    out = call(kernel, p, container, k_new=k_new, v_new=v_new)
    # The pools were written in place (zero-copy); exactly one row per (request, KV head).
    expect_k, expect_v = k_before.copy(), v_before.copy()
    bs = expect_k.shape[3]
    for b, n in enumerate(p["seq_lens"]):
        blk = p["block_table"][p["rows"][b], (n - 1) // bs]
        expect_k[p["layer"], blk, :, (n - 1) % bs] = stored(k_new32[b], dtype)
        expect_v[p["layer"], blk, :, (n - 1) % bs] = stored(v_new32[b], dtype)
    np.testing.assert_array_equal(p["k_cache"].view(np.uint8), expect_k.view(np.uint8))
    np.testing.assert_array_equal(p["v_cache"].view(np.uint8), expect_v.view(np.uint8))
    np.testing.assert_allclose(out, reference_f64(p), atol=ATOL, rtol=0)


def test_empty_batch():
    p = make_problem([], 4, 2, 64, 16, "float32")
    p["block_table"] = np.zeros((1, 1), np.int32)
    out = call("fast", p)
    assert out.shape == (0, 4, 64)


def test_bf16_as_torch_bfloat16_and_int16_agree():
    p = make_problem([20, 7], 4, 2, 64, 16, "bfloat16", seed=2)
    a = call("fast", p, "torch")
    args = [torch.from_numpy(p[n]) for n in ("q", "block_table", "rows", "seq_lens")]
    b = rust_cpuattn.paged_decode_attention(
        args[0], torch.from_numpy(p["k_cache"].view(np.int16)), torch.from_numpy(p["v_cache"].view(np.int16)),
        *args[1:], p["layer"], p["scale"])
    np.testing.assert_array_equal(a, b)


def _mutations():
    """(name, function(problem dict) -> kwargs overrides) that must raise ValueError."""
    def put(**kw):
        return lambda p: kw

    def table_with(value):
        def f(p):
            t = p["block_table"].copy()
            t[p["rows"][1], 0] = value
            return {"block_table": t}
        return f

    def non_contiguous_cache(p):
        k = np.ascontiguousarray(np.swapaxes(p["k_cache"], 3, 4))
        return {"k_cache": np.swapaxes(k, 3, 4)}

    return [
        ("q float64", lambda p: {"q": p["q"].astype(np.float64)}),
        ("q rank 2", lambda p: {"q": p["q"].reshape(p["q"].shape[0], -1)}),
        ("q head_dim", lambda p: {"q": np.zeros(p["q"].shape[:2] + (32,), np.float32)}),
        ("q heads not a multiple", lambda p: {"q": np.zeros((2, 3, 64), np.float32), "out": None}),
        ("q batch", lambda p: {"q": p["q"][:1].copy()}),
        ("cache int32", lambda p: {"k_cache": p["k_cache"].view(np.int32), "v_cache": p["v_cache"].view(np.int32)}),
        ("cache dtype mismatch", lambda p: {"v_cache": p["v_cache"].astype(np.float16)}),
        ("cache shape mismatch", lambda p: {"v_cache": p["v_cache"][:, :-1].copy()}),
        ("cache rank", lambda p: {"k_cache": p["k_cache"][0], "v_cache": p["v_cache"][0]}),
        ("cache not contiguous", non_contiguous_cache),
        ("table int64", lambda p: {"block_table": p["block_table"].astype(np.int64)}),
        ("block id too large", table_with(10_000)),
        ("block id negative", table_with(-1)),
        ("row out of range", lambda p: {"rows": np.array([0, 99], np.int32)}),
        ("row negative", lambda p: {"rows": np.array([0, -1], np.int32)}),
        ("seq_len zero", lambda p: {"seq_lens": np.array([5, 0], np.int32)}),
        ("seq_len too long", lambda p: {"seq_lens": np.array([5, 10_000], np.int32)}),
        ("seq_lens count", lambda p: {"seq_lens": np.array([5], np.int32)}),
        ("layer too large", put(layer=3)),
        ("layer negative", put(layer=-1)),
        ("scale nan", put(scale=float("nan"))),
        ("out shape", lambda p: {"out": np.zeros((2, 4, 32), np.float32)}),
        ("out dtype", lambda p: {"out": np.zeros(p["q"].shape, np.float64)}),
        ("out read-only", lambda p: {"out": np.zeros(p["q"].shape, np.float32)[None][0].copy().view()}),
        ("out aliases q", lambda p: {"out": p["q"]}),
        ("k_new alone", lambda p: {"k_new": np.zeros((2, 2, 64), np.float32)}),
        ("k_new shape", lambda p: {"k_new": np.zeros((2, 1, 64), np.float32), "v_new": np.zeros((2, 1, 64), np.float32)}),
        ("k_new dtype", lambda p: {"k_new": np.zeros((2, 2, 64), np.float16), "v_new": np.zeros((2, 2, 64), np.float16)}),
        ("store into shared pool", lambda p: {"v_cache": p["k_cache"], "k_new": np.zeros((2, 2, 64), np.float32), "v_new": np.zeros((2, 2, 64), np.float32)}),
        ("not an array", put(q=[[[0.0] * 64] * 4] * 2)),
        ("q on meta device", lambda p: {"q": torch.empty(p["q"].shape, device="meta")}),
        ("torch non-contiguous q", lambda p: {"q": torch.from_numpy(p["q"]).transpose(0, 1).contiguous().transpose(0, 1)}),
    ]


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("name,mutate", _mutations(), ids=[m[0] for m in _mutations()])
def test_bad_inputs_raise(kernel, name, mutate):
    p = make_problem([5, 20], 4, 2, 64, 16, "bfloat16", seed=1)
    call(kernel, p)  # the unmutated call is valid
    kw = dict(q=p["q"], k_cache=p["k_cache"], v_cache=p["v_cache"], block_table=p["block_table"],
              rows=p["rows"], seq_lens=p["seq_lens"], layer=p["layer"], scale=p["scale"])
    over = mutate(p)
    if name == "out read-only":
        over["out"].setflags(write=False)
    kw.update(over)
    with pytest.raises(ValueError):
        KERNELS[kernel](**kw)


@pytest.fixture
def restore_threads():
    before = rust_cpuattn.get_num_threads()
    yield
    rust_cpuattn.set_num_threads(before)


@pytest.mark.parametrize("dtype", DTYPES)
def test_thread_counts_agree_and_repeat_bitwise(dtype, restore_threads):
    p = make_problem([1, 15, 16, 17, 255, 256, 257, 1000, 4097], 8, 2, 64, 16, dtype, seed=4, bf16_q=True)
    want = reference_f64(p)
    for n in (1, 2, 3, 7):
        rust_cpuattn.set_num_threads(n)
        assert rust_cpuattn.get_num_threads() == n
        a, b = call("fast", p), call("fast", p)
        np.testing.assert_array_equal(a, b)  # bitwise repeatable for a thread count
        np.testing.assert_allclose(a, want, atol=ATOL, rtol=0)


def test_set_num_threads_rejects_bad_values():
    for bad in (0, -3):
        with pytest.raises(ValueError):
            rust_cpuattn.set_num_threads(bad)


def test_isa_matches_environment():
    forced = os.environ.get("RUST_CPUATTN_ISA")
    assert rust_cpuattn.isa() == (forced or rust_cpuattn.supported_isas()[0])
    assert rust_cpuattn.supported_isas()[-1] == "scalar"


def _run_forced(isa: str, code: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, RUST_CPUATTN_ISA=isa)
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.parametrize("isa", rust_cpuattn.supported_isas())
def test_every_isa_path(isa):
    """Runs this file's kernel tests in a child process with the path forced."""
    env = dict(os.environ, RUST_CPUATTN_ISA=isa)
    selection = "matches_float64 and fast or head_dims and fast or store_new_rows and fast or thread_counts or isa_matches"
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__, "-k", selection],
        env=env, cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert " passed" in proc.stdout


def test_unknown_or_unsupported_isa_raises():
    proc = _run_forced("bogus", "import rust_cpuattn\ntry:\n    rust_cpuattn.isa()\nexcept ValueError as e:\n    print('ValueError', e)")
    assert "ValueError" in proc.stdout, proc.stderr
    missing = [i for i in ("avx512bf16", "avx512", "avx2") if i not in rust_cpuattn.supported_isas()]
    for isa in missing:
        proc = _run_forced(isa, "import rust_cpuattn\ntry:\n    rust_cpuattn.isa()\nexcept ValueError as e:\n    print('ValueError', e)")
        assert "ValueError" in proc.stdout, proc.stderr


def _pools(num_blocks, dtype, seed, layers=4, hkv=2, bs=16, d=64):
    rng = np.random.default_rng(seed)
    return [stored(rng.uniform(-1, 1, (layers, num_blocks, hkv, bs, d)).astype(np.float32), dtype) for _ in range(2)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("container", ["numpy", "torch"])
@pytest.mark.parametrize("layers", [None, (1, 3), (2, 2)])
def test_copy_blocks(dtype, container, layers, restore_threads):
    src_k, src_v = _pools(30, dtype, 1)
    dst_k, dst_v = _pools(20, dtype, 2)
    src_ids = np.array([7, 8, 9, 10, 0, 29, 3], np.int32)  # 7..10 -> 4..7 coalesce
    dst_ids = np.array([4, 5, 6, 7, 19, 0, 11], np.int32)
    want_k, want_v = dst_k.copy(), dst_v.copy()
    lo, hi = layers or (0, 4)
    want_k[lo:hi, dst_ids] = src_k[lo:hi, src_ids]
    want_v[lo:hi, dst_ids] = src_v[lo:hi, src_ids]
    args = [src_k, src_v, dst_k, dst_v]
    if container == "torch":
        args = [to_torch(a, dtype) for a in args]
    rust_cpuattn.set_num_threads(2)
    runs = rust_cpuattn.copy_blocks(*args, src_ids if container == "numpy" else torch.from_numpy(src_ids).long(), list(dst_ids), layers=layers)
    assert runs == 4
    np.testing.assert_array_equal(dst_k.view(np.uint8), want_k.view(np.uint8))
    np.testing.assert_array_equal(dst_v.view(np.uint8), want_v.view(np.uint8))


def _copy_mutations():
    return [
        ("dtype mismatch", lambda a: a.update(dst_k=a["dst_k"].astype(np.float32), dst_v=a["dst_v"].astype(np.float32))),
        ("block shape mismatch", lambda a: a.update(dst_k=a["dst_k"][:, :, :1].copy(), dst_v=a["dst_v"][:, :, :1].copy())),
        ("layers mismatch", lambda a: a.update(dst_k=a["dst_k"][:2].copy(), dst_v=a["dst_v"][:2].copy())),
        ("k/v shapes differ", lambda a: a.update(src_v=a["src_v"][:, :10].copy())),
        ("src id too large", lambda a: a.update(src_block_ids=[30])),
        ("dst id too large", lambda a: a.update(dst_block_ids=[20])),
        ("negative id", lambda a: a.update(src_block_ids=[-1])),
        ("length mismatch", lambda a: a.update(src_block_ids=[1, 2])),
        ("duplicate dst", lambda a: a.update(src_block_ids=[1, 2], dst_block_ids=[3, 3])),
        ("ids float", lambda a: a.update(src_block_ids=np.array([1.0], np.float32))),
        ("layers out of range", lambda a: a.update(layers=(0, 5))),
        ("layers reversed", lambda a: a.update(layers=(3, 1))),
        ("dst is src", lambda a: a.update(dst_k=a["src_k"], dst_v=a["src_v"])),
        ("dst k is dst v", lambda a: a.update(dst_v=a["dst_k"])),
        ("dst read-only", lambda a: a["dst_k"].setflags(write=False)),
        ("not contiguous", lambda a: a.update(src_k=np.swapaxes(a["src_k"], 3, 4))),
    ]


@pytest.mark.parametrize("name,mutate", _copy_mutations(), ids=[m[0] for m in _copy_mutations()])
def test_copy_blocks_bad_inputs_raise(name, mutate):
    src_k, src_v = _pools(30, "bfloat16", 1)
    dst_k, dst_v = _pools(20, "bfloat16", 2)
    a = dict(src_k=src_k, src_v=src_v, dst_k=dst_k, dst_v=dst_v, src_block_ids=[1], dst_block_ids=[2])
    mutate(a)
    with pytest.raises(ValueError):
        rust_cpuattn.copy_blocks(**a)


def _block_sets(p):
    """(blocks the requests use, blocks holding a request's last token, unused blocks)."""
    bs = p["k_cache"].shape[3]
    used, last = set(), set()
    for b, n in enumerate(p["seq_lens"]):
        ids = p["block_table"][p["rows"][b], : -(-int(n) // bs)]
        used.update(int(i) for i in ids)
        last.add(int(ids[-1]))
    free = sorted(set(range(p["k_cache"].shape[1])) - used)
    return sorted(used), sorted(last), free


def _run_threads(body, workers, deadline_s=120.0):
    """Runs each worker(stop) on its own thread and body(stop, deadline) on this one; `stop`
    is set when body returns or a worker fails. Re-raises the first worker failure."""
    stop, errors = threading.Event(), []

    def guarded(fn):
        def run():
            try:
                fn(stop)
            except BaseException as e:  # re-raised on the test's thread
                errors.append(e)
                stop.set()
        return run

    threads = [threading.Thread(target=guarded(w), daemon=True) for w in workers]
    for t in threads:
        t.start()
    try:
        body(stop, time.monotonic() + deadline_s)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=60)
    if errors:
        raise errors[0]
    assert not any(t.is_alive() for t in threads)


def test_pools_shared_per_slab_across_threads(restore_threads):
    """While one thread rewrites the slabs no call touches (every layer of the unused blocks
    with torch writes and copy_blocks in turn, the other layers of the used blocks), the
    kernel (storing new rows) and a copy_blocks out of the used slabs run on other threads,
    GIL released, over the same torch bf16 pools: outputs are bitwise those of a quiet run
    and match the reference kernel on a snapshot; every written slab holds what was written."""
    p = make_problem([1, 17, 40, 300], 8, 2, 64, 16, "bfloat16", seed=21, extra_blocks=9, bf16_q=True)
    layer, num_layers = p["layer"], p["k_cache"].shape[0]
    used, last, free = _block_sets(p)
    read_only = [b for b in used if b not in last]  # read by the kernel and the copy, written by nobody
    assert layer == num_layers - 1 >= 1 and free and read_only
    rust_cpuattn.set_num_threads(2)
    torch_args = [torch.from_numpy(p[n]) for n in ("q", "block_table", "rows", "seq_lens")]
    bs = p["k_cache"].shape[3]

    # Alternate calls store the rows the pools hold, then other rows; a quiet run of each on a
    # snapshot gives the exact output to expect and the pools' state afterwards.
    held = [np.stack([pool[layer, p["block_table"][p["rows"][b], (n - 1) // bs], :, (n - 1) % bs]
                      for b, n in enumerate(p["seq_lens"])]) for pool in (p["k_cache"], p["v_cache"])]
    rng = np.random.default_rng(3)
    other = [bf16_bits(rng.uniform(-1, 1, held[0].shape).astype(np.float32)) for _ in range(2)]
    cases = []
    for k_new, v_new in (held, other):
        k_snap, v_snap = p["k_cache"].copy(), p["v_cache"].copy()
        kw = dict(k_new=to_torch(k_new, "bfloat16"), v_new=to_torch(v_new, "bfloat16"))
        args = (torch_args[0], to_torch(k_snap, "bfloat16"), to_torch(v_snap, "bfloat16"), *torch_args[1:])
        want = rust_cpuattn.paged_decode_attention(*args, layer, p["scale"], **kw)
        ref = rust_cpuattn.reference_paged_decode_attention(*args, layer, p["scale"])
        np.testing.assert_allclose(want, ref, atol=ATOL, rtol=0)
        cases.append((kw, want, ref, k_snap, v_snap))

    k, v = to_torch(p["k_cache"].copy(), "bfloat16"), to_torch(p["v_cache"].copy(), "bfloat16")
    snapshot = [k.clone(), v.clone()]
    free_idx, used_idx = torch.tensor(free), torch.tensor(used)
    # What the writer writes: values and NaN in turn (a call reading them would notice).
    values = np.linspace(-2, 2, k.numel(), dtype=np.float32).reshape(k.shape)
    nans = torch.full(k.shape, float("nan"), dtype=torch.bfloat16)
    sources = [to_torch(stored(values, "bfloat16"), "bfloat16"), nans]
    rounds = [0]

    def bits(t):
        return t.view(torch.int16)

    def writer(stop):
        while not stop.is_set():
            src = sources[rounds[0] % 2]
            if rounds[0] % 2 == 0:
                for pool in (k, v):
                    pool.index_copy_(1, free_idx, src.index_select(1, free_idx))
                    pool[:layer].index_copy_(1, used_idx, src[:layer].index_select(1, used_idx))
            else:
                rust_cpuattn.copy_blocks(src, src, k, v, free, free, layers=(0, num_layers))
                rust_cpuattn.copy_blocks(src, src, k, v, used, used, layers=(0, layer))
            for pool in (k, v):
                assert torch.equal(bits(pool.index_select(1, free_idx)), bits(src.index_select(1, free_idx)))
                below = pool[:layer].index_select(1, used_idx)
                assert torch.equal(bits(below), bits(src[:layer].index_select(1, used_idx)))
            rounds[0] += 1

    copies = [0]

    def copier(stop):
        dst = [torch.zeros_like(k), torch.zeros_like(v)]
        ids = torch.tensor(read_only)
        while not stop.is_set():
            rust_cpuattn.copy_blocks(k, v, dst[0], dst[1], read_only, read_only, layers=(layer, layer + 1))
            for got, want in zip(dst, snapshot):
                assert torch.equal(bits(got[layer].index_select(0, ids)), bits(want[layer].index_select(0, ids)))
            copies[0] += 1

    calls = [0]

    def kernel(stop, deadline):
        out = torch.empty(p["q"].shape)
        while (calls[0] < 200 or rounds[0] < 30) and not stop.is_set() and time.monotonic() < deadline:
            kw, want, ref, _, _ = cases[calls[0] % 2]
            rust_cpuattn.paged_decode_attention(torch_args[0], k, v, *torch_args[1:], layer, p["scale"], out=out, **kw)
            assert np.array_equal(out.numpy(), want), f"call {calls[0]}"
            np.testing.assert_allclose(out.numpy(), ref, atol=ATOL, rtol=0)
            calls[0] += 1

    _run_threads(kernel, [writer, copier])
    assert calls[0] >= 200 and rounds[0] >= 30 and copies[0] > 0, (calls, rounds, copies)
    # The used slabs of `layer` hold the last call's state, every other slab the last round's.
    _, _, _, k_end, v_end = cases[(calls[0] - 1) % 2]
    last_src = bits(sources[(rounds[0] - 1) % 2])
    for pool, end in ((k, k_end), (v, v_end)):
        want = last_src.clone()
        want[layer, used_idx] = bits(to_torch(end, "bfloat16"))[layer, used_idx]
        assert torch.equal(bits(pool), want)
