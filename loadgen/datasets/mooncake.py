"""Mooncake trace JSONL: one `{"timestamp": ms, "input_length", "output_length", "hash_ids"}` a line.

hash_ids name the prompt's blocks (512 tokens each in the published traces): requests that
share a leading hash share that prefix, which is what prefix caching feeds on. The prompt
builder turns each hash into the same block of tokens every time.
"""

from __future__ import annotations

import json
from pathlib import Path

from loadgen.datasets.select import DatasetOptions, select_rows
from loadgen.workload import RequestSpec


def read_mooncake(path: str | Path) -> list[RequestSpec]:
    specs = []
    with open(path) as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                spec = RequestSpec(
                    max(1, int(row["input_length"])),
                    max(1, int(row["output_length"])),
                    timestamp_s=float(row["timestamp"]) / 1000.0,
                    hash_ids=tuple(int(h) for h in row.get("hash_ids", ())),
                )
            except (KeyError, TypeError, ValueError) as e:
                raise ValueError(f"{path}:{line_no}: not a Mooncake row: {line.strip()[:200]}") from e
            specs.append(spec)
    if not specs:
        return []
    t0 = min(s.timestamp_s for s in specs)  # type: ignore[type-var]
    return [RequestSpec(s.prompt_len, s.output_len, s.timestamp_s - t0, None, s.hash_ids) for s in specs]  # type: ignore[operator]


def load(path: str | Path, options: DatasetOptions, count_tokens=None) -> list[RequestSpec]:
    return select_rows(read_mooncake(path), options, "mooncake")
