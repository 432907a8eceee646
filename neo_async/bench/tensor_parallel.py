"""`neo-async bench tp`: tensor parallelism on this machine, through the real server and the
bundled load generator, beside what its collectives cost.

A Llama-shaped GGUF of random weights (heads divisible by the ranks; written once under the
output directory) is served with 1 rank on every core, 1 rank on one rank's share of the
cores, and N ranks each on its share; the same synthetic workload (token-id prompts, greedy,
`--ignore-eos`) runs against each. Separately, N gloo ranks time the step's collectives: the
all-reduce of a [T, hidden] activation (two per layer) and the broadcast of a plan, so the
per-step overhead of N ranks is reported as 2 x layers x all-reduce + broadcast. On a machine
whose cores the ranks split (a CPU device), N ranks cannot be faster than 1 rank on all cores:
the numbers say what the collectives cost, which on GPUs joined by NVLink is far smaller.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from neo_async.bench.common import print_table, write_json
from neo_async.bench.latency import wait_ready
from neo_async.bench.processes import free_port, stop_process

ROWS = (1, 16, 64, 256)  # activation rows timed (decode batches to prefill chunks)


def write_model(path: Path, args: argparse.Namespace) -> None:
    from gguf import GGMLQuantizationType

    from neo_async.bench.synthetic_gguf import LlamaShape, write_synthetic_gguf

    shape = LlamaShape(hidden_size=args.hidden_size, intermediate_size=args.intermediate_size, num_layers=args.num_layers,
                       num_heads=args.num_heads, num_kv_heads=args.num_kv_heads, vocab_size=args.vocab_size)
    write_synthetic_gguf(path, shape, GGMLQuantizationType.F16, seed=0)


def run_case(label: str, model: Path, serve_args: list[str], args: argparse.Namespace, out_dir: Path) -> dict:
    from loadgen import cli as loadgen_cli

    port = free_port()
    command = [sys.executable, "-m", "neo_async", "serve", "--port", str(port), "--model", str(model), "--dtype", args.dtype,
               "--offload", "off", "--cost-tables", "none", "--log-level", "warning", "--skip-tokenizer-init", *serve_args]
    with open(out_dir / f"server-{label}.log", "w") as log:
        server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_ready(server, port, args.ready_timeout)
        code = loadgen_cli.main([
            "--port", str(port), "--dataset-name", "synthetic", "--prompt-format", "ids", "--vocab-size", str(args.vocab_size),
            "--input-len", str(args.input_len), "--output-len", str(args.output_len), "--num-prompts", str(args.num_prompts),
            "--max-concurrency", str(args.concurrency), "--request-rate", "inf", "--ignore-eos", "--seed", "0",
            "--label", label, "--save-result", "--result-dir", str(out_dir), "--result-filename", f"{label}.json",
            "--disable-tqdm",
        ])
        if code != 0:
            raise RuntimeError(f"the load generator failed with exit code {code} on {label}")
    finally:
        stop_process(server, grace_s=60, group=True)
    result = json.loads((out_dir / f"{label}.json").read_text())
    return {"case": label, "tok_s": result["output_throughput"], "mean_tpot_ms": result["mean_tpot_ms"],
            "median_ttft_ms": result["median_ttft_ms"], "mean_e2el_per_token_ms": result["mean_e2el_per_token_ms"],
            "failed": result["failed"]}


def time_collectives(rank: int, size: int, init_method: str, hidden: int, dtype: str, repeats: int, out: str) -> None:
    """One gloo rank: median seconds of the model's all-reduce (`Shard.all_reduce_`, as `post`
    calls it) per row count, and of a plan broadcast."""
    from neo_async.model.tensor_parallel import Shard
    from neo_async.profile.probes import StepShape, build_plan
    from neo_async.parallel.rank_group import lean

    os.sched_setaffinity(0, [sorted(os.sched_getaffinity(0))[rank % len(os.sched_getaffinity(0))]])
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init_method, rank=rank, world_size=size)
    shard = Shard(rank, size, dist.group.WORLD)
    result: dict[str, float] = {}
    for rows in ROWS:
        t = torch.randn(rows, hidden).to(getattr(torch, dtype))
        result[f"all_reduce_{rows}"] = _median(lambda: shard.all_reduce_(t), repeats)
    plan = lean(build_plan(StepShape(device_decodes=64, kv_tokens=512), list(range(4096)), [], 16))  # as a step sends it
    result["broadcast_plan_64"] = _median(lambda: dist.broadcast_object_list([plan if rank == 0 else None], src=0), repeats)
    if rank == 0:
        Path(out).write_text(json.dumps(result))
    dist.destroy_process_group()


def _median(fn, repeats: int) -> float:
    dist.barrier()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def collectives(args: argparse.Namespace, out_dir: Path) -> dict[str, float]:
    from neo_async.model.tensor_parallel import free_init_method

    out = out_dir / "collectives.json"
    mp.start_processes(time_collectives, args=(args.ranks, free_init_method(), args.hidden_size, args.dtype, 200, str(out)),
                       nprocs=args.ranks, start_method="spawn")
    return json.loads(out.read_text())


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="neo-async bench tp", description=__doc__)
    parser.add_argument("--ranks", type=int, default=2)
    parser.add_argument("--hidden-size", type=int, default=1024)
    parser.add_argument("--intermediate-size", type=int, default=2816)
    parser.add_argument("--num-layers", type=int, default=8)
    parser.add_argument("--num-heads", type=int, default=16)
    parser.add_argument("--num-kv-heads", type=int, default=4)
    parser.add_argument("--vocab-size", type=int, default=8192)
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    parser.add_argument("--input-len", type=int, default=128)
    parser.add_argument("--output-len", type=int, default=64)
    parser.add_argument("--num-prompts", type=int, default=32)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--ready-timeout", type=float, default=600.0)
    parser.add_argument("--out-dir", type=Path, default=Path("results/tensor_parallel"))
    args = parser.parse_args(argv)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    model = args.out_dir / "model.gguf"
    if not model.exists():
        write_model(model, args)
    cores = len(os.sched_getaffinity(0))
    share = max(1, cores // args.ranks)
    cases = [
        ("tp1-all-cores", ["--device-threads", str(cores)]),
        ("tp1-one-share", ["--device-threads", str(share)]),
        (f"tp{args.ranks}", ["--tensor-parallel-size", str(args.ranks), "--device-threads", str(share)]),
    ]
    rows = [run_case(label, model, serve_args, args, args.out_dir) for label, serve_args in cases]
    print_table(rows, list(rows[0]))
    timed = collectives(args, args.out_dir)
    per_step = {rows_: 2 * args.num_layers * timed[f"all_reduce_{rows_}"] + timed["broadcast_plan_64"] for rows_ in ROWS}
    print(f"\ngloo collectives, {args.ranks} ranks: " + ", ".join(f"all-reduce [{r}, {args.hidden_size}] "
          f"{timed[f'all_reduce_{r}'] * 1e6:.0f} us" for r in ROWS) + f"; plan broadcast {timed['broadcast_plan_64'] * 1e6:.0f} us")
    print("per-step overhead (2 x layers x all-reduce + broadcast): "
          + ", ".join(f"{r} rows {s * 1e3:.2f} ms" for r, s in per_step.items()))
    by = {r["case"]: r for r in rows}
    ratios = {"tp_vs_tp1_all_cores": by[f"tp{args.ranks}"]["tok_s"] / max(by["tp1-all-cores"]["tok_s"], 1e-9),
              "tp_vs_tp1_one_share": by[f"tp{args.ranks}"]["tok_s"] / max(by["tp1-one-share"]["tok_s"], 1e-9)}
    print(f"tokens/s: {args.ranks} ranks {ratios['tp_vs_tp1_all_cores']:.2f}x one rank on every core, "
          f"{ratios['tp_vs_tp1_one_share']:.2f}x one rank on one share")
    write_json(args.out_dir / "summary.json", {
        "bench": "tp", "cpu": _cpu(), "rows": rows, "collectives_s": timed, "per_step_overhead_s": per_step, "ratios": ratios,
        "args": {k: str(v) for k, v in vars(args).items()},
    })
    return 0


def _cpu() -> str:
    from neo_async.profile.key import cpu_name

    return cpu_name()
