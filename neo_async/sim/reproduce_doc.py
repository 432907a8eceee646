"""docs/reproduction.md and its plots, from the reproduction's results (see reproduce.py)."""

from __future__ import annotations

import math
from datetime import date
from pathlib import Path

from loadgen.plot import plot_load_latency
from neo_async.sim import paper


def relative_error(simulated: float | None, published: float) -> float:
    return math.inf if simulated is None else simulated / published - 1


def verdict(error: float) -> str:
    return "within 25%" if abs(error) <= paper.TOLERANCE else "**miss**"


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_t4(t4: dict, path: Path) -> Path:
    plt = _pyplot()
    fig, axis = plt.subplots(figsize=(6, 4), constrained_layout=True)
    for mode, document in t4["documents"].items():
        runs = document["runs"]
        axis.plot([r["request_rate"] for r in runs], [r["paper_latency_per_token_ms"] / 1000 for r in runs], "o-", label=f"simulated {document['label']}")
    axis.axhline(paper.T4_LATENCY_BOUND_S, color="grey", linestyle=":", label="0.4 s/token")
    axis.axvline(paper.T4_DEVICE_ONLY_RATE, color="tab:blue", linestyle="--", alpha=0.6, label="paper: device-only crosses 0.4 s")
    axis.axvline(paper.T4_NEO_RATE, color="tab:orange", linestyle="--", alpha=0.6, label="paper: NEO crosses 0.4 s")
    axis.set_yscale("log")
    axis.set_xlabel("request rate (req/s)")
    axis.set_ylabel("mean latency per output token (s)")
    axis.set_title(t4["deployment"], fontsize="small")
    axis.grid(True, alpha=0.3)
    axis.legend(fontsize="x-small")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_gains(a10g: dict, h100: dict, path: Path) -> Path:
    """Left: each A10G host's gain per output length, simulated (solid) and the paper's Figure 10a
    (dashed); right: the peak gains, paper against simulated."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(12, 4), constrained_layout=True, gridspec_kw={"width_ratios": [3, 2]})
    for k, (host, outcome) in enumerate(a10g.items()):
        color = f"C{k}"
        rows = outcome["rows"]
        axes[0].plot([r["output_len"] for r in rows], [100 * r["gain"] for r in rows], "o-", color=color, label=f"{host} simulated")
        curve = paper.A10G_GAIN_CURVES[host]
        axes[0].plot(list(curve), [100 * g for g in curve.values()], "x--", color=color, alpha=0.6, label=f"{host} paper")
    axes[0].axhline(0, color="k", linewidth=0.8)
    axes[0].set_xlabel("output length")
    axes[0].set_ylabel("neo throughput gain over device-only (%)")
    axes[0].set_title("A10G, Llama-3-8B: gain per output length", fontsize="small")
    axes[0].grid(True, alpha=0.3)
    axes[0].legend(fontsize="x-small", ncol=2)
    names = list(a10g) + ["2x H100 70B"]
    published = list(paper.A10G_GAINS.values()) + [paper.H100_GAIN]
    simulated = [o["best"] for o in a10g.values()] + [h100["best"]]
    xs = range(len(names))
    axes[1].bar([x - 0.2 for x in xs], [100 * g for g in published], width=0.4, label="paper", color="grey")
    axes[1].bar([x + 0.2 for x in xs], [100 * g for g in simulated], width=0.4, label="simulated", color="tab:orange")
    axes[1].set_xticks(list(xs), names, fontsize="x-small")
    axes[1].axhline(0, color="k", linewidth=0.8)
    axes[1].set_ylabel("peak gain (%)")
    axes[1].set_title("peak gain over output lengths", fontsize="small")
    axes[1].grid(True, axis="y", alpha=0.3)
    axes[1].legend(fontsize="small")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _gain_table(outcome: dict, curve: dict[int, float] | None = None) -> list[str]:
    head = "| output len | device-only req/s | neo req/s | gain (req/s) | paper | device-only tok/s | neo tok/s | pipelined iterations |"
    lines = [head, "|---|---|---|---|---|---|---|---|"]
    for r in outcome["rows"]:
        published = f"{curve[r['output_len']]:+.1%}" if curve and r["output_len"] in curve else ""
        lines.append(
            f"| {r['output_len']} | {r['off_req_s']:.2f} | {r['neo_req_s']:.2f} | {r['gain']:+.1%} | {published} "
            f"| {r['off']:.0f} | {r['neo']:.0f} | {r['pipelined']} |"
        )
    return lines


def write_document(out: Path, figures: Path, t4: dict, a10g: dict, h100: dict, quick: bool) -> Path:
    t4_png = plot_t4(t4, figures / "t4_latency.png")
    gains_png = plot_gains(a10g, h100, figures / "gains.png")
    sweep_png = plot_load_latency(list(t4["documents"].values()), figures / "t4_sweep.png", t4["deployment"])
    rel = lambda p: p.relative_to(out.parent).as_posix()  # noqa: E731

    summary = ["| experiment | paper | simulated | relative error | |", "|---|---|---|---|---|"]
    rates = t4["rates"]
    for mode, published in (("off", paper.T4_DEVICE_ONLY_RATE), ("neo", paper.T4_NEO_RATE)):
        sim = rates[mode]
        shown = f"{sim:.2f} req/s" if sim is not None else f"> {t4['max_rate']} req/s"
        err = relative_error(sim, published)
        name = "device-only" if mode == "off" else "neo"
        summary.append(f"| T4, {name}: rate at 0.4 s/token | {published} req/s | {shown} | {err:+.0%} | {verdict(err)} |")
    if rates["off"] and rates["neo"]:
        ratio, published = rates["neo"] / rates["off"], paper.T4_NEO_RATE / paper.T4_DEVICE_ONLY_RATE
        err = relative_error(ratio, published)
        summary.append(f"| T4, neo / device-only rate | {published:.1f}x | {ratio:.1f}x | {err:+.0%} | {verdict(err)} |")
    for host, outcome in a10g.items():
        published = paper.A10G_GAINS[host]
        err = relative_error(outcome["best"], published)
        summary.append(f"| A10G + {host}: peak gain | {published:+.1%} | {outcome['best']:+.1%} | {err:+.0%} | {verdict(err)} |")
    err = relative_error(h100["best"], paper.H100_GAIN)
    summary.append(f"| 2x H100, 70B: peak gain (setting assumed) | {paper.H100_GAIN:+.0%} | {h100['best']:+.1%} | {err:+.0%} | {verdict(err)} |")

    lines = [
        "# Reproduction: the paper's GPU results from our scheduler, simulated",
        "",
        f"Written by `neo-async simulate --reproduce{' --quick' if quick else ''}` on {date.today().isoformat()}; "
        "do not edit by hand (the analysis of misses below is kept in `neo_async/sim/reproduce_doc.py`).",
        "",
        "The simulator (`neo_async/sim/`) drives the project's own scheduler and load-aware policy, "
        "unchanged, on a virtual clock; each plan is priced by `sched/predict.plan_time` with the "
        "roofline cost model (`sim/roofline.py`) of the hardware in `neo_async/sim/hardware_profiles/`. One global "
        "calibration (`neo_async/sim/hardware_profiles/calibration.toml`) serves every experiment; nothing is tuned "
        "per experiment. Each experiment runs with the settings of the paper's artifact "
        "(github.com/NEO-MLSys25/NEO: its README, `evaluation/configs/*.json`, `evaluation/server.py`, "
        "`benchmark.py`, `illustrator.py`), each cited in `neo_async/sim/paper.py`: pool sizes "
        "(NEO's device pool is 32/33 of the baseline's, one layer's worth being kept for host "
        "prefill), max_num_seqs and max_num_batched_tokens, host, request stream, and the way each "
        "compared figure is computed. Compared figures are defined before running, in "
        "`neo_async/sim/reproduce.py`.",
        "",
        "## Summary (goal: within 25% of the paper's figure)",
        "",
        *summary,
        "",
        "## T4, Llama-2-7B, summarisation lengths (the paper's Figure 6c)",
        "",
        f"{t4['deployment']}: g4dn.4xlarge is the paper's host (8 cores of Xeon P-8259CL, 64 GB); "
        f"device pool {paper.T4_DEVICE_BLOCKS['off']} blocks of 16 tokens for device-only and "
        f"{paper.T4_DEVICE_BLOCKS['neo']} for neo, host pool {paper.T4_HOST_KV_GIB} GiB, max_num_seqs "
        f"{paper.T4_MAX_NUM_SEQS}, max_num_batched_tokens {paper.T4_MAX_NUM_BATCHED_TOKENS}. The 2000 "
        "requests of `shared/traces/osc_lengths_llama2.json` in file order, Poisson arrivals at each "
        "rate. Latency is the paper's: the mean over requests (the first quarter skipped) of E2E "
        "latency / output length. Paper (Figure 6c): device-only passes 0.4 s/token near 0.5 req/s, "
        "NEO near 3.1 req/s (dashed lines).",
        "",
        f"![T4 latency against rate]({rel(t4_png)})",
        "",
        f"![T4 sweep, the load generator's plot]({rel(sweep_png)})",
        "",
        "| rate | device-only latency/token (ms) | neo latency/token (ms) | neo p50 TPOT (ms) | neo pipelined iterations |",
        "|---|---|---|---|---|",
    ]
    for off, neo in zip(t4["documents"]["off"]["runs"], t4["documents"]["neo"]["runs"], strict=True):
        lines.append(
            f"| {off['request_rate']} | {off['paper_latency_per_token_ms']:.0f} | {neo['paper_latency_per_token_ms']:.0f} "
            f"| {neo['median_tpot_ms']:.0f} | {neo['num_pipelined_iterations']}/{neo['num_iterations']} |"
        )
    first = next(iter(a10g.values()))["rows"][0]
    lines += [
        "",
        "## A10G, Llama-3-8B, input 1000 +-10%, outputs 50-400 +-10%, all at once (the paper's Figure 10a)",
        "",
        f"{paper.A10G_NUM_REQUESTS} requests submitted at once; device pool {paper.A10G_DEVICE_BLOCKS['off']} "
        f"blocks of 16 tokens for device-only and {paper.A10G_DEVICE_BLOCKS['neo']} for neo; host pool "
        f"min({paper.A10G_HOST_KV_GIB} GiB, half the RAM); max_num_seqs {paper.A10G_MAX_NUM_SEQS}, "
        f"max_num_batched_tokens {paper.A10G_MAX_NUM_BATCHED_TOKENS}; kernel threads on every vCPU (the "
        "artifact's OpenMP default). Throughput is the paper's: completions per second from the gaps "
        "between consecutive completions, the first and last 30% of gaps dropped; tokens/s over the "
        "whole run are shown beside it. The paper column is Figure 10a read off the plot (+-1%), "
        f"its peaks exact. (First row's pools: {first['device_kv_tokens']} device, "
        f"{first['host_kv_tokens']} host KV tokens.)",
        "",
        f"![gains]({rel(gains_png)})",
        "",
    ]
    for host, outcome in a10g.items():
        lines += [f"{outcome['deployment']} (paper: up to {paper.A10G_GAINS[host]:+.1%}):", "", *_gain_table(outcome, paper.A10G_GAIN_CURVES[host]), ""]
    lines += [
        "## 2x H100 (tensor parallel), Llama-3-70B (setting assumed)",
        "",
        "The paper's +14% on H100 is, per its abstract, a throughput gain \"while maintaining the same "
        "latency\"; the artifact has no H100 configuration, so GPU count, host and workload are not "
        "published. We run the A10G's throughput workload and scheduler settings on two H100 SXM "
        "with tensor parallelism and a DGX H100 host (2x Xeon 8480C, DDR5), device pool what fits "
        "next to the weights: a different measurement than the paper's, shown for scale.",
        "",
        *_gain_table(h100),
        "",
        MISSES,
    ]
    out.write_text("\n".join(lines) + "\n")
    return out


MISSES = """## Misses, and why

