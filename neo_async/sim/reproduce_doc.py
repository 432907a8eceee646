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
    fig, axes = plt.subplots(1, len(t4), figsize=(6 * len(t4), 4), constrained_layout=True, squeeze=False)
    for axis, (host, outcome) in zip(axes[0], t4.items(), strict=True):
        for mode, document in outcome["documents"].items():
            runs = document["runs"]
            axis.plot([r["request_rate"] for r in runs], [r["mean_e2el_per_token_ms"] / 1000 for r in runs], "o-", label=f"simulated {document['label']}")
        axis.axhline(paper.T4_LATENCY_BOUND_S, color="grey", linestyle=":", label="0.4 s/token")
        axis.axvline(paper.T4_DEVICE_ONLY_RATE, color="tab:blue", linestyle="--", alpha=0.6, label="paper: device-only saturates")
        axis.axvline(paper.T4_NEO_RATE, color="tab:orange", linestyle="--", alpha=0.6, label="paper: NEO holds to")
        axis.set_yscale("log")
        axis.set_xlabel("request rate (req/s)")
        axis.set_ylabel("mean E2E latency per output token (s)")
        axis.set_title(outcome["deployment"], fontsize="small")
        axis.grid(True, alpha=0.3)
        axis.legend(fontsize="x-small")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_gains(a10g: dict, h100: dict, path: Path) -> Path:
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(12, 4), constrained_layout=True, gridspec_kw={"width_ratios": [4, 1.3]})
    names = list(a10g) + ["H100 70B"]
    outcomes = list(a10g.values()) + [h100]
    published = list(paper.A10G_GAINS.values()) + [paper.H100_GAIN]
    for axis, (lo, hi) in zip(axes, ((0, len(a10g)), (len(a10g), len(names))), strict=True):
        xs = range(hi - lo)
        axis.bar([x - 0.2 for x in xs], [100 * g for g in published[lo:hi]], width=0.4, label="paper", color="grey")
        axis.bar([x + 0.2 for x in xs], [100 * o["best"] for o in outcomes[lo:hi]], width=0.4, label="simulated (best)", color="tab:orange")
        for x, outcome in zip(xs, outcomes[lo:hi], strict=True):
            axis.scatter([x + 0.2] * len(outcome["rows"]), [100 * r["gain"] for r in outcome["rows"]], color="k", s=10, zorder=3)
        axis.set_xticks(list(xs), names[lo:hi])
        axis.axhline(0, color="k", linewidth=0.8)
        axis.set_ylabel("neo throughput gain over device-only (%)")
        axis.grid(True, axis="y", alpha=0.3)
    axes[0].set_title("A10G, Llama-3-8B (dots: each output length)", fontsize="small")
    axes[1].set_title("2x H100, Llama-3-70B", fontsize="small")
    axes[0].legend(fontsize="small")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _gain_table(outcome: dict) -> list[str]:
    lines = ["| output len | device-only tok/s | neo tok/s | gain | pipelined iterations |", "|---|---|---|---|---|"]
    for r in outcome["rows"]:
        lines.append(f"| {r['output_len']} | {r['off']:.0f} | {r['neo']:.0f} | {r['gain']:+.1%} | {r['pipelined']} |")
    return lines


