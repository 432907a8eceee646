"""The paper's GPU results reproduced by the simulator: one command runs every experiment and
writes docs/reproduction.md with tables and PNG plots (docs/reproduction/).

Each experiment runs with the settings the paper's artifact used (neo_async/sim/paper.py, each
with its source): pool sizes, max_num_seqs and max_num_batched_tokens, host, request stream and
how the compared figure is computed. Fixed for every experiment (never tuned per experiment):
the calibration in neo_async/sim/hardware_profiles/calibration.toml and the load-aware policy (pipeline auto)
with the artifact's admission to the host (paper.HOST_ADMISSION, paper.MAX_HOST_WAIT_ITERATIONS).
The compared figures:
- T4: the request rate at which the paper's per-token latency (paper.mean_latency_per_token_s)
  crosses 0.4 s, linear between swept rates, device-only and neo;
- A10G and H100: the paper's throughput (paper.window_throughput: completions per second over
  the middle of the run), neo over device-only, all requests at once; the compared figure is
  the largest gain over the output lengths 50..400 (the paper's figures are "up to" gains),
  every length shown.
"""

from __future__ import annotations

from pathlib import Path

from loadgen import sweep
from loadgen.datasets import DatasetOptions
from neo_async.config import SchedulerConfig
from neo_async.sim import paper
from neo_async.sim.setup import Deployment, throughput_workload
from neo_async.sim.system import GIB, host_kv_tokens_auto
from neo_async.sim.workload import Workload

REPO = Path(__file__).resolve().parents[2]
DEFAULT_OUT = REPO / "docs" / "reproduction.md"
TRACE = REPO.parent / "shared" / "traces" / "osc_lengths_llama2.json"
ARTIFACT_POLICY = {
    "pipeline": "auto",
    "host_admission": paper.HOST_ADMISSION,
    "max_host_wait_iterations": paper.MAX_HOST_WAIT_ITERATIONS,
}
T4_SCHEDULER = SchedulerConfig(
    max_num_seqs=paper.T4_MAX_NUM_SEQS, max_num_batched_tokens=paper.T4_MAX_NUM_BATCHED_TOKENS, **ARTIFACT_POLICY
)
A10G_SCHEDULER = SchedulerConfig(
    max_num_seqs=paper.A10G_MAX_NUM_SEQS, max_num_batched_tokens=paper.A10G_MAX_NUM_BATCHED_TOKENS, **ARTIFACT_POLICY
)
T4_RATES = (0.25, 0.4, 0.5, 0.6, 0.75, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0, 5.0, 6.0)


def crossing_rate(document: dict, key: str, bound_ms: float) -> float | None:
    """The rate where `key` first exceeds bound_ms, linear between swept rates; None if never."""
    points = [(sweep.rate_value(r), r[key]) for r in document["runs"]]
    previous = None
    for rate, value in points:
        if value > bound_ms:
            if previous is None:
                return rate
            (r0, v0) = previous
            return r0 + (rate - r0) * (bound_ms - v0) / (value - v0)
        previous = (rate, value)
    return None


