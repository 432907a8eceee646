"""`neo-async bench prefix`: prefix caching on a shared-prefix workload, through the real server
and the bundled load generator (vLLM's `prefix_repetition`: groups of requests sharing a long
prefix, each with a short suffix of its own), the device KV pool capped.

Cases: each offload mode (`--modes`) with the cache off and on, one `neo-async serve` subprocess
each, the same prompts and the same Poisson arrival times. The rate is `--request-rate`, or by
default the one `off` without the cache just sustains: its request throughput when every request
is sent at once (a first calibration run). Reported per case: TTFT (median, p99), mean TPOT,
output tokens/s, and the share of prompt tokens found in the cache, per pool (from the server's
`/metrics`: `neo:prefix_cache_hits_total{location}` over `vllm:prefix_cache_queries_total`).

NOTE: at the rate `off` without the cache just sustains, every case that keeps up finishes soon
after the last arrival, so output tokens/s is bound by the arrivals (about rate x output_len)
and cannot show a faster server; `--request-rate inf` (every request at once) compares the
cases saturated.
"""

from __future__ import annotations

import argparse
import json
import math
import urllib.request
from pathlib import Path

from neo_async.bench.common import print_table, write_json
from neo_async.bench.latency import wait_ready
from neo_async.bench.processes import free_port, stop_process


def start_server(mode: str, caching: bool, port: int, args: argparse.Namespace, log_path: Path):
    import subprocess
    import sys

    command = [sys.executable, "-m", "neo_async", "serve", "--port", str(port), "--offload", mode,
               "--device-kv-tokens", str(args.device_kv_tokens), "--dtype", args.dtype, "--log-level", "warning",
               "--enable-prefix-caching" if caching else "--no-enable-prefix-caching", *args.serve_args.split()]
    if args.model:
        command += ["--model", args.model]
    with open(log_path, "w") as log:  # the child keeps its own descriptor
        return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def scrape(port: int) -> dict[str, float]:
    """The server's prefix-cache counters: queries, hits by pool, demotions."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "vllm:prefix_cache_queries_total":
                out["queries"] = sample.value
            elif sample.name == "neo:prefix_cache_hits_total":
                out[f"hits_{sample.labels['location']}"] = sample.value
            elif sample.name == "neo:prefix_cache_demotions_total":
                out["demotions"] = sample.value
            elif sample.name == "neo:swap_bytes_total":
                out[f"swap_{sample.labels['direction']}_bytes"] = out.get(f"swap_{sample.labels['direction']}_bytes", 0) + sample.value
    return out


def run_case(mode: str, caching: bool, rate: float | None, args: argparse.Namespace, out_dir: Path) -> dict:
    from loadgen import cli as loadgen_cli

    label = f"{mode}-{'cache' if caching else 'nocache'}" + ("" if rate is not None else "-calibration")
    port = free_port()
    server = start_server(mode, caching, port, args, out_dir / f"server-{label}.log")
    try:
        wait_ready(server, port, args.ready_timeout)
        code = loadgen_cli.main([
            "--port", str(port), "--dataset-name", "prefix_repetition", "--num-prompts", str(args.num_prompts),
            "--prefix-repetition-prefix-len", str(args.prefix_len), "--prefix-repetition-suffix-len", str(args.suffix_len),
            "--prefix-repetition-num-prefixes", str(args.num_prefixes), "--output-len", str(args.output_len),
            "--seed", str(args.seed), "--ignore-eos", "--request-rate", "inf" if rate is None else str(rate),
            "--label", label, "--save-result", "--result-dir", str(out_dir), "--result-filename", f"{label}.json",
            "--disable-tqdm",
        ])
        if code != 0:
            raise RuntimeError(f"the load generator failed with exit code {code} on {label}")
        counters = scrape(port)
    finally:
        stop_process(server, grace_s=60, group=True)
    result = json.loads((out_dir / f"{label}.json").read_text())
    queries = counters.get("queries", 0.0)
    return {
        "mode": mode, "cache": "on" if caching else "off", "rate": _json_rate(rate),
        "median_ttft_ms": result["median_ttft_ms"], "p99_ttft_ms": result["p99_ttft_ms"],
        "mean_tpot_ms": result["mean_tpot_ms"], "tok_s": result["output_throughput"],
        "req_s": result["request_throughput"], "failed": result["failed"],
        "hit_device": counters.get("hits_device", 0.0) / queries if queries else 0.0,
        "hit_host": counters.get("hits_host", 0.0) / queries if queries else 0.0,
        "demoted_blocks": counters.get("demotions", 0.0),
        "swap_in_mb": counters.get("swap_in_bytes", 0.0) / 2**20,
    }


def _json_rate(rate: float | None) -> float | str | None:
    """JSON has no infinity: every request at once is recorded as "inf"."""
    return "inf" if rate is not None and math.isinf(rate) else rate


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="neo-async bench prefix", description=__doc__)
    parser.add_argument("--modes", default="off,neo")
    parser.add_argument("--request-rate", type=float, default=None, help="req/s; default: what off without caching sustains")
    parser.add_argument("--num-prompts", type=int, default=64)
    parser.add_argument("--num-prefixes", type=int, default=8)
    parser.add_argument("--prefix-len", type=int, default=1024)
    parser.add_argument("--suffix-len", type=int, default=64)
    parser.add_argument("--output-len", type=int, default=64)
    parser.add_argument("--device-kv-tokens", type=int, default=2048)
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    parser.add_argument("--model", default=None)
    parser.add_argument("--serve-args", default="", help="more `neo-async serve` flags, as one string")
    parser.add_argument("--ready-timeout", type=float, default=600.0, help="seconds (a first start profiles the machine)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out-dir", type=Path, default=Path("results/prefix"))
    args = parser.parse_args(argv)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    rate = args.request_rate
    if rate is None:
        rate = run_case("off", False, None, args, args.out_dir)["req_s"]
        print(f"off without caching sustains {rate:.3f} req/s: the arrival rate of every case")
    rows = [run_case(mode, caching, rate, args, args.out_dir) for mode in args.modes.split(",") for caching in (False, True)]
    print_table(rows, list(rows[0]))
    by = {(r["mode"], r["cache"]): r for r in rows}
    ratios = {}
    for mode in args.modes.split(","):
        off, on = by[(mode, "off")], by[(mode, "on")]
        ratios[mode] = {"ttft_median_x": off["median_ttft_ms"] / max(on["median_ttft_ms"], 1e-9),
                        "tok_s_x": on["tok_s"] / max(off["tok_s"], 1e-9)}
        print(f"{mode}: median TTFT {ratios[mode]['ttft_median_x']:.2f}x lower with the cache, "
              f"output tokens/s {ratios[mode]['tok_s_x']:.2f}x")
    write_json(args.out_dir / "summary.json", {"bench": "prefix", "rate": _json_rate(rate), "rows": rows, "ratios": ratios,
                                               "args": {k: str(v) for k, v in vars(args).items()}})
    return 0
