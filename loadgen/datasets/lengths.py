"""Length lists: a JSON array of `{"prompt": int, "max_tokens": int}` (optional `"timestamp"`, s).

The paper's summarisation lengths (osc_lengths_llama2.json) come in this form.
"""

from __future__ import annotations

import json
from pathlib import Path

from loadgen.datasets.select import DatasetOptions, select_rows
from loadgen.workload import RequestSpec


def read_lengths(path: str | Path) -> list[RequestSpec]:
    with open(path) as f:
        rows = json.load(f)
    if not isinstance(rows, list):
        raise ValueError(f"{path}: expected a JSON array of {{prompt, max_tokens}}")
    specs = []
    for i, row in enumerate(rows):
        try:
            prompt_len, output_len = int(row["prompt"]), int(row["max_tokens"])
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"{path}: row {i} is not {{prompt: int, max_tokens: int}}: {row!r}") from e
        timestamp = row.get("timestamp")
        specs.append(
            RequestSpec(max(1, prompt_len), max(1, output_len), None if timestamp is None else float(timestamp))
        )
    return specs


def load(path: str | Path, options: DatasetOptions, count_tokens=None) -> list[RequestSpec]:
    return select_rows(read_lengths(path), options, "lengths")