def host_kv_tokens(deployment: Deployment, gib: float) -> int:
    """gib of host KV pool, at most the simulator's default share of the host's RAM."""
    model = deployment.model
    return min(int(gib * GIB // model.kv_bytes_per_token(2)), host_kv_tokens_auto(model, deployment.host, deployment.calibration))


def t4_latency(quick: bool) -> dict:
    deployment = Deployment.named("llama-2-7b", "T4", paper.T4_HOST, scheduler=T4_SCHEDULER)
    deployment = deployment.replace(host_kv_tokens=host_kv_tokens(deployment, paper.T4_HOST_KV_GIB))
    rates = (0.5, 1.0, 2.0, 3.0, 4.0) if quick else T4_RATES
    workload = Workload("lengths", str(TRACE), DatasetOptions(num_prompts=200 if quick else 2000))
    documents = {}
    for mode in ("off", "neo"):
        pool = deployment.replace(device_kv_tokens=paper.T4_DEVICE_BLOCKS[mode] * paper.BLOCK_SIZE)
        results = []
        for rate in rates:
            run, result = pool.run(workload, mode, rate, label=mode)
            result["paper_latency_per_token_ms"] = 1000 * paper.mean_latency_per_token_s(run.records)
            results.append(result)
        documents[mode] = sweep.sweep_document("device-only" if mode == "off" else "neo", deployment.model.name, results)
        for run_summary, result in zip(documents[mode]["runs"], results, strict=True):
            run_summary["paper_latency_per_token_ms"] = result["paper_latency_per_token_ms"]
    bound_ms = paper.T4_LATENCY_BOUND_S * 1000
    return {
        "deployment": deployment.name,
        "documents": documents,
        "rates": {m: crossing_rate(d, "paper_latency_per_token_ms", bound_ms) for m, d in documents.items()},
        "max_rate": max(rates),
    }


def gain_row(deployment: Deployment, output_len: int, quick: bool, device_blocks: dict[str, int], cache: dict) -> dict:
    """Device-only and neo on the paper's throughput workload; device-only runs are shared by
    deployments that differ only in the host (cache), as it never touches the host."""
    workload = throughput_workload(output_len, num_prompts=200 if quick else paper.A10G_NUM_REQUESTS, input_len=paper.A10G_INPUT_LEN)
    outcome = {}
    for mode in ("off", "neo"):
        pool = deployment.replace(device_kv_tokens=device_blocks[mode] * paper.BLOCK_SIZE)
        key = (deployment.model.name, deployment.gpu.name, deployment.tp, device_blocks[mode], output_len, quick)
        if mode == "off" and key in cache:
            outcome[mode] = cache[key]
            continue
        run, result = pool.run(workload, mode)
        ends = [r.sent_s + r.e2el_s for r in run.records if r.success]
        outcome[mode] = (paper.window_throughput(ends), result)
        if mode == "off":
            cache[key] = outcome[mode]
    (off_rate, off), (neo_rate, neo) = outcome["off"], outcome["neo"]
    return {
        "output_len": output_len,
        "off_req_s": off_rate,
        "neo_req_s": neo_rate,
        "off": off["output_throughput"],
        "neo": neo["output_throughput"],
        "gain": neo_rate / off_rate - 1,
        "token_gain": neo["output_throughput"] / off["output_throughput"] - 1,
        "pipelined": f"{neo['num_pipelined_iterations']}/{neo['num_iterations']}",
        "device_kv_tokens": neo["device_kv_tokens"],
        "host_kv_tokens": neo["host_kv_tokens"],
    }


def throughput_gains(deployment: Deployment, quick: bool, device_blocks: dict[str, int], cache: dict) -> dict:
    lens = (100, 300) if quick else paper.A10G_OUTPUT_LENS
    rows = [gain_row(deployment, n, quick, device_blocks, cache) for n in lens]
    return {"deployment": deployment.name, "rows": rows, "best": max(r["gain"] for r in rows)}


def reproduce(out: Path | None = None, quick: bool = False) -> Path:
    """Runs every experiment; needs a checkout beside the workload traces (`../shared/traces`)."""
    if not TRACE.exists():
        raise FileNotFoundError(
            f"--reproduce replays the paper's trace {TRACE.name}, expected at {TRACE} (a checkout of the "
            "project beside its shared/traces); an installed package has no traces"
        )
    out = Path(out or DEFAULT_OUT)
    figures = out.parent / out.stem
    figures.mkdir(parents=True, exist_ok=True)
    t4 = t4_latency(quick)
    cache: dict = {}
    a10g = {}
    for host in paper.A10G_GAINS:
        deployment = Deployment.named("llama-3-8b", "A10G", host, scheduler=A10G_SCHEDULER)
        deployment = deployment.replace(host_kv_tokens=host_kv_tokens(deployment, paper.A10G_HOST_KV_GIB))
        a10g[host] = throughput_gains(deployment, quick, paper.A10G_DEVICE_BLOCKS, cache)
    h100 = Deployment.named("llama-3-70b", "H100", "dgx-h100", tp=2, scheduler=A10G_SCHEDULER)
    blocks = h100.settings("neo")["device_kv_tokens"] // paper.BLOCK_SIZE
    h100_outcome = throughput_gains(h100, quick, {"off": blocks, "neo": blocks}, cache)
    from neo_async.sim.reproduce_doc import write_document

    return write_document(out, figures, t4, a10g, h100_outcome, quick)