(Kept by hand in `neo_async/sim/reproduce_doc.py`, written against the full run; read it with
the summary above.)

Every experiment runs the artifact's admission to the host (`host_admission = "room"`: a prompt
the device cannot hold starts on the host whenever the host pool has room) with a 64-iteration
bound on how long a host decode may sit out (the artifact has none), and the load-aware policy's
output-rate objective: a plan is priced by its sampled tokens, so host decodes ride in the
shadow of prefill iterations, and sit out the decode-only iterations they would slow. With the
online default instead (`"rate"` admission: a host prompt only when the steady decode rate does
not drop; 4 iterations) the small A10G hosts stay device-only (+1%) and the T4 crosses 0.4
s/token at 2.6 req/s (-15%).

- **T4: within 25%, above the paper.** Device-only passes 0.4 s/token at 0.50 req/s and neo at
  3.65 req/s (paper: 0.5 and 3.1). The T4 is priced at its sustained ~24 TFLOPS under the 70 W
  cap (a public measurement, `neo_async/sim/hardware_profiles/gpus.toml`); the host is the artifact's g4dn.4xlarge
  (8 cores). Host requests admitted by room wait for prefill shadow, so the mean per-token
  latency stays low while their own latency spreads.
- **A10G: within 25% on every host size**, the curves' shapes as in the paper on g5.2xlarge
  (peak at the shortest outputs, falling with longer ones: host decodes hide under prefill-heavy
  iterations) and g5.8xlarge. Where we differ: on g5.4xlarge the gain falls faster with the
  output length than the paper's (-9% at 400 against +1.5%): its larger host pool (half of 64 GB)
  admits more host requests than 8 cores can serve in prefill shadow once prompts run out. On
  g5.16xlarge the window throughput (completions in the middle 40% of the run) gains +84% at
  output 50 against the paper's +4%, while tokens per second over the whole run gain +20%: with
  admission by room, completions come in bursts and the paper's window sees one. Its 32 cores
  are priced at 80% of the socket's eight DDR4-3200 channels (164 GB/s) shared with the socket's
  other 16 cores.
- **Our kernel, not the paper's.** Host attention is priced from rust_cpuattn's measured
  efficiency on a development VM (0.55 of read bandwidth; 12.8 GFLOP/s per thread with
  grouped-query heads).
- **Host prefill KV copies are not priced.** `plan_time` prices swap copies but not the K/V of
  prefill chunks written to the host pool (one PCIe copy per layer, overlapped in practice).
- **H100: not the paper's measurement.** The abstract's +14% is a gain at equal latency, and the
  artifact has no H100 configuration (GPU count, host, workload). Our throughput test on two H100
  with a DGX host (2 TB of RAM, ~270 GB/s of kernel bandwidth) and admission by room gives about
  +100% at every output length: it shows what such a host allows under that workload, not the
  paper's figure.
"""
