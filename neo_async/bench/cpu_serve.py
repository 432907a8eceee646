"""`neo-async bench cpu-serve`: the CPU device serving a GGUF (the embedded model by default),
our server beside llama.cpp's (`--llama-server PATH`, when given), through the bundled load
generator: closed-loop streams (1 and 16 by default), 128 prompt and 256 output tokens each.

Reports per server and stream count: output tokens/s and TPOT p50; and the decode step's
weight-read bound: the bytes of the projections and the LM head as stored in the file, over
the read bandwidth measured in this run (rust_cpuattn.read_bandwidth on a buffer well past the
last-level cache, every core), with ours at 1 stream against it.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from neo_async.bench.common import machine_info, print_table, write_json
from neo_async.bench.latency import wait_ready
from neo_async.bench.processes import free_port, stop_process


def weight_read_bytes(path: Path) -> int:
    """Bytes a decode step reads of weights: every 2-D tensor as stored but the embedding,
    which counts once as the LM head when the head is tied to it (no `output.weight`)."""
    from neo_async.model.gguf_reader import GGUFFile

    with GGUFFile(path) as f:
        tensors = f.tensors
        total = sum(t.num_bytes for name, t in tensors.items() if len(t.shape) == 2 and name != "token_embd.weight")
        if "output.weight" not in tensors and "token_embd.weight" in tensors:
            total += tensors["token_embd.weight"].num_bytes
    return total


def read_bandwidth(num_bytes: int = 512 << 20, reps: int = 5) -> float:
    """Best of `reps` whole reads of a fresh buffer (bytes/s), all cores."""
    import os

    import torch

    from neo_async.native import rust_cpuattn

    before = rust_cpuattn.get_num_threads()
    rust_cpuattn.set_num_threads(len(os.sched_getaffinity(0)))
    try:
        buffer = torch.ones(num_bytes // 8, dtype=torch.int64)
        return max(rust_cpuattn.read_bandwidth(buffer) for _ in range(reps))
    finally:
        rust_cpuattn.set_num_threads(before)


def server_command(name: str, port: int, args: argparse.Namespace, model: Path) -> list[str]:
    max_streams = max(args.streams)
    context = args.input_len + args.output_len + 64
    if name == "neo":
        return [sys.executable, "-m", "neo_async", "serve", "--port", str(port), "--model", str(model), "--dtype",
                args.dtype, "--log-level", "warning", *args.serve_args.split()]
    return [str(args.llama_server), "-m", str(model), "--host", "127.0.0.1", "--port", str(port), "-c",
            str(context * max_streams), "-np", str(max_streams), "-t", str(args.llama_threads), *args.llama_args.split()]


def run_server(name: str, args: argparse.Namespace, model: Path, out_dir: Path) -> list[dict]:
    from loadgen import cli as loadgen_cli

    port = free_port()
    log = open(out_dir / f"server-{name}.log", "w")
    server = subprocess.Popen(server_command(name, port, args, model), stdout=log, stderr=subprocess.STDOUT,
                              start_new_session=True)
    rows = []

    def load(streams: int, num_prompts: int, output_len: int, filename: str) -> dict:
        code = loadgen_cli.main([
            "--port", str(port), "--tokenizer", str(model), "--dataset-name", "synthetic",
            "--input-len", str(args.input_len), "--output-len", str(output_len), "--range-ratio", "0",
            "--num-prompts", str(num_prompts), "--request-rate", "inf",
            "--max-concurrency", str(streams), "--ignore-eos", "--seed", str(args.seed),
            "--save-result", "--result-dir", str(out_dir), "--result-filename", filename, "--disable-tqdm",
        ])
        if code != 0:
            raise RuntimeError(f"the load generator failed with exit code {code} on {name}, {streams} streams")
        return json.loads((out_dir / filename).read_text())

    try:
        wait_ready(server, port, args.ready_timeout)
        if args.warmup:  # first-call costs (kernel JIT, page faults, caches) stay out of the timed runs
            load(min(args.streams), args.warmup, 16, f"{name}-warmup.json")
        for streams in args.streams:
            result = load(streams, max(args.min_prompts, args.rounds * streams), args.output_len, f"{name}-{streams}.json")
            rows.append({"server": name, "streams": streams, "out_tok_s": result["output_throughput"],
                         "tpot_p50_ms": result["median_tpot_ms"], "ttft_p50_ms": result.get("median_ttft_ms"),
                         "completed": result.get("completed")})
    finally:
        stop_process(server, grace_s=30, group=True)
        log.close()
    return rows


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="neo-async bench cpu-serve", description=__doc__)
    parser.add_argument("--model", type=Path, default=None, help="a GGUF file (default: the embedded model)")
    parser.add_argument("--llama-server", type=Path, default=None, help="llama.cpp's llama-server binary")
    parser.add_argument("--llama-threads", type=int, default=None, help="llama-server -t (default: every core)")
    parser.add_argument("--llama-args", default="", help="more llama-server flags, as one string")
    parser.add_argument("--serve-args", default="", help="more `neo-async serve` flags, as one string")
    parser.add_argument("--streams", default="1,16", help="comma-separated concurrent streams")
    parser.add_argument("--input-len", type=int, default=128)
    parser.add_argument("--output-len", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=2, help="requests per stream")
    parser.add_argument("--min-prompts", type=int, default=4)
    parser.add_argument("--warmup", type=int, default=2, help="untimed requests (16 output tokens) sent to each server first")
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    parser.add_argument("--ready-timeout", type=float, default=600.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out-dir", type=Path, default=Path("results/cpu_serve"))
    args = parser.parse_args(argv)
    import os

    from neo_async.model.registry import default_model_path

    args.streams = [int(s) for s in args.streams.split(",")]
    args.llama_threads = args.llama_threads or len(os.sched_getaffinity(0))
    model = (args.model or default_model_path()).resolve()
    args.out_dir.mkdir(parents=True, exist_ok=True)
    weight_bytes = weight_read_bytes(model)
    bandwidth = read_bandwidth()
    bound_ms = weight_bytes / bandwidth * 1e3
    rows = run_server("neo", args, model, args.out_dir)
    if args.llama_server is not None:
        rows += run_server("llama.cpp", args, model, args.out_dir)
        by = {(r["server"], r["streams"]): r for r in rows}
        for streams in args.streams:
            ours, theirs = by[("neo", streams)], by[("llama.cpp", streams)]
            ours["vs_llama_cpp"] = ours["out_tok_s"] / theirs["out_tok_s"]
    for r in rows:
        if r["streams"] == 1:
            r["tpot_over_bound"] = r["tpot_p50_ms"] / bound_ms
    print_table(rows, sorted({c for r in rows for c in r}, key=lambda c: list(rows[0]).index(c) if c in rows[0] else 99))
    print(f"\nweight bytes per decode step {weight_bytes / 1e6:.1f} MB, read bandwidth {bandwidth / 1e9:.2f} GB/s, "
          f"weight-read bound {bound_ms:.2f} ms per step")
    write_json(args.out_dir / "summary.json", {
        "bench": "cpu-serve", "model": str(model), "rows": rows, "weight_bytes_per_step": weight_bytes,
        "read_bandwidth_bytes_s": bandwidth, "weight_read_bound_ms": bound_ms, "machine": machine_info(),
        "cpu": _cpu_name(), "llama_server": str(args.llama_server) if args.llama_server else None,
        "args": {k: str(v) for k, v in vars(args).items()},
    })
    return 0


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "unknown")
    except OSError:
        return "unknown"
