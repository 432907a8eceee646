"""`neo-async simulate` (a workload on simulated hardware: the load generator's records, summary
and sweep plots) and `neo-async plan` (device-only vs neo vs full, host pool and thread split).

Examples:
  neo-async simulate --gpu T4 --host g4dn.2xlarge --model llama-2-7b --device-kv-tokens 864 \\
      --dataset-name lengths --dataset-path osc_lengths_llama2.json --num-prompts 300 \\
      --request-rates 0.5,1,2,3 --offload neo --save-result
  neo-async plan --gpu A10G --host g5.8xlarge --model llama-3-8b --output-len 200 --tpot-slo-ms 100
  neo-async plan --gpu H100 --host dgx-h100-2gpu --model llama-3-70b --tensor-parallel-size 2
  neo-async plan --gpu A10G --host g5.12xlarge --model llama-3-8b --data-parallel-size 4
  neo-async simulate --reproduce          # writes docs/reproduction.md and its plots
  neo-async simulate --model smollm2-135m --compare-bench results/bench_offload.json \\
      --cost-tables-json ~/.cache/neo-async/profiles/costs-<key>.json   # this machine: measured vs simulated
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

from loadgen import report, sweep
from loadgen.datasets import DATASET_NAMES, DatasetOptions
from loadgen.metrics import DEFAULT_PERCENTILES
from neo_async.config import add_config_flags, config_from_args
from neo_async.sim.hardware import HARDWARE_DIR, gpu_names, host_names
from neo_async.sim.models import MODELS
from neo_async.sim.setup import Deployment
from neo_async.sim.workload import Workload


def _deployment_flags(p: argparse.ArgumentParser) -> None:
    hw = p.add_argument_group("simulated hardware")
    hw.add_argument("--gpu", default="A10G", help=f"one of {', '.join(gpu_names())}")
    hw.add_argument("--host", default="g5.8xlarge", help=f"one of {', '.join(host_names())}")
    hw.add_argument("--model", dest="sim_model", default="llama-3-8b", help=f"one of {', '.join(MODELS)}")
    hw.add_argument("--tensor-parallel-size", "--num-gpus", "--tp", dest="tp", type=int, default=1,
                    help="GPUs per replica, tensor parallel (default: 1)")
    hw.add_argument("--data-parallel-size", "--dp", dest="dp", type=int, default=1,
                    help="replicas on the host, each with its own GPUs and 1/N of the host's vCPUs, RAM and "
                         "memory channels; requests dealt in turn (default: 1)")
    hw.add_argument("--host-threads", type=int, default=None, help="one replica's kernel threads (default: its every vCPU)")
    hw.add_argument("--hardware-dir", type=Path, default=HARDWARE_DIR)
    hw.add_argument("--cost-tables-json", default=None, help="MeasuredCosts JSON from `neo-async profile`: replaces the roofline")
    add_config_flags(p, groups=("cache", "scheduler"))


def _workload_flags(p: argparse.ArgumentParser) -> None:
    data = p.add_argument_group("workload (as neo-loadgen)")
    data.add_argument("--dataset-name", choices=[n for n in DATASET_NAMES if n != "sharegpt"], default="synthetic")
    data.add_argument("--dataset-path", default=None)
    data.add_argument("--num-prompts", type=int, default=None)
    data.add_argument("--shuffle", action="store_true")
    data.add_argument("--input-len", type=int, default=1000)
    data.add_argument("--output-len", type=int, default=100)
    data.add_argument("--range-ratio", type=float, default=0.1)
    data.add_argument("--max-input-len", type=int, default=None)
    data.add_argument("--max-output-len", type=int, default=None)
    data.add_argument("--fixed-output-len", type=int, default=None)
    data.add_argument("--request-rate", type=float, default=math.inf)
    data.add_argument("--burstiness", type=float, default=1.0)
    data.add_argument("--use-trace-timestamps", action="store_true")
    data.add_argument("--trace-time-scale", type=float, default=1.0)
    data.add_argument("--trace-start", type=float, default=0.0)
    data.add_argument("--trace-duration", type=float, default=None)
    data.add_argument("--seed", type=int, default=0)
    data.add_argument("--prefix-repetition-prefix-len", dest="prefix_len", type=int, default=256, help="tokens per shared prefix")
    data.add_argument("--prefix-repetition-suffix-len", dest="suffix_len", type=int, default=256, help="unique tokens after it")
    data.add_argument("--prefix-repetition-num-prefixes", dest="num_prefixes", type=int, default=10, help="distinct prefixes")


def deployment_of(args: argparse.Namespace) -> Deployment:
    config = config_from_args(args, groups=("cache", "scheduler"))
    return Deployment.named(
        args.sim_model, args.gpu, args.host, args.hardware_dir,
        tp=args.tp,
        dp=args.dp,
        host_threads=args.host_threads,
        device_kv_tokens=config.cache.device_kv_tokens,
        host_kv_tokens=config.cache.host_kv_tokens,
        block_size=config.cache.block_size,
        scheduler=config.scheduler,
        cost_tables=args.cost_tables_json,
        enable_prefix_caching=config.cache.enable_prefix_caching,
    )


def workload_of(args: argparse.Namespace) -> Workload:
    options = DatasetOptions(
        num_prompts=args.num_prompts, seed=args.seed, is_shuffled=args.shuffle,
        input_len=args.input_len, output_len=args.output_len, range_ratio=args.range_ratio,
        max_input_len=args.max_input_len, max_output_len=args.max_output_len,
        fixed_output_len=args.fixed_output_len, trace_start_s=args.trace_start,
        trace_duration_s=args.trace_duration, prefix_len=args.prefix_len, suffix_len=args.suffix_len,
        num_prefixes=args.num_prefixes,
    )
    return Workload(
        args.dataset_name, args.dataset_path, options, args.request_rate, args.burstiness,
        args.use_trace_timestamps, args.trace_time_scale,
    )


def simulate_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="neo-async simulate", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    _deployment_flags(p)
    _workload_flags(p)
    out = p.add_argument_group("results (as neo-loadgen)")
    out.add_argument("--request-rates", default=None, help="comma-separated rates: one run each, a sweep and a plot")
    out.add_argument("--label", default=None)
    out.add_argument("--save-result", action="store_true")
    out.add_argument("--result-dir", default=".")
    out.add_argument("--result-filename", default=None)
    out.add_argument("--plot-path", default=None)
    out.add_argument("--reproduce", action="store_true", help="run the paper's experiments, write docs/reproduction.md")
    out.add_argument("--reproduce-out", type=Path, default=None, help="with --reproduce: the markdown path")
    out.add_argument("--quick", action="store_true", help="with --reproduce: fewer requests and rates")
    out.add_argument("--compare-bench", default=None, metavar="JSON",
                     help="simulate each row of a `neo-async bench offload` result with --cost-tables-json "
                          "(this machine's tables) and print measured against simulated")
    return p


def simulate_main(argv: list[str]) -> int:
    args = simulate_parser().parse_args(argv)
    try:
        if args.reproduce:
            from neo_async.sim.reproduce import reproduce

            reproduce(args.reproduce_out, quick=args.quick)
            return 0
        if args.compare_bench:
            return _compare_bench(args)
        return _simulate(args)
    except (ValueError, FileNotFoundError) as e:
        print(f"neo-async simulate: {e}", file=sys.stderr)
        return 2


def _simulate(args: argparse.Namespace) -> int:
    deployment = deployment_of(args)
    workload = workload_of(args)
    offload = args.offload or "neo"
    label = args.label or f"sim-{offload}"
    rates = [float(x) for x in args.request_rates.split(",")] if args.request_rates else [args.request_rate]
    results = []
    for rate in rates:
        run, result = deployment.run(workload, offload, rate, label)
        print(f"# {deployment.name}, offload {offload}, {len(run.iterations)} iterations "
              f"({run.num_pipelined} pipelined), simulated {run.duration_s:.1f} s")
        print(report.format_table(result, DEFAULT_PERCENTILES), flush=True)
        if result["enable_prefix_caching"]:
            print(format_prefix_cache(result), flush=True)
        if args.save_result:
            name = args.result_filename or f"{label}-{report.rate_label(rate)}qps-{deployment.model.name}.json"
            if args.result_filename and len(rates) > 1:
                name = f"{Path(name).stem}-{report.rate_label(rate)}qps.json"
            paths = report.save(result, run.records, args.result_dir, name)
            print(f"saved {paths[0]} and {paths[1]}")
        results.append(result)
    if len(rates) > 1:
        document = sweep.sweep_document(label, deployment.model.name, results)
        print(sweep.format_sweep_table(document))
        stem = Path(args.result_filename).stem + "-sweep" if args.result_filename else f"{label}-sweep-{deployment.model.name}"
        path = sweep.save_sweep(document, Path(args.result_dir) / f"{stem}.json")
        from loadgen.plot import plot_load_latency

        plot = plot_load_latency([document], args.plot_path or path.with_suffix(".png"), deployment.name)
        print(f"saved {path} and {plot}")
    return 0 if all(r["completed"] for r in results) else 1


def format_prefix_cache(result: dict) -> str:
    """The prefix cache's hit rates, as shares of the prompt tokens looked up."""
    return (
        f"prefix cache: {result['prefix_cache_query_tokens']} prompt tokens looked up, hit "
        f"{result['prefix_cache_hit_rate']:.1%} (device {result['prefix_cache_hit_rate_device']:.1%}, "
        f"host {result['prefix_cache_hit_rate_host']:.1%}: {result['prefix_cache_hit_rate_host_in_place']:.1%} read in place, "
        f"the rest copied in), {result['prefix_cache_demoted_blocks']} blocks demoted"
    )