def write_document(out: Path, figures: Path, t4: dict, a10g: dict, h100: dict, quick: bool) -> Path:
    t4_png = plot_t4(t4, figures / "t4_latency.png")
    gains_png = plot_gains(a10g, h100, figures / "gains.png")
    primary = next(iter(t4.values()))
    sweep_png = plot_load_latency(list(primary["documents"].values()), figures / "t4_sweep.png", primary["deployment"])
    rel = lambda p: p.relative_to(out.parent).as_posix()  # noqa: E731

    summary = ["| experiment | paper | simulated | relative error | |", "|---|---|---|---|---|"]
    rates = primary["rates"]
    for mode, published in (("off", paper.T4_DEVICE_ONLY_RATE), ("neo", paper.T4_NEO_RATE)):
        sim = rates[mode]
        shown = f"{sim:.2f} req/s" if sim is not None else f"> {primary['max_rate']} req/s"
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
        summary.append(f"| A10G + {host}: gain | {published:+.0%} | {outcome['best']:+.1%} | {err:+.0%} | {verdict(err)} |")
    err = relative_error(h100["best"], paper.H100_GAIN)
    summary.append(f"| 2x H100, 70B: gain | {paper.H100_GAIN:+.0%} | {h100['best']:+.1%} | {err:+.0%} | {verdict(err)} |")

    lines = [
        "# Reproduction: the paper's GPU results from our scheduler, simulated",
        "",
        f"Written by `neo-async simulate --reproduce{' --quick' if quick else ''}` on {date.today().isoformat()}; "
        "do not edit by hand (the analysis of misses below is kept in `neo_async/sim/reproduce_doc.py`).",
        "",
        "The simulator (`neo_async/sim/`) drives the project's own scheduler and load-aware policy, "
        "unchanged, on a virtual clock; each plan is priced by `sched/predict.plan_time` with the "
        "roofline cost model (`sim/roofline.py`) of the hardware in `configs/hardware/`. One global "
        "calibration (`configs/hardware/calibration.toml`) and one scheduler setting "
        "(max_num_seqs 256, max_num_batched_tokens 2048, pipeline auto) serve every experiment; "
        "nothing is tuned per experiment. Compared figures are defined before running, in "
        "`neo_async/sim/reproduce.py`.",
        "",
        "## Summary (goal: within 25% of the paper's figure)",
        "",
        *summary,
        "",
        "## T4, Llama-2-7B, summarisation lengths, device pool 54 x 16 tokens",
        "",
        "Poisson arrivals at each rate, requests from `shared/traces/osc_lengths_llama2.json` in file "
        "order. The paper's host is \"8-core\": the first panel takes it as 8 vCPUs (g4dn.2xlarge, 4 "
        "physical cores), the second as 8 physical cores (g4dn.4xlarge, 16 vCPUs); the summary uses "
        "the first. Paper: device-only saturates near 0.5 req/s, NEO holds 0.1-0.4 s per token to "
        "about 3.1 req/s (dashed lines).",
        "",
        f"![T4 latency against rate]({rel(t4_png)})",
        "",
        f"![T4 sweep, the load generator's plot]({rel(sweep_png)})",
        "",
    ]
    for host, outcome in t4.items():
        lines += [f"{outcome['deployment']}:", "", "| rate | device-only E2E/token (ms) | neo E2E/token (ms) | neo p50 TPOT (ms) | neo pipelined iterations |", "|---|---|---|---|---|"]
        for off, neo in zip(outcome["documents"]["off"]["runs"], outcome["documents"]["neo"]["runs"], strict=True):
            lines.append(
                f"| {off['request_rate']} | {off['mean_e2el_per_token_ms']:.0f} | {neo['mean_e2el_per_token_ms']:.0f} "
                f"| {neo['median_tpot_ms']:.0f} | {neo['num_pipelined_iterations']}/{neo['num_iterations']} |"
            )
        lines.append("")
    lines += [
        "## A10G, Llama-3-8B, input 1000 +-10%, outputs 50-400 +-10%, all requests at once",
        "",
        "Device pool 25k tokens (the paper's figure for this GPU and model), host pool half the "
        "host's RAM, kernel threads on every vCPU.",
        "",
        f"![gains]({rel(gains_png)})",
        "",
    ]
    for host, outcome in a10g.items():
        lines += [f"{outcome['deployment']} (paper {paper.A10G_GAINS[host]:+.0%}):", "", *_gain_table(outcome), ""]
    lines += [
        "## 2x H100 (tensor parallel), Llama-3-70B, the same throughput workload",
        "",
        "The paper's H100 setting is not in our design note beyond \"70B class, +14%\": we assume two "
        "H100 SXM with tensor parallelism and a DGX H100 host (2x Xeon 8480C, DDR5), device pool what "
        "fits next to the weights.",
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

- **T4: within 25%, with a caveat.** Both saturation rates land near the paper's, and the
  neo/device-only ratio within 12%. The host is the bottleneck (a 4-core host lane at about
  20 GB/s of kernel bandwidth); taking the paper's "8-core" host as 8 physical cores instead
  (second table) moves neo's saturation past 5 req/s, so this figure is only as good as that
  reading of the paper's host.
- **A10G, host bandwidth per VM size is a model, not a measurement.** A VM's read bandwidth is
  min(its physical cores x 20 GB/s, 80% of the socket's channels). On g5 (EPYC 7R32) 8 cores
  already reach the channels, so g5.4xlarge comes out close to g5.8xlarge and g5.8xlarge
  identical to g5.16xlarge, while the paper measured +30% and +79% for those two: its VMs
  evidently reach memory bandwidth in proportion to their size (NUMA quadrants, other
  tenants), which no public figure tells us. The paper itself says gains follow memory
  bandwidth more than cores. Over the four sizes the simulated gains span +2% to +46% against
  the paper's +12% to +79%; g5.4xlarge lands within 3%.
- **Our kernel, not the paper's.** Host attention is priced from rust_cpuattn's measured
  efficiency on our development VM (0.55 of read bandwidth; 12.8 GFLOP/s per thread with
  grouped-query heads, where it is compute-bound). Llama-3-8B's 4 query heads per KV head make
  the host lane compute-bound on small VMs in this model; the paper's ISPC kernel may differ.
- **A small host adds little (g5.2xlarge).** Admission to the host is priced: a prompt starts
  there only when the predicted steady-state tokens/s does not drop. On g5.2xlarge the host
  lane is too slow for that to hold often, so neo stays within -6%..+3% of device-only where
  the paper reports +12%: our model's host lane (4 physical cores, compute-bound with grouped
  heads, see above) is weaker than the paper's on that VM.
- **Host prefill KV copies are not priced.** `plan_time` prices swap copies but not the K/V of
  prefill chunks written to the host pool (one PCIe copy per layer, overlapped in practice).
- **H100: the setting is assumed.** Two H100 SXM, a DGX host with two DDR5 sockets and our
  throughput workload give a gain that grows with the output length, to about +33%: the DGX host's
  ~270 GB/s of kernel bandwidth is far more than the paper's H100 experiment had if it ran on
  a smaller host share or under a latency bound; the paper's +14% may come from a different
  workload or host.
"""
