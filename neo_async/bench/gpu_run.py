"""The GPU check's two engine runs (python -m neo_async.bench.gpu_run), each one JSON object:

- `equivalence`: greedy tokens of `off` with a roomy device pool against `neo` with a tiny one
  (pipeline on, a large host pool, fixed rules): identical tokens, pipelined steps and swaps
  both > 0, both pools' invariants checked and empty at the end.
- `lanes`: `neo` (pipeline on) with host attention on the thread lane against the inline lane
  (runner/host_lane.py), same workload: tokens/s, the device lane's wait share, and the host
  jobs' run time per pipelined step, so the GIL hand-off of the thread lane is measured.
- `throughput`: `off` against `neo` on one workload with the device pool capped: output tokens
  per second, mean step time, the pipelined share of steps, host decodes per step, the device
  lane's wait for the host lane as a share of pipelined step time (0: host attention fully
  hidden), whether the host pool is pinned, and the attention backend.

The same code runs on the CPU device at toy sizes (the check's dry mode).
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import time
from typing import Any

from neo_async.bench.offload import make_workload
from neo_async.kernels.checked import backend_name


def _engine(model: str, dtype: str, **overrides: Any):
    from neo_async.config import Config
    from neo_async.engine import Engine

    base = dict(model=model, dtype=dtype, cost_tables="none", block_size=16)
    return Engine(Config().override(**{**base, **overrides}))


def _drive(engine, workload: list[tuple[list[int], int]]) -> dict[str, Any]:
    """Runs the workload to the end, checking the pools after every step; per-step figures."""
    from neo_async.sampling_params import SamplingParams

    requests = []
    for i, (prompt, max_tokens) in enumerate(workload):
        request = engine.make_request(prompt, SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True), f"r{i}")
        engine.add_request(request)
        requests.append(request)
    steps = []
    started = time.perf_counter()
    while engine.has_unfinished:
        engine.step()
        engine.check()
        steps.append(engine.recorder.last_step)
    seconds = time.perf_counter() - started
    assert engine.device_pool.num_used == 0 and engine.host_pool.num_used == 0, "blocks left after every request finished"
    pipelined = [s for s in steps if s.is_pipelined]
    host_steps = [s for s in steps if s.num_host_seqs]
    executor = engine.worker.executor
    return {
        "tokens": {r.request_id: r.output_token_ids for r in requests},
        "tok_s": sum(len(r.output_token_ids) for r in requests) / seconds,
        "seconds": round(seconds, 3),
        "steps": len(steps),
        "mean_step_ms": round(statistics.fmean(s.iteration_s for s in steps) * 1000, 3) if steps else None,
        "pipelined_steps": len(pipelined),
        "pipelined_share": round(len(pipelined) / max(1, len(steps)), 3),
        "host_seqs_per_host_step": round(statistics.fmean(s.num_host_seqs for s in host_steps), 2) if host_steps else 0,
        "host_wait_share": _wait_share(executor.host_wait_s_total, sum(s.execute_s or 0.0 for s in pipelined)),
        "swaps_out": engine.scheduler.num_swapped_out_total,
        "swaps_in": engine.scheduler.num_swapped_in_total,
        "preemptions": engine.scheduler.num_preemptions_total,
        "host_prefill_tokens": engine.recorder.num_host_prefill_tokens_total,
    }


def _wait_share(wait_s: float, pipelined_s: float) -> float | None:
    return round(wait_s / pipelined_s, 3) if pipelined_s > 0 else None


def _setup(engine) -> dict[str, Any]:
    host = engine.worker.host_cache
    kernels = engine.worker.cache.kernels
    return {
        "device": str(engine.worker.device),
        "device_kv_tokens": engine.device_pool.num_blocks * engine.device_pool.block_size,
        "host_kv_tokens": engine.host_pool.num_blocks * engine.host_pool.block_size,
        "host_pool_pinned": bool(host is not None and engine.worker.device.type == "cuda" and host.k.is_pinned()),
        "decode_backend": backend_name(None if kernels is None else kernels[0]),
        "device_threads": engine.worker.threads.device,
        "host_threads": engine.worker.threads.host,
    }


def _free(engine) -> None:
    del engine
    gc.collect()
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def equivalence(args: argparse.Namespace) -> dict[str, Any]:
    roomy = 2 * args.num_prompts * (int(args.input_len * 1.1) + int(args.output_len * 1.1) + 16)
    off = _engine(args.model, args.dtype, offload="off", device_kv_tokens=roomy, max_num_seqs=args.max_num_seqs)
    workload = make_workload(args.num_prompts, args.input_len, args.output_len, off.spec.vocab_size, args.seed)
    reference = _drive(off, workload)
    _free(off)
    neo = _engine(
        args.model, args.dtype, offload="neo", device_kv_tokens=args.device_kv_tokens, host_kv_tokens=roomy, pipeline="on",
        max_num_seqs=args.max_num_seqs,
    )
    setup = _setup(neo)
    run = _drive(neo, workload)
    _free(neo)
    mismatched = sorted(rid for rid, tokens in run["tokens"].items() if tokens != reference["tokens"][rid])
    result = {
        "identical": not mismatched,
        "mismatched": mismatched,
        "pipelined_steps": run["pipelined_steps"],
        "swaps_out": run["swaps_out"],
        "swaps_in": run["swaps_in"],
        "host_prefill_tokens": run["host_prefill_tokens"],
        **setup,
    }
    result["ok"] = result["identical"] and run["pipelined_steps"] > 0 and run["swaps_out"] > 0
    return result


def throughput(args: argparse.Namespace) -> dict[str, Any]:
    result: dict[str, Any] = {"num_prompts": args.num_prompts, "input_len": args.input_len, "output_len": args.output_len}
    for mode in ("off", "neo"):
        engine = _engine(
            args.model, args.dtype, offload=mode, device_kv_tokens=args.device_kv_tokens, pipeline=args.pipeline,
            max_num_seqs=args.max_num_seqs, max_num_batched_tokens=args.max_num_batched_tokens,
            **({"host_kv_tokens": args.host_kv_tokens} if mode == "neo" else {}),
        )
        setup = _setup(engine)
        workload = make_workload(args.num_prompts, args.input_len, args.output_len, engine.spec.vocab_size, args.seed)
        run = _drive(engine, workload)
        _free(engine)
        run.pop("tokens")
        result[mode] = {**run, **setup}
        print(json.dumps({"mode": mode, **result[mode]}), file=sys.stderr, flush=True)
    result["neo_over_off"] = round(result["neo"]["tok_s"] / result["off"]["tok_s"], 3)
    return result


def lanes(args: argparse.Namespace) -> dict[str, Any]:
    from neo_async.runner.host_lane import HostLane, InlineLane

    result: dict[str, Any] = {}
    for name, make_lane in (("thread", HostLane), ("inline", InlineLane)):
        engine = _engine(
            args.model, args.dtype, offload="neo", device_kv_tokens=args.device_kv_tokens, host_kv_tokens=args.host_kv_tokens,
            pipeline="on", max_num_seqs=args.max_num_seqs, max_num_batched_tokens=args.max_num_batched_tokens,
        )
        lane = engine.worker.executor.host_lane = make_lane()
        workload = make_workload(args.num_prompts, args.input_len, args.output_len, engine.spec.vocab_size, args.seed)
        run = _drive(engine, workload)
        run.pop("tokens")
        pipelined = max(1, run["pipelined_steps"])
        result[name] = {
            **{k: run[k] for k in ("tok_s", "mean_step_ms", "pipelined_steps", "host_wait_share")},
            "host_run_ms_per_pipelined_step": round(lane.run_s_total / pipelined * 1000, 3) if lane.run_s_total else None,
        }
        lane.close()
        _free(engine)
    result["inline_over_thread"] = round(result["inline"]["tok_s"] / result["thread"]["tok_s"], 3)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m neo_async.bench.gpu_run", description=__doc__.split("\n\n")[0])
    parser.add_argument("run", choices=["equivalence", "lanes", "throughput"])
    parser.add_argument("--model", required=True, help="GGUF file or HF directory")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    # equivalence's defaults: prompts that fit the device pool, outputs long enough to make them swap out
    parser.add_argument("--num-prompts", type=int, default=8)
    parser.add_argument("--input-len", type=int, default=40)
    parser.add_argument("--output-len", type=int, default=64)
    parser.add_argument("--device-kv-tokens", type=int, default=160)
    parser.add_argument("--host-kv-tokens", type=int, default=65536)
    parser.add_argument("--max-num-seqs", type=int, default=64)
    parser.add_argument("--max-num-batched-tokens", type=int, default=2048)
    parser.add_argument("--pipeline", default="auto", choices=["auto", "on", "off"], help="throughput: neo's pipeline setting")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    result = {"equivalence": equivalence, "lanes": lanes, "throughput": throughput}[args.run](args)
    print(json.dumps(result))
    return 0 if result.get("ok", True) else 1


if __name__ == "__main__":
    sys.exit(main())
