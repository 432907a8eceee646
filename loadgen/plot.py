"""The load-latency curve (the paper's Figure 6c style): latency against request rate.

Three panels: mean E2E latency per output token (the paper's measure), TPOT (p50 solid,
p99 dashed) and E2E latency (p50, p99); one colour per system, so sweeps compare on one
figure.
matplotlib is imported here only, and only when a plot is drawn.
"""

from __future__ import annotations

import math
from pathlib import Path

from loadgen.sweep import rate_value

PANELS = (
    ("mean E2E latency / output token (ms)", (("mean_e2el_per_token_ms", "-", "mean"),)),
    ("TPOT (ms)", (("median_tpot_ms", "-", "p50"), ("p99_tpot_ms", "--", "p99"))),
    ("E2E latency (s)", (("median_e2el_ms", "-", "p50"), ("p99_e2el_ms", "--", "p99"))),
)


def finite_points(document: dict, key: str) -> tuple[list[float], list[float]]:
    """(rates, values) of runs with a finite rate, in rate order."""
    points = sorted((rate_value(r), r[key]) for r in document["runs"] if key in r and math.isfinite(rate_value(r)))
    return [x for x, _ in points], [y for _, y in points]


def plot_load_latency(documents: list[dict], path: str | Path, title: str | None = None) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(PANELS), figsize=(5 * len(PANELS), 4), constrained_layout=True)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for index, document in enumerate(documents):
        colour = colours[index % len(colours)]
        for axis, (ylabel, series) in zip(axes, PANELS, strict=True):
            for key, style, stat in series:
                xs, ys = finite_points(document, key)
                if "e2el_ms" in key:
                    ys = [y / 1000.0 for y in ys]
                axis.plot(xs, ys, style, marker="o", color=colour, label=f"{document['label']} {stat}")
            axis.set_xlabel("request rate (req/s)")
            axis.set_ylabel(ylabel)
            axis.grid(True, alpha=0.3)
    for axis in axes:
        axis.legend(fontsize="small")
    fig.suptitle(title or " vs ".join(d["label"] for d in documents))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
