"""Azure LLM inference trace CSV: `TIMESTAMP,ContextTokens,GeneratedTokens`.

TIMESTAMP is a wall-clock time with up to 7 fractional digits (2023-11-16 18:17:03.9799600);
times are returned in seconds after the earliest row.
"""

from __future__ import annotations

import csv
from datetime import datetime, timedelta
from pathlib import Path

from loadgen.datasets.select import DatasetOptions, select_rows
from loadgen.workload import RequestSpec

COLUMNS = ("TIMESTAMP", "ContextTokens", "GeneratedTokens")
EPOCH = datetime(1970, 1, 1)


def parse_timestamp_ns(text: str) -> int:
    """Nanoseconds since the epoch (naive time read as UTC), exact to the trace's digits."""
    whole, _, fraction = text.strip().partition(".")
    moment = datetime.fromisoformat(whole).replace(tzinfo=None)
    seconds = (moment - EPOCH) // timedelta(seconds=1)
    return seconds * 1_000_000_000 + int((fraction + "000000000")[:9])


def read_azure(path: str | Path) -> list[RequestSpec]:
    """Every row, in file order. Rows with zero tokens on either side are kept at length 1."""
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        missing = [c for c in COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"{path}: not an Azure trace, missing columns {missing}")
        raw = [(parse_timestamp_ns(r["TIMESTAMP"]), int(r["ContextTokens"]), int(r["GeneratedTokens"])) for r in reader]
    if not raw:
        return []
    t0 = min(t for t, _, _ in raw)
    return [RequestSpec(max(1, p), max(1, o), timestamp_s=(t - t0) / 1e9) for t, p, o in raw]


def load(path: str | Path, options: DatasetOptions, count_tokens=None) -> list[RequestSpec]:
    return select_rows(read_azure(path), options, "azure")
