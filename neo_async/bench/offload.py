"""`neo-async bench offload`: output tokens/s of the offload modes (off, neo, full) in one
process, on the same prompts, with the device KV pool capped (the paper's throughput
experiment scaled to this machine): prompts of input_len +-10% tokens, outputs of each
output_len +-10% tokens, all submitted at once, `ignore_eos`. `--pipeline off,on,auto` runs
each offloading mode sequential, always pipelined, and as the cost tables choose (`off` runs
once: it has no host decodes). Rows with a cost model report the predictor's median and p90
relative error of iteration time. `--host-lanes rust,python` runs each offloading case with
host attention handed to rust_cpuattn's lane thread and to a Python worker thread (the GIL's
cost to pipelining). A bar chart of tokens/s goes next to the JSON."""

from __future__ import annotations

import argparse
import gc
import random
import time
from typing import Any

from neo_async.bench.common import machine_info, print_table, write_json

COLUMNS = ["output_len", "device_kv_tokens", "mode", "pipeline", "host_lane", "tok_s", "seconds", "ratio_vs_off", "pipelined_steps",
           "deferred", "sched_ms", "pred_err_p50", "pred_err_p90",
           "swaps_out", "swaps_in", "host_prefill_tokens", "preemptions", "host_kv_blocks", "device_threads", "host_threads"]


def make_workload(num_prompts: int, input_len: int, output_len: int, vocab_size: int, seed: int) -> list[tuple[list[int], int]]:
    """(prompt token ids, max_tokens) pairs, lengths uniform in +-10%."""
    rng = random.Random(seed)
    spread = lambda n: rng.randint(int(n * 0.9), int(n * 1.1))  # noqa: E731
    return [([rng.randrange(100, vocab_size) for _ in range(spread(input_len))], spread(output_len)) for _ in range(num_prompts)]


