"""BurstGPT CSV: `Timestamp,Model,Request tokens,Response tokens,Total tokens,Log Type`.

Timestamp is seconds from the trace's start. Rows with zero response tokens are failed
requests in the trace and are skipped (they cannot be replayed as max_tokens=0).
"""

from __future__ import annotations

import csv
from pathlib import Path

from loadgen.datasets.select import DatasetOptions, select_rows
from loadgen.workload import RequestSpec

COLUMNS = ("Timestamp", "Model", "Request tokens", "Response tokens")


def read_burstgpt(path: str | Path, model: str | None = None) -> list[RequestSpec]:
    """Rows with a response, in file order; `model` keeps one model's rows."""
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        missing = [c for c in COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"{path}: not a BurstGPT trace, missing columns {missing}")
        raw = [
            (float(r["Timestamp"]), int(r["Request tokens"]), int(r["Response tokens"]))
            for r in reader
            if model is None or r["Model"] == model
        ]
    raw = [row for row in raw if row[2] > 0]
    if not raw:
        return []
    t0 = min(t for t, _, _ in raw)
    return [RequestSpec(max(1, p), o, timestamp_s=t - t0) for t, p, o in raw]


def load(path: str | Path, options: DatasetOptions, count_tokens=None) -> list[RequestSpec]:
    return select_rows(read_burstgpt(path, options.burstgpt_model), options, "burstgpt")
