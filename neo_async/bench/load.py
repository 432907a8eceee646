"""Start-up and model loading against the machine's bounds: `neo-async bench load`.

First (`--serve-starts N`, default 5; 0 skips) `neo-async serve` is started N times and timed
from process start to the first /health 200, phase by phase (bench/startup.py); the median
is the last row. Then, per repeat, on one GGUF file (the embedded default, `--model PATH`, or a generated Llama of
`--synthetic 7b|tiny` shape in `--type`, written under `--dir` and deleted afterwards):
  read      the whole file into a reused buffer (page cache warm: what `cat > /dev/null` does)
  touch     first write to fresh memory of the weights' size (page faults, zeroing)
  memcpy    a 1 GiB copy between buffers already touched (memory bandwidth, each way)
  stream    every tensor dequantised into a reused buffer: file read + dequantisation only
  load      `load_model` as the engine calls it: read, dequantise into reused scratch buffers,
            pack each layer into fresh weights as it completes; dequant_s: the dequantisation
            loop, packing included, pack_s: packing's share of it, finish_s: after the last
            tensor (lm_head)
  reorder   the same, every weight packed by oneDNN's reorder instead of our kernel in the
            layout learned from it (model/onednn_weight.py); both start from nothing learned
Rates are GB/s of file bytes (read, stream, load) or of weight bytes (touch, load_out).
`--cold` drops the file from the page cache before each repeat (reads come from the disk).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")  # as `neo-async serve` (server/startup.py), before torch allocates
import torch  # noqa: E402

from neo_async.bench.common import machine_info, print_table, write_json

_READ_CHUNK = 64 << 20


def _drop_from_page_cache(path: Path) -> None:
    with open(path, "rb") as f:
        os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)


def read_file(path: Path) -> float:
    buffer = bytearray(_READ_CHUNK)
    view = memoryview(buffer)
    started = time.perf_counter()
    with open(path, "rb", buffering=0) as f:
        while f.readinto(view):
            pass
    return time.perf_counter() - started


def touch_fresh(num_bytes: int) -> float:
    started = time.perf_counter()
    torch.empty(num_bytes, dtype=torch.uint8).fill_(1)
    return time.perf_counter() - started


def memcpy(num_bytes: int = 1 << 30) -> float:
    src = torch.ones(num_bytes, dtype=torch.uint8)
    dst = torch.zeros(num_bytes, dtype=torch.uint8)
    dst.copy_(src)  # warm: both touched, threads started
    started = time.perf_counter()
    dst.copy_(src)
    return time.perf_counter() - started


def stream_dequantize(path: Path, dtype: torch.dtype) -> float:
    """Every tensor into one reused buffer (no fresh memory): read + dequantisation only."""
    from neo_async.model.dequant import dequantize_into
    from neo_async.model.gguf_reader import GGUFFile

    started = time.perf_counter()
    with GGUFFile(path) as file:
        largest = max(info.num_elements for info in file.tensors.values())
        scratch = torch.empty(largest, dtype=dtype)
        scratch.fill_(0)
        for info in file.tensors.values():
            dequantize_into(scratch[: info.num_elements].view(info.shape), file.raw(info), info.ggml_type)
    return time.perf_counter() - started


def load(path: Path, dtype: torch.dtype, own_packing: bool = True) -> dict[str, float]:
    """seconds, out_bytes (the weights' bytes) and the loader's phases (see the module doc)."""
    from neo_async.model import onednn_weight
    from neo_async.model.loader import load_model

    onednn_weight.start_over(own_packing)
    try:
        started = time.perf_counter()
        loaded = load_model(path, dtype, torch.device("cpu"))
        seconds = time.perf_counter() - started
    finally:
        onednn_weight.start_over()
    w = loaded.weights
    tensors = [w.embed, w.final_norm] + ([] if w.lm_head.weight is w.embed else [w.lm_head.weight])
    for layer in w.layers:
        tensors += [layer.attn_norm, layer.mlp_norm, layer.qkv.weight, layer.o.weight, layer.gate_up.weight, layer.down.weight]
    phases = loaded.phase_seconds
    return {
        "seconds": seconds,
        "out_bytes": sum(t.numel() * t.element_size() for t in tensors),
        "dequant_s": phases.get("model_weights_dequantized", 0.0),
        "pack_s": phases.get("model_weights_packed", 0.0),
        "finish_s": phases.get("model_weights_prepared", 0.0),
    }


def _weight_bytes(path: Path, dtype: torch.dtype) -> int:
    from neo_async.model.gguf_reader import GGUFFile

    with GGUFFile(path) as file:
        return sum(info.num_elements for info in file.tensors.values()) * dtype.itemsize


def _available_bytes() -> int:
    with open("/proc/meminfo") as f:
        info = {line.split(":")[0]: int(line.split()[1]) * 1024 for line in f}
    return info.get("MemAvailable", 0)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="neo-async bench load", description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="a GGUF file (default: the embedded model)")
    parser.add_argument("--synthetic", choices=["7b", "tiny"], help="generate a Llama GGUF of this shape instead")
    parser.add_argument("--layers", type=int, help="synthetic: this many layers instead of the shape's")
    parser.add_argument("--type", default="Q4_1", help="synthetic: ggml type of the matrices (Q4_1, Q8_0, Q4_K, ...)")
    parser.add_argument("--dir", default=tempfile.gettempdir(), help="synthetic: where the file is written")
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--phases", default="read,touch,memcpy,stream,load,reorder")
    parser.add_argument("--serve-starts", type=int, default=5, help="time this many serve starts (0: none)")
    parser.add_argument("--serve-args", default="", help="extra flags for those serve starts")
    parser.add_argument("--cold", action="store_true", help="drop the file from the page cache before each phase")
    parser.add_argument("--json", help="also write the rows here")
    args = parser.parse_args(argv)
    dtype = getattr(torch, args.dtype)
    phases = args.phases.split(",")
    serve_rows = _serve(args) if args.serve_starts > 0 else []

    generated = None
    if args.synthetic:
        import dataclasses

        from gguf import GGMLQuantizationType

        from neo_async.bench.synthetic_gguf import LLAMA_7B, TINY, write_synthetic_gguf

        shape = LLAMA_7B if args.synthetic == "7b" else TINY
        if args.layers:
            shape = dataclasses.replace(shape, num_layers=args.layers)
        generated = Path(tempfile.mkstemp(suffix=".gguf", dir=args.dir)[1])
        started = time.perf_counter()
        write_synthetic_gguf(generated, shape, GGMLQuantizationType[args.type])
        print(f"wrote {generated} ({generated.stat().st_size / 1e9:.2f} GB) in {time.perf_counter() - started:.1f} s")
        path = generated
    else:
        from neo_async.model.registry import resolve_model_path

        path = resolve_model_path(args.model)
    try:
        rows = _run(path, dtype, phases, args)
    finally:
        if generated is not None:
            generated.unlink()
    print_table(rows, ["phase", "repeat", "seconds", "GB/s", "out_GB/s", "dequant_s", "pack_s", "finish_s"])
    write_json(args.json, {"machine": machine_info(), "serve_starts": serve_rows, "file": str(path), "rows": rows})


def _serve(args: argparse.Namespace) -> list[dict[str, Any]]:
    from neo_async.bench.startup import phase_columns, profile_cache_note, time_starts

    print(f"neo-async serve {args.serve_args}: seconds from process start; {profile_cache_note()}")
    rows = time_starts(args.serve_starts, args.serve_args.split())
    print_table(rows, phase_columns(rows))
    return rows


def _run(path: Path, dtype: torch.dtype, phases: list[str], args: argparse.Namespace) -> list[dict[str, Any]]:
    file_bytes = path.stat().st_size
    weight_bytes = _weight_bytes(path, dtype)
    print(f"file {file_bytes / 1e9:.2f} GB, weights {weight_bytes / 1e9:.2f} GB in {args.dtype}, torch threads {torch.get_num_threads()}")
    if {"load", "reorder"} & set(phases) and _available_bytes() < weight_bytes + (2 << 30):
        raise SystemExit(f"not enough free memory for the load phase: {_available_bytes() / 1e9:.1f} GB available")
    rows = []
    for repeat in range(args.repeats):
        for phase in phases:
            if args.cold and phase in ("read", "stream", "load"):
                _drop_from_page_cache(path)
            row: dict[str, Any] = {"phase": phase, "repeat": repeat}
            if phase == "read":
                row["seconds"] = read_file(path)
                row["GB/s"] = file_bytes / row["seconds"] / 1e9
            elif phase == "touch":
                row["seconds"] = touch_fresh(weight_bytes)
                row["out_GB/s"] = weight_bytes / row["seconds"] / 1e9
            elif phase == "memcpy":
                row["seconds"] = memcpy()
                row["out_GB/s"] = (1 << 30) / row["seconds"] / 1e9
            elif phase == "stream":
                row["seconds"] = stream_dequantize(path, dtype)
                row["GB/s"] = file_bytes / row["seconds"] / 1e9
            elif phase in ("load", "reorder"):
                row.update(load(path, dtype, own_packing=phase == "load"))
                row["GB/s"] = file_bytes / row["seconds"] / 1e9
                row["out_GB/s"] = row.pop("out_bytes") / row["seconds"] / 1e9
            else:
                raise SystemExit(f"unknown phase {phase!r}")
            print(f"{phase:>7} #{repeat}: {row['seconds']:.2f} s", flush=True)
            rows.append(row)
    return rows


if __name__ == "__main__":
    main()