def run_case(config_overrides: dict[str, Any], workload_args: tuple[int, int, int, int], host_lane: str = "rust") -> dict[str, Any]:
    """One engine, one run of the workload (the same prompts for every case: same seed, same
    vocab); host_lane "python" hands host attention to a Python worker thread."""
    from neo_async import LLM, SamplingParams
    from neo_async.profile.scratch import wait_host_pools_populated
    from neo_async.runner.host_lane import HostLane

    llm = LLM(**config_overrides)
    wait_host_pools_populated()  # the pools' first-touch faults are start-up work, not the run's
    if host_lane == "python":
        llm.engine.worker.executor.host_lane = HostLane(native=False)
    num_prompts, input_len, output_len, seed = workload_args
    workload = make_workload(num_prompts, input_len, output_len, llm.engine.spec.vocab_size, seed)
    params = [SamplingParams(temperature=0.0, max_tokens=m, ignore_eos=True) for _, m in workload]
    started = time.perf_counter()
    outs = llm.generate([p for p, _ in workload], params)
    seconds = time.perf_counter() - started
    llm.engine.check()
    stats = llm.engine.stats()
    tokens = sum(len(o.token_ids) for o in outs)
    errors = sorted(abs(p - m) / m for p, m in llm.engine.recorder.predictions)
    row = {
        "deferred": stats.num_deferred_total,
        "sched_ms": stats.schedule_seconds_total / max(1, stats.num_iterations_total) * 1000,  # per iteration
        "pred_err_p50": errors[len(errors) // 2] if errors else None,
        "pred_err_p90": errors[int(len(errors) * 0.9)] if errors else None,
        "tok_s": tokens / seconds,
        "seconds": seconds,
        "swaps_out": stats.num_swapped_out_total,
        "swaps_in": stats.num_swapped_in_total,
        "host_prefill_tokens": stats.num_host_prefill_tokens_total,
        "preemptions": stats.num_preemptions_total,
        "host_kv_blocks": stats.num_host_blocks_total,
        "pipelined_steps": f"{stats.num_pipelined_iterations_total}/{stats.num_iterations_total}",
        "device_threads": llm.engine.worker.threads.device,
        "host_threads": llm.engine.worker.threads.host,
    }
    del llm
    gc.collect()
    return row


def lane_handoff_us(native: bool, num_jobs: int = 2000) -> float:
    """Microseconds per submit + wait of an empty job on the host lane (the per-layer, per
    sub-batch cost of handing host attention over, on an idle machine): rust_cpuattn's lane
    thread (native) or the Python worker thread."""
    from neo_async.native import rust_cpuattn
    from neo_async.runner.host_lane import HostLane

    python_lane = None if native else HostLane(native=False)
    handoff = rust_cpuattn.HostLane().drain if native else lambda: python_lane.submit(lambda: None).wait()
    for _ in range(100):
        handoff()
    started = time.perf_counter()
    for _ in range(num_jobs):
        handoff()
    seconds = time.perf_counter() - started
    if python_lane is not None:
        python_lane.close()
    return seconds / num_jobs * 1e6


def plot_throughput(rows: list[dict[str, Any]], json_path: str) -> None:
    """Bars of tokens/s per case (output length, device cap), one bar per mode and pipeline."""
    try:
        import matplotlib
    except ImportError:
        print("matplotlib is not installed: no plot")
        return
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cases = sorted({(r["output_len"], r["device_kv_tokens"]) for r in rows})
    series = sorted({(r["mode"], r["pipeline"], r["host_lane"]) for r in rows})
    width = 0.8 / len(series)
    fig, axis = plt.subplots(figsize=(max(6, 1.6 * len(cases) * len(series) / 2), 4), constrained_layout=True)
    for k, (mode, pipeline, lane) in enumerate(series):
        values = [next((r["tok_s"] for r in rows if (r["output_len"], r["device_kv_tokens"], r["mode"], r["pipeline"],
                        r["host_lane"]) == (*case, mode, pipeline, lane)), 0.0) for case in cases]
        label = f"{mode} (pipeline {pipeline})" + (f", {lane} lane" if lane != "-" else "")
        axis.bar([i + k * width for i in range(len(cases))], values, width, label=label)
    axis.set_xticks([i + 0.4 - width / 2 for i in range(len(cases))])
    axis.set_xticklabels([f"out {o}\ncap {c}" for o, c in cases])
    axis.set_ylabel("output tokens/s")
    axis.legend(fontsize="small")
    axis.grid(True, axis="y", alpha=0.3)
    path = str(json_path).rsplit(".", 1)[0] + ".png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    print(f"wrote {path}")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="neo-async bench offload", description=__doc__)
    parser.add_argument("--modes", default="off,neo,full")
    parser.add_argument("--pipeline", default="auto", help="comma-separated pipeline settings (off, on, auto) for neo and full")
    parser.add_argument("--device-kv-tokens", default="2048", help="comma-separated caps of the device pool; 'uncapped' holds the whole workload")
    parser.add_argument("--host-kv-tokens", default="auto")
    parser.add_argument("--host-lanes", default="rust", help="comma-separated host lanes (rust, python) for neo and full")
    parser.add_argument("--num-prompts", type=int, default=32)
    parser.add_argument("--input-len", type=int, default=1000)
    parser.add_argument("--output-lens", default="200", help="comma-separated output lengths")
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    parser.add_argument("--max-num-seqs", type=int, default=64)
    parser.add_argument("--max-num-batched-tokens", type=int, default=512)
    parser.add_argument("--model", default=None, help="GGUF file or HF directory (default: the embedded model)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=1, help="rounds of every case; rows report the median run")
    parser.add_argument("--output", default="results/bench_offload.json")
    args = parser.parse_args(argv)
    from neo_async.logging_setup import configure_logging

    configure_logging("console", "warning")
    modes = args.modes.split(",")
    pipelines = args.pipeline.split(",")
    lanes = args.host_lanes.split(",")
    if not set(lanes) <= {"rust", "python"}:
        parser.error(f"--host-lanes: rust and/or python, got {args.host_lanes!r}")
    host_kv_tokens: int | str = args.host_kv_tokens if args.host_kv_tokens == "auto" else int(args.host_kv_tokens)
    base = dict(model=args.model, dtype=args.dtype, max_num_seqs=args.max_num_seqs,
                max_num_batched_tokens=args.max_num_batched_tokens, host_kv_tokens=host_kv_tokens)
    rows = []
    for output_len in [int(x) for x in args.output_lens.split(",")]:
        workload = (args.num_prompts, args.input_len, output_len, args.seed)
        whole = int(args.num_prompts * (args.input_len + output_len) * 1.1) + 16 * args.num_prompts
        for cap in [whole if x == "uncapped" else int(x) for x in args.device_kv_tokens.split(",")]:
            case_rows = []
            cases = [(m, p, lane) for m in modes for p in (pipelines if m != "off" else ["off"])
                     for lane in (lanes if m != "off" else ["-"])]
            runs: dict[tuple[str, str, str], list[dict[str, Any]]] = {case: [] for case in cases}
            for _ in range(args.repeats):  # rounds of every case: slow spells of a shared machine hit all alike
                for mode, pipeline, lane in cases:
                    row = {"output_len": output_len, "device_kv_tokens": cap, "mode": mode, "pipeline": pipeline,
                           "host_lane": lane}
                    row |= run_case({**base, "offload": mode, "device_kv_tokens": cap, "pipeline": pipeline}, workload,
                                    "python" if lane == "python" else "rust")
                    runs[(mode, pipeline, lane)].append(row)
                    print_table([row], COLUMNS[:7])
            for case in cases:
                by_rate = sorted(runs[case], key=lambda r: r["tok_s"])
                row = by_rate[len(by_rate) // 2]  # the median run
                row["tok_s_runs"] = [r["tok_s"] for r in runs[case]]
                case_rows.append(row)
            off = next((r for r in case_rows if r["mode"] == "off"), None)
            for row in case_rows:
                row["ratio_vs_off"] = row["tok_s"] / off["tok_s"] if off else None
            rows += case_rows
    print()
    print_table(rows, COLUMNS)
    handoff = {lane: lane_handoff_us(lane == "rust") for lane in lanes}
    for lane, us in handoff.items():
        print(f"{lane} host lane hand-off (submit + wait of an empty job): {us:.1f} us")
    plot_throughput(rows, args.output)
    write_json(args.output, {"bench": "offload", "dtype": args.dtype, "num_prompts": args.num_prompts,
                             "input_len": args.input_len, "machine": machine_info(), "rows": rows,
                             "host_lane_handoff_us": handoff})
    return 0

