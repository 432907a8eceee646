"""The paper's GPU results reproduced by the simulator: one command runs every experiment and
writes docs/reproduction.md with tables and PNG plots (docs/reproduction/).

Fixed for every experiment (never tuned per experiment): the calibration in
configs/hardware/calibration.toml, the scheduler settings below, the load-aware policy on
(pipeline auto), and the rule for each compared figure:
- T4: the request rate at which mean E2E latency per output token crosses 0.4 s (linear
  between swept rates), device-only and neo;
- A10G and H100: output tokens/s of neo over device-only, all requests at once; the compared
  figure is the largest gain over the output lengths 50, 100, 200, 400 (the paper's figures
  are "up to" gains), every length shown.
"""

from __future__ import annotations

from pathlib import Path

from loadgen import sweep
from loadgen.datasets import DatasetOptions
from neo_async.config import SchedulerConfig
from neo_async.sim import paper
from neo_async.sim.setup import Deployment, throughput_workload
from neo_async.sim.workload import Workload

REPO = Path(__file__).resolve().parents[2]
DEFAULT_OUT = REPO / "docs" / "reproduction.md"
TRACE = REPO.parent / "shared" / "traces" / "osc_lengths_llama2.json"
SCHEDULER = SchedulerConfig(max_num_seqs=256, max_num_batched_tokens=2048, pipeline="auto")
OUTPUT_LENS = (50, 100, 200, 400)


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


def t4_latency(host: str, quick: bool) -> dict:
    deployment = Deployment.named(
        "llama-2-7b", "T4", host, device_kv_tokens=paper.T4_DEVICE_KV_TOKENS, scheduler=SCHEDULER
    )
    rates = (0.5, 1.0, 2.0, 3.0, 4.0) if quick else (0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0, 5.0)
    workload = Workload("lengths", str(TRACE), DatasetOptions(num_prompts=100 if quick else 300))
    documents = {}
    for mode in ("off", "neo"):
        results = [deployment.run(workload, mode, rate, label=mode)[1] for rate in rates]
        documents[mode] = sweep.sweep_document("device-only" if mode == "off" else "neo", deployment.model.name, results)
    bound_ms = paper.T4_LATENCY_BOUND_S * 1000
    return {
        "deployment": deployment.name,
        "documents": documents,
        "rates": {m: crossing_rate(d, "mean_e2el_per_token_ms", bound_ms) for m, d in documents.items()},
        "max_rate": max(rates),
    }


def throughput_gains(deployment: Deployment, quick: bool) -> dict:
    rows = []
    for output_len in OUTPUT_LENS if not quick else (100, 400):
        workload = throughput_workload(output_len, num_prompts=100 if quick else 400)
        off = deployment.run(workload, "off")[1]
        neo = deployment.run(workload, "neo")[1]
        rows.append({
            "output_len": output_len,
            "off": off["output_throughput"],
            "neo": neo["output_throughput"],
            "gain": neo["output_throughput"] / off["output_throughput"] - 1,
            "pipelined": f"{neo['num_pipelined_iterations']}/{neo['num_iterations']}",
            "device_kv_tokens": neo["device_kv_tokens"],
        })
    return {"deployment": deployment.name, "rows": rows, "best": max(r["gain"] for r in rows)}


def reproduce(out: Path | None = None, quick: bool = False) -> Path:
    out = Path(out or DEFAULT_OUT)
    figures = out.parent / out.stem
    figures.mkdir(parents=True, exist_ok=True)
    t4 = {host: t4_latency(host, quick) for host in ("g4dn.2xlarge", "g4dn.4xlarge")}
    a10g = {
        host: throughput_gains(
            Deployment.named("llama-3-8b", "A10G", host, device_kv_tokens=paper.A10G_DEVICE_KV_TOKENS, scheduler=SCHEDULER),
            quick,
        )
        for host in paper.A10G_GAINS
    }
    h100 = throughput_gains(Deployment.named("llama-3-70b", "H100", "dgx-h100", tp=2, scheduler=SCHEDULER), quick)
    from neo_async.sim.reproduce_doc import write_document

    return write_document(out, figures, t4, a10g, h100, quick)



