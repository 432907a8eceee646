"""The tables and the held-out errors as text (what `neo-async profile` prints)."""

from __future__ import annotations

from typing import Any

from neo_async.profile.plots import AXIS_LABELS
from neo_async.sched.cost_tables import MeasuredCosts
from neo_async.sched.costs import Table1D, Table2D


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.3g}"


def format_table(name: str, table: Table1D | Table2D) -> str:
    x_label, y_label = AXIS_LABELS.get(name, ("x", "y"))
    unit = "ms per iteration" if name.startswith("iteration") else "ms per layer"
    if isinstance(table, Table1D):
        cells = [[x_label, *(f"{x:g}" for x in table.xs)], ["ms", *(_ms(y) for y in table.ys)]]
    else:
        cells = [[f"{x_label} \\ {y_label}", *(f"{y:g}" for y in table.ys)]]
        cells += [[f"{x:g}", *(_ms(z) for z in row)] for x, row in zip(table.xs, table.zs)]
    widths = [max(len(row[j]) for row in cells) for j in range(len(cells[0]))]
    lines = [f"{name} ({unit})"]
    lines += ["  " + "  ".join(c.rjust(w) for c, w in zip(row, widths)) for row in cells]
    return "\n".join(lines)


def format_costs(costs: MeasuredCosts) -> str:
    from neo_async.profile.measure import POINTS

    parts = [format_table(name, getattr(costs, name)) for name in POINTS]
    parts.append(f"layer_overhead: {costs.layer_overhead * 1e6:.1f} us per layer (sequential, device work), "
                 f"{costs.host_layer_overhead * 1e6:.1f} us per layer (sequential, host decode job), "
                 f"{costs.pipelined_layer_overhead * 1e6:.1f} us per layer (pipelined)")
    return "\n\n".join(parts)


def format_errors(tables: dict[str, dict[str, Any]], steps: dict[str, Any] | None) -> str:
    rows = [("table", "held-out", "median err", "p90 err")]
    for name, s in tables.items():
        rows.append((name, str(s["num_points"]), _pct(s["median_error"]), _pct(s["p90_error"])))
    if steps is not None:
        rows.append(("whole steps (predictor)", str(steps["num_points"]), _pct(steps["median_error"]),
                     _pct(steps["p90_error"])))
    widths = [max(len(r[j]) for r in rows) for j in range(4)]
    return "\n".join("  ".join(c.ljust(w) if j == 0 else c.rjust(w) for j, (c, w) in enumerate(zip(r, widths)))
                     for r in rows)


def format_steps(steps: dict[str, Any]) -> str:
    lines = ["step                                              measured ms  predicted ms   error"]
    for p in steps["points"]:
        lines.append(f"{p['label']:<50}{p['measured'] * 1e3:>11.1f}{p['predicted'] * 1e3:>14.1f}{_pct(p['error']):>8}")
    return "\n".join(lines)


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.1f}%"
