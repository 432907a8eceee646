"""The capacity planner: for one deployment and workload, device-only vs neo vs full, then the
host pool size and kernel thread count that maximise neo's output throughput while its p99 TPOT
meets the target (scheduler.tpot_slo_ms; no target: throughput alone). With replicas
(deployment.dp), pools and threads are one replica's and throughputs the whole deployment's."""

from __future__ import annotations

from neo_async.sim.setup import Deployment
from neo_async.sim.system import host_kv_tokens_auto
from neo_async.sim.workload import Workload

KEYS = ("output_throughput", "request_throughput", "median_tpot_ms", "p99_tpot_ms", "median_e2el_ms", "p99_e2el_ms")


def _row(name: str, result: dict) -> dict:
    return {
        "name": name,
        **{k: result[k] for k in KEYS},
        "host_kv_tokens": result["host_kv_tokens"],
        "host_threads": result["sim_host_threads"],
    }


def plan_capacity(
    deployment: Deployment, workload: Workload, host_fractions: list[float], host_threads: list[int] | None = None
) -> dict:
    slo = deployment.scheduler.tpot_slo_ms
    modes = [_row(mode, deployment.run(workload, mode)[1]) for mode in ("off", "neo", "full")]
    auto = host_kv_tokens_auto(deployment.model, deployment.replica_host, deployment.calibration)
    pools = []
    for fraction in host_fractions:
        tokens = max(deployment.block_size, int(auto * fraction))
        pools.append(_row(f"host pool {tokens} tokens", deployment.replace(host_kv_tokens=tokens).run(workload, "neo")[1]))
    vcpus, tp = deployment.replica_host.vcpus, deployment.tp  # one replica's; at least a thread per rank
    counts = host_threads or sorted({max(tp, vcpus // 4), max(tp, vcpus // 2), vcpus})
    threads = [
        _row(f"{n} kernel threads", deployment.replace(host_threads=n).run(workload, "neo")[1]) for n in counts
    ]
    candidates = [r for r in pools + threads if slo is None or r["p99_tpot_ms"] <= slo]
    best = max(candidates, key=lambda r: r["output_throughput"], default=None)
    off = modes[0]["output_throughput"]
    return {
        "deployment": deployment.name,
        "workload": {"dataset": workload.dataset_name, "rate": workload.rate_of_record(), "options": repr(workload.options)},
        "tpot_slo_ms": slo,
        "modes": modes,
        "host_pools": pools,
        "host_threads": threads,
        "best": best,
        "best_gain_over_off": None if best is None or not off else best["output_throughput"] / off - 1,
    }


def _table(rows: list[dict]) -> list[str]:
    lines = [f"{'':<28} {'tok/s':>8} {'req/s':>7} {'p50 TPOT':>9} {'p99 TPOT':>9} {'p99 E2E s':>9}"]
    for r in rows:
        lines.append(
            f"{r['name']:<28} {r['output_throughput']:>8.1f} {r['request_throughput']:>7.2f} "
            f"{r['median_tpot_ms']:>9.1f} {r['p99_tpot_ms']:>9.1f} {r['p99_e2el_ms'] / 1000:>9.1f}"
        )
    return lines


def format_plan(outcome: dict) -> str:
    lines = [f"plan: {outcome['deployment']} (TPOT target: {outcome['tpot_slo_ms'] or 'none'} ms)"]
    for title in ("modes", "host_pools", "host_threads"):
        lines += ["", title.replace("_", " ") + ":"] + _table(outcome[title])
    best = outcome["best"]
    if best is None:
        lines.append("\nno neo setting meets the TPOT target")
    else:
        gain = outcome["best_gain_over_off"]
        lines.append(
            f"\nbest: host pool {best['host_kv_tokens']} tokens, {best['host_threads']} kernel threads: "
            f"{best['output_throughput']:.1f} tok/s" + ("" if gain is None else f" ({gain:+.0%} over device-only)")
        )
    return "\n".join(lines)


def plot_plan(outcome: dict, path) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(14, 4), constrained_layout=True)
    modes = outcome["modes"]
    axes[0].bar([r["name"] for r in modes], [r["output_throughput"] for r in modes], color=["grey", "tab:blue", "tab:orange"])
    axes[0].set_ylabel("output tokens/s")
    axes[0].set_title("offload mode")
    for axis, key, xkey, xlabel in (
        (axes[1], "host_pools", "host_kv_tokens", "host pool (tokens)"),
        (axes[2], "host_threads", "host_threads", "kernel threads"),
    ):
        rows = outcome[key]
        axis.plot([r[xkey] for r in rows], [r["output_throughput"] for r in rows], "o-", label="neo")
        axis.axhline(modes[0]["output_throughput"], color="grey", linestyle="--", label="device only")
        axis.set_xlabel(xlabel)
        axis.set_ylabel("output tokens/s")
        axis.legend(fontsize="small")
        axis.grid(True, alpha=0.3)
    fig.suptitle(outcome["deployment"])
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return str(path)
