"""`neo-async bench replicas`: output tokens/s with 1 and N replicas, through the bundled load
generator. One replica is a plain `neo-async serve`; N > 1 is `serve --data-parallel-size N`
(the router in front). Each deployment gets the same workload, all requests at once.

    neo-async bench replicas --replica-counts 1,2 --num-prompts 32 --json results/replicas_cpu.json

On a machine with fewer cores than replicas x what one replica can use, N replicas cannot be
faster: they split the same cores (and memory bandwidth); the figures then show the cost of
running N engines (each with its own weights, step loop and thread pools) and of the router.
"""

from __future__ import annotations

import argparse
import json
import shlex
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from neo_async.bench.common import machine_info, print_table, write_json
from neo_async.server.replicas import free_ports, http_status

KEYS = ("output_throughput", "request_throughput", "median_ttft_ms", "p99_ttft_ms", "median_tpot_ms", "p99_tpot_ms", "completed")
READY_TIMEOUT_S = 600.0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="neo-async bench replicas", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--replica-counts", default="1,2")
    p.add_argument("--router-policy", default="power_of_two")
    p.add_argument("--server-args", default="--cost-tables none", help="more `neo-async serve` flags, as one string")
    p.add_argument("--num-prompts", type=int, default=32)
    p.add_argument("--input-len", type=int, default=128)
    p.add_argument("--output-len", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None, help="write the rows here")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    counts = [int(x) for x in args.replica_counts.split(",")]
    if not counts or min(counts) < 1:
        print("neo-async bench replicas: --replica-counts needs positive integers", file=sys.stderr)
        return 2
    rows = []
    with tempfile.TemporaryDirectory(prefix="neo-bench-replicas-") as tmp:
        for n in counts:
            rows.append(run_one(n, args, Path(tmp)))
            print_table(rows[-1:], ["num_replicas", *KEYS])
    print_table(rows, ["num_replicas", *KEYS])
    write_json(args.json, {"machine": machine_info(), "workload": _workload(args), "rows": rows})
    return 0 if all(r["completed"] == args.num_prompts for r in rows) else 1


def run_one(num_replicas: int, args: argparse.Namespace, tmp: Path) -> dict:
    (port,) = free_ports(1)
    cmd = [sys.executable, "-m", "neo_async", "serve", "--port", str(port), "--log-format", "json",
           *shlex.split(args.server_args)]
    if num_replicas > 1:
        cmd += ["--data-parallel-size", str(num_replicas), "--router-policy", args.router_policy]
    url = f"http://127.0.0.1:{port}"
    with open(tmp / f"serve-{num_replicas}.log", "w") as log:
        server = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        try:
            started = time.monotonic()
            _wait_ready(server, url)
            start_s = time.monotonic() - started
            result = _loadgen(url, args, tmp / f"loadgen-{num_replicas}.json")
        finally:
            server.send_signal(signal.SIGTERM)
            server.wait(120)
    return {"num_replicas": num_replicas, "router": num_replicas > 1, "start_s": round(start_s, 1),
            **{k: result.get(k) for k in KEYS}, "duration_s": result.get("duration")}


def _wait_ready(server: subprocess.Popen, url: str) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"the server exited with {server.returncode} before it was ready")
        if http_status(url + "/health") == 200:
            return
        time.sleep(0.5)
    raise RuntimeError(f"the server was not ready within {READY_TIMEOUT_S}s")


def _loadgen(url: str, args: argparse.Namespace, path: Path) -> dict:
    # NOTE: the model is named here: sglang-router 0.3.2 answers /v1/models as text/plain, which
    # the load generator's own lookup refuses
    with urllib.request.urlopen(url + "/v1/models", timeout=30) as response:
        model = json.loads(response.read())["data"][0]["id"]
    cmd = [sys.executable, "-m", "loadgen", "--base-url", url, "--endpoint", "/v1/completions", "--model", model,
           "--dataset-name", "synthetic", "--num-prompts", str(args.num_prompts), "--input-len", str(args.input_len),
           "--output-len", str(args.output_len), "--range-ratio", "0", "--request-rate", "inf", "--ignore-eos",
           "--seed", str(args.seed), "--save-result", "--result-dir", str(path.parent), "--result-filename", path.name,
           "--disable-tqdm"]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return json.loads(path.read_text())


def _workload(args: argparse.Namespace) -> dict:
    return {"dataset": "synthetic", "num_prompts": args.num_prompts, "input_len": args.input_len,
            "output_len": args.output_len, "request_rate": "inf", "server_args": args.server_args,
            "router_policy": args.router_policy}
