"""`neo-async bench latency`: per-token latency against request rate, one curve per offload
mode (the paper's Figure 6c scaled to this machine), through the real server and the bundled
load generator: Poisson arrivals at each rate, prompt and output lengths from a lengths trace
(the summarisation trace by default), the device KV pool capped.

Per mode: a `neo-async serve` subprocess, one `neo-loadgen --request-rates` sweep against it,
the server stopped. Then one table (mean and p99 TPOT and per-token latency per rate and mode),
the sustained rate of each mode, a comparison plot and a JSON summary.

Per-token latency is the paper's: a request's end-to-end latency over its output tokens, so
time spent queued counts (TPOT does not see it: a saturated device-only server keeps its TPOT
flat while its queue grows). The sustained rate of a mode is the highest rate whose p99 of
`--latency-metric` (per-token latency by default, or TPOT) stays within `--latency-limit-ms`;
by default 3x that p99 of the first mode at its lowest rate.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from neo_async.bench.common import print_table, write_json
from neo_async.bench.processes import free_port, stop_process

DEFAULT_TRACE = Path(__file__).resolve().parents[2].parent / "shared" / "traces" / "osc_lengths_llama2.json"


def start_server(mode: str, port: int, args: argparse.Namespace, log_path: Path) -> subprocess.Popen:
    command = [sys.executable, "-m", "neo_async", "serve", "--port", str(port), "--offload", mode,
               "--device-kv-tokens", str(args.device_kv_tokens), "--dtype", args.dtype, "--log-level", "warning",
               *args.serve_args.split()]
    if args.model:
        command += ["--model", args.model]
    log = open(log_path, "w")
    return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def wait_ready(server: subprocess.Popen, port: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"the server exited with {server.returncode} before it was ready")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"the server was not ready within {timeout_s} s")


def run_mode(mode: str, args: argparse.Namespace, out_dir: Path) -> dict:
    from loadgen import cli as loadgen_cli
    from loadgen import sweep

    port = free_port()
    server = start_server(mode, port, args, out_dir / f"server-{mode}.log")
    try:
        wait_ready(server, port, args.ready_timeout)
        code = loadgen_cli.main([
            "--port", str(port), "--dataset-name", "lengths", "--dataset-path", str(args.dataset_path),
            "--num-prompts", str(args.num_prompts), "--shuffle", "--seed", str(args.seed), "--ignore-eos",
            "--request-rates", args.rates, "--label", mode, "--save-result", "--result-dir", str(out_dir),
            "--result-filename", f"{mode}.json", "--disable-tqdm",
        ])
        if code != 0:
            raise RuntimeError(f"the load generator failed with exit code {code} on mode {mode}")
    finally:
        stop_process(server, grace_s=60, group=True)
    return sweep.load_sweep(out_dir / f"{mode}-sweep.json")


METRICS = {"e2e_per_token": "p99_e2el_per_token_ms", "tpot": "p99_tpot_ms"}


def sustained_rate(document: dict, key: str, limit_ms: float) -> float:
    """The highest rate whose `key` (a p99 latency) is within limit_ms (0 when none is)."""
    from loadgen.sweep import rate_value

    ok = [rate_value(r) for r in document["runs"] if r.get(key) is not None and r[key] <= limit_ms]
    return max(ok, default=0.0)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="neo-async bench latency", description=__doc__)
    parser.add_argument("--modes", default="off,neo")
    parser.add_argument("--rates", default="0.1,0.2,0.4,0.8", help="comma-separated request rates (req/s)")
    parser.add_argument("--num-prompts", type=int, default=24, help="requests per rate")
    parser.add_argument("--dataset-path", type=Path, default=DEFAULT_TRACE)
    parser.add_argument("--device-kv-tokens", type=int, default=2048)
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    parser.add_argument("--model", default=None)
    parser.add_argument("--serve-args", default="", help="more `neo-async serve` flags, as one string")
    parser.add_argument("--latency-metric", choices=sorted(METRICS), default="e2e_per_token",
                        help="the p99 latency that decides the sustained rate")
    parser.add_argument("--latency-limit-ms", type=float, default=None)
    parser.add_argument("--ready-timeout", type=float, default=600.0, help="seconds (a first start profiles the machine)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out-dir", type=Path, default=Path("results/latency"))
    args = parser.parse_args(argv)
    if not args.dataset_path.exists():
        parser.error(f"no lengths trace at {args.dataset_path}; pass --dataset-path")
    args.out_dir.mkdir(parents=True, exist_ok=True)
    documents = {mode: run_mode(mode, args, args.out_dir) for mode in args.modes.split(",")}
    first = next(iter(documents.values()))
    key = METRICS[args.latency_metric]
    limit = args.latency_limit_ms or 3 * min(r[key] for r in first["runs"] if r.get(key) is not None)
    rows = []
    for mode, document in documents.items():
        for run in document["runs"]:
            rows.append({"mode": mode, "rate": run.get("request_rate"), "req_s": run.get("request_throughput"),
                         "tok_s": run.get("output_throughput"), "mean_tpot_ms": run.get("mean_tpot_ms"),
                         "p99_tpot_ms": run.get("p99_tpot_ms"), "e2e_per_token_ms": run.get("mean_e2el_per_token_ms"),
                         "p99_e2e_per_token_ms": run.get("p99_e2el_per_token_ms"), "failed": run.get("failed")})
    print_table(rows, list(rows[0]))
    sustained = {mode: sustained_rate(document, key, limit) for mode, document in documents.items()}
    print(f"\nsustained request rate at p99 {args.latency_metric} <= {limit:.1f} ms: "
          + ", ".join(f"{mode} {rate:g} req/s" for mode, rate in sustained.items()))
    from loadgen.plot import plot_load_latency

    plot = plot_load_latency(list(documents.values()), args.out_dir / "latency_vs_rate.png",
                             title=f"latency vs request rate, device pool {args.device_kv_tokens} tokens")
    print(f"wrote {plot}")
    write_json(args.out_dir / "summary.json", {"bench": "latency", "rows": rows, "latency_metric": args.latency_metric,
                                               "latency_limit_ms": limit,
                                               "sustained_rate": sustained, "args": {k: str(v) for k, v in vars(args).items()}})
    return 0
