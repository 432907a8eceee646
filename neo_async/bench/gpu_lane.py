"""bench gpu-lane (python -m neo_async.bench.gpu_lane): the device and host decode kernels'
bandwidth against the hardware's, on one GPU machine, as one JSON object.

Device: the decode kernel (FlashInfer or Triton, as the engine picks) and the torch reference
over a random bf16 pool, bytes of K+V read per second against a device-to-device copy's
bandwidth (read + write bytes). Host: rust_cpuattn over a host pool against the host's read
bandwidth at the same thread count. Medians of timed calls after warm-ups.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from typing import Any

import numpy
import torch

from neo_async.kernels.checked import backend_name
from neo_async.runner.attention import KVCache, decode_attention

BLOCK_SIZE = 16


def _random_case(device: torch.device, batch: int, ctx: int, heads: tuple[int, int], head_dim: int):
    blocks_per_seq = -(-ctx // BLOCK_SIZE)
    cache = KVCache(1, batch * blocks_per_seq, heads[1], BLOCK_SIZE, head_dim, torch.bfloat16, device)
    cache.k.normal_()
    cache.v.normal_()
    tables = torch.randperm(batch * blocks_per_seq, device=device).view(batch, blocks_per_seq).int()
    lens = torch.full((batch,), ctx, dtype=torch.int32, device=device)
    q = torch.randn(batch, heads[0], head_dim, device=device)
    kv_bytes = 2 * batch * ctx * heads[1] * head_dim * 2
    return cache, q, tables, lens, kv_bytes


def _median_s(fn, iters: int, sync) -> float:
    for _ in range(3):
        fn()
    times = []
    for _ in range(iters):
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def device_kernels(batch: int, ctx: int, heads: tuple[int, int], head_dim: int, iters: int) -> dict[str, Any]:
    device = torch.device("cuda")
    sync = torch.cuda.synchronize
    cache, q, tables, lens, kv_bytes = _random_case(device, batch, ctx, heads, head_dim)
    out = torch.empty(q.shape, dtype=torch.float32, device=device)
    scale = head_dim**-0.5
    kernel_s = _median_s(lambda: cache.kernels[0](q, cache.k[0], cache.v[0], tables, lens, scale, out), iters, sync)
    torch_s = _median_s(lambda: decode_attention(cache, 0, q, tables, lens, scale), max(3, iters // 4), sync)
    buffer = torch.empty(1 << 30, dtype=torch.uint8, device=device)
    copy = torch.empty_like(buffer)
    copy_s = _median_s(lambda: copy.copy_(buffer), iters, sync)
    copy_bps = 2 * buffer.numel() / copy_s
    return {
        "case": f"B={batch} ctx={ctx} heads={heads[0]}/{heads[1]}/{head_dim} bf16",
        "backend": backend_name(cache.kernels[0]),
        "kernel_ms": kernel_s * 1e3, "kernel_gbs": kv_bytes / kernel_s / 1e9,
        "copy_gbs": copy_bps / 1e9, "ratio": kv_bytes / kernel_s / copy_bps,
        "torch_ms": torch_s * 1e3, "speedup_vs_torch": torch_s / kernel_s,
    }


def host_kernel(batch: int, ctx: int, heads: tuple[int, int], head_dim: int, iters: int) -> dict[str, Any]:
    from neo_async.native import rust_cpuattn

    if rust_cpuattn is None:
        return {"error": "rust_cpuattn is not installed"}
    cache, q, tables, lens, kv_bytes = _random_case(torch.device("cpu"), batch, ctx, heads, head_dim)
    out = torch.empty(q.shape, dtype=torch.float32)
    rows = torch.arange(batch, dtype=torch.int32)
    scale = head_dim**-0.5

    def call() -> None:
        rust_cpuattn.paged_decode_attention(q, cache.k, cache.v, tables, rows, lens, 0, scale, out=out)

    kernel_s = _median_s(call, iters, lambda: None)
    probe = numpy.ones(1 << 28, numpy.float32)  # 1 GiB, touched outside timing
    read_bps = statistics.median(rust_cpuattn.read_bandwidth(probe) for _ in range(5))
    return {
        "case": f"B={batch} ctx={ctx} heads={heads[0]}/{heads[1]}/{head_dim} bf16",
        "threads": rust_cpuattn.get_num_threads(),
        "kernel_ms": kernel_s * 1e3, "kernel_gbs": kv_bytes / kernel_s / 1e9,
        "read_gbs": read_bps / 1e9, "ratio": kv_bytes / kernel_s / read_bps,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m neo_async.bench.gpu_lane", description=__doc__)
    parser.add_argument("--iters", type=int, default=20)
    args = parser.parse_args(argv)
    result: dict[str, Any] = {"gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None}
    if torch.cuda.is_available():
        result["device_decode"] = device_kernels(64, 4096, (32, 8), 128, args.iters)
    result["host_decode"] = host_kernel(16, 2048, (32, 8), 128, args.iters)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