def _compare_bench(args: argparse.Namespace) -> int:
    from neo_async.sim.bench_compare import compare, format_comparison

    if not args.cost_tables_json:
        raise ValueError("--compare-bench needs --cost-tables-json (the tables `neo-async profile` measured here)")
    config = config_from_args(args, groups=("cache", "scheduler"))
    rows = compare(args.compare_bench, args.cost_tables_json, args.sim_model, config.scheduler, config.cache.block_size, args.seed)
    print(format_comparison(rows))
    return 0


def plan_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="neo-async plan", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    _deployment_flags(p)
    _workload_flags(p)
    p.set_defaults(num_prompts=300)
    out = p.add_argument_group("plan")
    out.add_argument("--host-kv-fractions", default="0.125,0.25,0.5,1", help="host pool sizes tried, shares of the auto size")
    out.add_argument("--host-thread-counts", default=None, help="kernel threads tried (default: a quarter, half, all vCPUs)")
    out.add_argument("--plot-path", default="plan.png")
    out.add_argument("--json-path", default=None)
    return p


def plan_main(argv: list[str]) -> int:
    args = plan_parser().parse_args(argv)
    try:
        from neo_async.sim.planner import format_plan, plan_capacity, plot_plan

        deployment = deployment_of(args)
        fractions = [float(x) for x in args.host_kv_fractions.split(",")]
        threads = [int(x) for x in args.host_thread_counts.split(",")] if args.host_thread_counts else None
        outcome = plan_capacity(deployment, workload_of(args), fractions, threads)
    except (ValueError, FileNotFoundError) as e:
        print(f"neo-async plan: {e}", file=sys.stderr)
        return 2
    print(format_plan(outcome))
    if args.json_path:
        import json

        Path(args.json_path).write_text(json.dumps(outcome, indent=2) + "\n")
    print(f"saved {plot_plan(outcome, args.plot_path)}")
    return 0

