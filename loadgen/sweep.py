"""A sweep: one run per request rate, kept together in one document for plots and tables.

Document: {"label", "model_id", "runs": [result, ...]} with runs in rate order; a single
result file reads as a one-run sweep.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

DETAILED_KEYS = ("input_lens", "output_lens", "ttfts", "itls", "generated_texts")
TABLE_COLUMNS = (  # title, result key, decimals (None: as is)
    ("rate", "request_rate", None),
    ("done", "completed", None),
    ("failed", "failed", None),
    ("req/s", "request_throughput", 2),
    ("tok/s", "output_throughput", 1),
    ("p50 TPOT", "median_tpot_ms", 1),
    ("p99 TPOT", "p99_tpot_ms", 1),
    ("p50 E2E", "median_e2el_ms", 0),
    ("p99 E2E", "p99_e2el_ms", 0),
    ("E2E/tok", "mean_e2el_per_token_ms", 1),
)


def rate_value(result: dict) -> float:
    """A run's x coordinate: its request rate, or its achieved throughput when it replayed a trace."""
    rate = result.get("request_rate")
    if isinstance(rate, (int, float)):
        return float(rate)
    if rate == "inf":
        return math.inf
    return float(result["request_throughput"])


def sweep_document(label: str, model_id: str, results: list[dict]) -> dict:
    runs = [{k: v for k, v in r.items() if k not in DETAILED_KEYS} for r in results]
    return {"label": label, "model_id": model_id, "runs": sorted(runs, key=rate_value)}


def load_sweep(path: str | Path) -> dict:
    document = json.loads(Path(path).read_text())
    if "runs" in document:
        return document
    return sweep_document(document.get("label", Path(path).stem), document.get("model_id", ""), [document])


def save_sweep(document: dict, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=2) + "\n")
    return path


def format_sweep_table(document: dict) -> str:
    width = 9
    lines = [f"sweep: {document['label']} ({document['model_id']})"]
    lines.append(" ".join(f"{title:>{width}}" for title, _, _ in TABLE_COLUMNS))
    for run in document["runs"]:
        cells = []
        for _, key, decimals in TABLE_COLUMNS:
            value = run.get(key, "")
            text = str(value) if decimals is None or isinstance(value, str) else f"{value:.{decimals}f}"
            cells.append(f"{text:>{width}}")
        lines.append(" ".join(cells))
    return "\n".join(lines)
