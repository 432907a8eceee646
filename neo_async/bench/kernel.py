"""`neo-async bench kernel`: host decode attention (rust_cpuattn) against the machine's read
bandwidth and against torch, on the same data.

Per case (batch, context, heads, dtype, threads): KV pools several times the last-level
cache, a random block table, the layer rotated on every call (continuing across cases) so
K/V always come from DRAM; warm-ups, then the median of >= 20 timed calls. Reported:
effective GB/s of K+V read, the read bandwidth measured in the same process at the same
thread count (samples interleaved with the kernel calls), their ratio, and the speed-up over
the best torch baseline (gather + scaled_dot_product_attention; gather + grouped matmul).

Interleaving: the probes read more than the LLC, so they evict everything, code included.
After a probe pair one untimed call brings the call path (Python, the binding, the kernel's
code) back, then `--calls-per-probe` timed calls follow, as layers follow each other in a
model (their K/V still from DRAM). `--cold-calls` times the call right after the probes
instead: on the reference VM that adds 60-90 us to every call (a 16-element `np.add`
takes 52 us there after such a flush, 0.5 us otherwise).
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from neo_async.bench.common import machine_info, print_table, write_json

BLOCK_SIZE = 16
LLC_FALLBACK_BYTES = 32 << 20
# Pools and the bandwidth buffer are at least 4x the LLC, but never above this (RAM is small).
MAX_POOL_BYTES = 1536 << 20


def llc_bytes() -> int:
    """Size of the largest CPU cache cpu0 reports in sysfs (the LLC), or a fallback."""
    from pathlib import Path

    sizes = []
    for f in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*/size"):
        text = f.read_text().strip().upper()
        mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1:], 1)
        try:
            sizes.append(int(text.rstrip("KMG")) * mult)
        except ValueError:
            continue
    return max(sizes, default=LLC_FALLBACK_BYTES)


LLC_BYTES = llc_bytes()
DEFAULT_POOL_MIB = min(4 * LLC_BYTES, MAX_POOL_BYTES) >> 20
DTYPES = {"bf16": (np.uint16, 2), "f16": (np.float16, 2), "f32": (np.float32, 4)}
FULL = dict(batch=[1, 16, 64], ctx=[128, 1024, 4096], heads=["9/3/64", "32/8/128", "32/32/128"], dtype=["bf16", "f16", "f32"], threads=[1, 2])
QUICK = dict(batch=[16], ctx=[128, 1024], heads=["9/3/64", "32/8/128"], dtype=["bf16"], threads=[1, 2])
COLUMNS = ["batch", "ctx", "heads", "dtype", "threads", "kernel_ms", "kernel_gbs", "read_gbs", "ratio_bw", "scat_gbs", "ratio_scat", "torch_ms", "torch_best", "speedup"]


@dataclass(frozen=True)
class Case:
    batch: int
    ctx: int
    num_q_heads: int
    num_kv_heads: int
    head_dim: int
    dtype: str
    threads: int

    @property
    def heads(self) -> str:
        return f"{self.num_q_heads}/{self.num_kv_heads}/{self.head_dim}"

    @property
    def slab_bytes(self) -> int:
        """Bytes of one (layer, block) slab over all KV heads, of K or of V."""
        return self.num_kv_heads * BLOCK_SIZE * self.head_dim * DTYPES[self.dtype][1]

    @property
    def kv_bytes(self) -> int:
        """Bytes of K and V one call reads."""
        return 2 * self.batch * self.ctx * self.num_kv_heads * self.head_dim * DTYPES[self.dtype][1]


HUGE_PAGE_BYTES = 2 << 20


def host_array(shape: tuple[int, ...], dtype: Any, huge_pages: bool) -> np.ndarray:
    """An uninitialised array; with `huge_pages`, in a 2 MiB-aligned anonymous mapping advised
    MADV_HUGEPAGE, as the engine's host pools are (`neo_async/platform/host_memory.py`)."""
    if not huge_pages:
        return np.empty(shape, dtype)
    import mmap

    nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
    mapping = mmap.mmap(-1, nbytes + HUGE_PAGE_BYTES, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    try:
        mapping.madvise(mmap.MADV_HUGEPAGE)
    except (AttributeError, OSError):  # no THP here: small pages
        pass
    raw = np.frombuffer(mapping, dtype=np.uint8)  # keeps `mapping` alive
    offset = (-raw.ctypes.data) % HUGE_PAGE_BYTES
    return raw[offset : offset + nbytes].view(dtype).reshape(shape)


def fill_tiled(dst: np.ndarray, tile: np.ndarray) -> np.ndarray:
    """`dst` filled with `tile` repeated (as `np.resize` would), without a temporary copy."""
    flat = dst.reshape(-1)
    for start in range(0, flat.size, tile.size):
        n = min(tile.size, flat.size - start)
        flat[start : start + n] = tile[:n]
    return dst


class Pools:
    """K/V pools `[L, N, Hkv, BLOCK_SIZE, D]` big enough that rotating layers defeats the LLC,
    filled once (first touch is slow: never inside timing), and a random block table."""

    def __init__(self, case: Case, pool_bytes: int, seed: int = 0, huge_pages: bool = False) -> None:
        rng = np.random.default_rng(seed)
        np_dtype, size = DTYPES[case.dtype]
        blocks_per_seq = -(-case.ctx // BLOCK_SIZE)
        self.num_blocks = case.batch * blocks_per_seq
        layer_bytes = 2 * self.num_blocks * case.num_kv_heads * BLOCK_SIZE * case.head_dim * size
        self.num_layers = max(2, -(-pool_bytes // layer_bytes))
        shape = (self.num_layers, self.num_blocks, case.num_kv_heads, BLOCK_SIZE, case.head_dim)
        # A random tile repeated over the pool: realistic values at memset speed.
        tile = rng.standard_normal(1 << 16).astype(np.float32)
        if case.dtype == "bf16":
            tile = (tile.view(np.uint32) >> 16).astype(np.uint16)
        else:
            tile = tile.astype(np_dtype)
        self.k = fill_tiled(host_array(shape, tile.dtype, huge_pages), tile)
        self.v = fill_tiled(host_array(shape, tile.dtype, huge_pages), tile[::-1].copy())
        self.block_table = rng.permutation(self.num_blocks).astype(np.int32).reshape(case.batch, blocks_per_seq)
        self.rows = np.arange(case.batch, dtype=np.int32)
        self.seq_lens = np.full(case.batch, case.ctx, np.int32)
        q = rng.standard_normal((case.batch, case.num_q_heads, case.head_dim)).astype(np.float32)
        # What a bf16 model hands over: bf16 values in f32.
        self.q = (q.view(np.uint32) & 0xFFFF0000).view(np.float32)
        self.out = np.zeros_like(self.q)
        self.scale = 1.0 / float(np.sqrt(case.head_dim))
        self._layer = 0

    def next_layer(self) -> int:
        """Layers in rotation: one is read again only after all the others (the whole pool,
        4x the LLC by default)."""
        self._layer = (self._layer + 1) % self.num_layers
        return self._layer


def _median_ms(samples: list[float]) -> float:
    return statistics.median(samples) * 1e3


def time_kernel(
    case: Case, pools: Pools, warmup: int, iters: int, bw_buffer: np.ndarray, calls_per_probe: int = 4, cold: bool = False
) -> dict[str, Any]:
    """Kernel and probe timings of one case; see the module docstring for the interleaving."""
    import rust_cpuattn

    calls_per_probe = max(1, calls_per_probe)
    rust_cpuattn.set_num_threads(case.threads)

    def call() -> float:
        layer = pools.next_layer()
        t0 = time.perf_counter()
        rust_cpuattn.paged_decode_attention(
            pools.q, pools.k, pools.v, pools.block_table, pools.rows, pools.seq_lens, layer, pools.scale, out=pools.out
        )
        return time.perf_counter() - t0

    for _ in range(warmup):
        call()
    times: list[float] = []
    bandwidths: list[float] = []
    scattered: list[float] = []
    while len(times) < iters:
        # Interleaved: a probe pair per group of calls, same threads, same process.
        bandwidths.append(rust_cpuattn.read_bandwidth(bw_buffer))
        scattered.append(rust_cpuattn.read_bandwidth(bw_buffer, slab_bytes=case.slab_bytes))
        if cold:
            times.append(call())
            continue
        call()
        times.extend(call() for _ in range(min(calls_per_probe, iters - len(times))))
    kernel_s = statistics.median(times)
    read_bps = statistics.median(bandwidths)
    scat_bps = statistics.median(scattered)
    return {
        "kernel_ms": kernel_s * 1e3,
        "kernel_gbs": case.kv_bytes / kernel_s / 1e9,
        "read_gbs": read_bps / 1e9,
        "ratio_bw": case.kv_bytes / kernel_s / read_bps,
        "scat_gbs": scat_bps / 1e9,
        "ratio_scat": case.kv_bytes / kernel_s / scat_bps,
    }


def torch_baselines(case: Case, pools: Pools) -> dict[str, Callable[[int], Any]]:
    """Decode attention in torch over the same pools (`layer` -> output)."""
    import torch

    tdtype = {"bf16": torch.bfloat16, "f16": torch.float16, "f32": torch.float32}[case.dtype]

    def as_torch(a: np.ndarray) -> torch.Tensor:
        t = torch.from_numpy(a.view(np.int16) if case.dtype == "bf16" else a)
        return t.view(torch.bfloat16) if case.dtype == "bf16" else t

    k_all, v_all = as_torch(pools.k), as_torch(pools.v)
    table = torch.from_numpy(pools.block_table.astype(np.int64))
    b, hq, hkv, d = case.batch, case.num_q_heads, case.num_kv_heads, case.head_dim
    g = hq // hkv
    q = torch.from_numpy(pools.q)

    def gather(layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        # [B, W, Hkv, bs, D] -> [B, Hkv, W * bs, D]
        k = k_all[layer][table].permute(0, 2, 1, 3, 4).reshape(b, hkv, -1, d)[:, :, : case.ctx]
        v = v_all[layer][table].permute(0, 2, 1, 3, 4).reshape(b, hkv, -1, d)[:, :, : case.ctx]
        return k, v

    def sdpa(layer: int) -> torch.Tensor:
        k, v = gather(layer)
        return torch.nn.functional.scaled_dot_product_attention(
            q.to(tdtype).unsqueeze(2), k, v, scale=pools.scale, enable_gqa=g > 1
        )

    def grouped_matmul(layer: int) -> torch.Tensor:
        k, v = gather(layer)
        qg = q.to(tdtype).view(b, hkv, g, d)
        scores = torch.matmul(qg, k.transpose(-1, -2)).float() * pools.scale  # [B, Hkv, G, T]
        probs = torch.softmax(scores, dim=-1).to(tdtype)
        return torch.matmul(probs, v)  # [B, Hkv, G, D]

    return {"sdpa": sdpa, "grouped_matmul": grouped_matmul}


def time_torch(case: Case, pools: Pools, warmup: int, iters: int) -> dict[str, Any]:
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(case.threads)
    try:
        best: tuple[float, str] | None = None
        for name, fn in torch_baselines(case, pools).items():
            samples = []
            with torch.inference_mode():
                for i in range(warmup + iters):
                    layer = pools.next_layer()
                    t0 = time.perf_counter()
                    fn(layer)
                    if i >= warmup:
                        samples.append(time.perf_counter() - t0)
            ms = _median_ms(samples)
            if best is None or ms < best[0]:
                best = (ms, name)
        assert best is not None
        return {"torch_ms": best[0], "torch_best": best[1]}
    finally:
        torch.set_num_threads(before)


def _parse_list(text: str, cast: Callable[[str], Any] = int) -> list[Any]:
    return [cast(x) for x in text.split(",") if x]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="neo-async bench kernel", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="batch 16, ctx 128/1024, (9,3,64) and (32,8,128), bf16, 1 and 2 threads")
    p.add_argument("--batch", help="comma list (default 1,16,64)")
    p.add_argument("--ctx", help="comma list of context lengths (default 128,1024,4096)")
    p.add_argument("--heads", help="comma list of Hq/Hkv/D (default 9/3/64,32/8/128,32/32/128)")
    p.add_argument("--dtype", help="comma list of bf16,f16,f32 (default all)")
    p.add_argument("--threads", help="comma list (default 1,2)")
    p.add_argument("--iters", type=int, default=20, help="timed calls per case (>= 20 recommended)")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--calls-per-probe", type=int, default=4, help="timed calls after each probe pair (and its untimed call)")
    p.add_argument("--cold-calls", action="store_true", help="time the call right after each probe pair (caches cold, code included)")
    llc = f"LLC {LLC_BYTES >> 20} MiB here"
    p.add_argument("--pool-mib", type=int, default=DEFAULT_POOL_MIB, help=f"KV pool size (all layers), default 4x LLC, at most {MAX_POOL_BYTES >> 20} ({llc})")
    p.add_argument("--bw-mib", type=int, default=DEFAULT_POOL_MIB, help="buffer read by the bandwidth probe (default as --pool-mib)")
    p.add_argument("--max-call-mib", type=int, default=2048, help="skip cases whose K+V per call exceed this")
    p.add_argument("--max-torch-mib", type=int, default=1024, help="skip torch baselines above this K+V per call")
    p.add_argument("--no-torch", action="store_true", help="skip the torch baselines")
    p.add_argument("--huge-pages", action="store_true", help="pools and the probes' buffer in huge pages (MADV_HUGEPAGE), as the engine's host pools")
    p.add_argument("--isa", help="force the kernel's SIMD path (sets RUST_CPUATTN_ISA: scalar, avx2, avx512, avx512bf16)")
    p.add_argument("--output", help="write the rows as JSON here")
    return p


def cases_from(args: argparse.Namespace) -> list[Case]:
    grid = dict(QUICK if args.quick else FULL)
    for key, cast in (("batch", int), ("ctx", int), ("heads", str), ("dtype", str), ("threads", int)):
        if getattr(args, key):
            grid[key] = _parse_list(getattr(args, key), cast)
    out = []
    for heads in grid["heads"]:
        hq, hkv, d = (int(x) for x in heads.split("/"))
        for dtype in grid["dtype"]:
            if dtype not in DTYPES:
                raise SystemExit(f"unknown dtype {dtype!r} (expected {', '.join(DTYPES)})")
            for batch in grid["batch"]:
                for ctx in grid["ctx"]:
                    for threads in grid["threads"]:
                        out.append(Case(batch, ctx, hq, hkv, d, dtype, threads))
    return out


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    if args.isa:
        import os

        os.environ["RUST_CPUATTN_ISA"] = args.isa  # read once, at the kernel's first call
    import rust_cpuattn

    threads_before = rust_cpuattn.get_num_threads()
    bw_buffer = host_array((args.bw_mib << 18,), np.float32, args.huge_pages)
    bw_buffer.fill(1.0)  # touched once here, outside timing
    rows: list[dict[str, Any]] = []
    pools_key, pools = None, None
    try:
        for case in cases_from(args):
            row: dict[str, Any] = {
                "batch": case.batch, "ctx": case.ctx, "heads": case.heads, "dtype": case.dtype,
                "threads": case.threads, "kv_mib": case.kv_bytes / 2**20,
            }
            if case.kv_bytes > args.max_call_mib << 20:
                row["skipped"] = f"K+V per call above --max-call-mib {args.max_call_mib}"
                rows.append(row)
                continue
            key = (case.batch, case.ctx, case.heads, case.dtype)
            if key != pools_key:
                pools = None  # free the previous pools first
                pools = Pools(case, args.pool_mib << 20, huge_pages=args.huge_pages)
                pools_key = key
            assert pools is not None
            row.update(time_kernel(case, pools, args.warmup, args.iters, bw_buffer, args.calls_per_probe, args.cold_calls))
            if not args.no_torch and case.kv_bytes <= args.max_torch_mib << 20:
                row.update(time_torch(case, pools, max(1, args.warmup // 2), args.iters))
                row["speedup"] = row["torch_ms"] / row["kernel_ms"]
            rows.append(row)
            progress = "  ".join(f"{c}={row[c]:.3g}" if isinstance(row.get(c), float) else f"{c}={row.get(c, '-')}" for c in COLUMNS)
            print(progress, flush=True)
    finally:
        rust_cpuattn.set_num_threads(threads_before)
    print()
    print_table([r for r in rows if "skipped" not in r], COLUMNS)
    payload = {
        "benchmark": "kernel",
        "machine": machine_info(),
        "isa": rust_cpuattn.isa(),
        "block_size": BLOCK_SIZE,
        "pool_mib": args.pool_mib,
        "llc_mib": LLC_BYTES >> 20,
        "bw_mib": args.bw_mib,
        "iters": args.iters,
        "calls_per_probe": None if args.cold_calls else max(1, args.calls_per_probe),
        "cold_calls": args.cold_calls,
        "huge_pages": args.huge_pages,
        "rows": rows,
    }
    write_json(args.output, payload)
    return 0
