"""PNG plots of the tables: per table, the measured grid points, the table's interpolated line
through them, and the held-out points (measured vs the table's value there); and the probe
steps, measured vs predicted."""

from __future__ import annotations

from pathlib import Path

from neo_async.profile.heldout import Check
from neo_async.sched.costs import Table1D, Table2D

AXIS_LABELS = {
    "linear_sequential": ("tokens", None),
    "linear_pipelined": ("tokens", None),
    "device_decode_sequential": ("requests", "KV tokens per request"),
    "device_decode_pipelined": ("requests", "KV tokens per request"),
    "host_decode_sequential": ("requests", "KV tokens per request"),
    "host_decode_pipelined": ("requests", "KV tokens per request"),
    "swap_blocks": ("blocks", None),
    "iteration_sampled": ("sampled rows", None),
    "iteration_prefill_tokens": ("prefill tokens", None),
    "prefill": ("chunk tokens", "cached prefix tokens"),
}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _dense(lo: float, hi: float, n: int = 64) -> list[float]:
    if lo <= 0:
        return [lo + (hi - lo) * i / (n - 1) for i in range(n)]
    return [lo * (hi / lo) ** (i / (n - 1)) for i in range(n)]


def plot_table(name: str, table: Table1D | Table2D, checks: list[Check], path: Path) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    x_label, y_label = AXIS_LABELS.get(name, ("x", "y"))
    if isinstance(table, Table1D):
        xs = _dense(min(table.xs), max(table.xs))
        ax.plot(xs, [table(x) * 1e3 for x in xs], "-", color="C0", label="table (interpolated)")
        ax.plot(table.xs, [y * 1e3 for y in table.ys], "o", color="C0", label="measured (grid)")
        ax.set_xlabel(x_label)
        held = [(c.point[0], c) for c in checks]
    else:
        # one line per grid row; x axis = the table's second axis
        for i, x in enumerate(table.xs):
            ys = _dense(min(table.ys), max(table.ys)) if min(table.ys) > 0 else _dense(0, max(table.ys))
            ax.plot(ys, [table(x, y) * 1e3 for y in ys], "-", color=f"C{i % 10}", label=f"{x_label} {x:g}")
            ax.plot(table.ys, [z * 1e3 for z in table.zs[i]], "o", color=f"C{i % 10}")
        ax.set_xlabel(y_label)
        held = [(c.point[1], c) for c in checks]
    if held:
        for x, c in held:
            ax.plot([x, x], [c.measured * 1e3, c.predicted * 1e3], "-", color="0.5", lw=0.8)
        ax.plot([x for x, _ in held], [c.measured * 1e3 for _, c in held], "kx", label="held-out: measured")
        ax.plot([x for x, _ in held], [c.predicted * 1e3 for _, c in held], "o", mfc="none", mec="k",
                label="held-out: table")
        if isinstance(table, Table2D):
            for x, c in held:
                ax.annotate(f"{c.point[0]}", (x, c.measured * 1e3), fontsize=7, xytext=(3, 3), textcoords="offset points")
    _log_axes(ax)
    ax.set_ylabel("ms" + (" per layer" if not name.startswith("iteration") else " per iteration"))
    ax.set_title(name)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_steps(labels: list[str], checks: list[Check], path: Path) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 5))
    measured = [c.measured * 1e3 for c in checks]
    predicted = [c.predicted * 1e3 for c in checks]
    top = max(measured + predicted) * 1.1
    ax.plot([0, top], [0, top], "-", color="0.6", label="predicted = measured")
    ax.plot(measured, predicted, "o")
    for label, m, p in zip(labels, measured, predicted):
        ax.annotate(label, (m, p), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.set_xlabel("measured step (ms)")
    ax.set_ylabel("predicted step (ms)")
    ax.set_title("whole steps: predictor vs measurement")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _log_axes(ax) -> None:
    xs = [x for line in ax.get_lines() for x in line.get_xdata()]
    if xs and min(xs) > 0:
        ax.set_xscale("log")
    else:
        ax.set_xscale("symlog", linthresh=16)
    ax.set_yscale("log")
