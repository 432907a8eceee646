"""Shared benchmark plumbing: a results table on stdout, the same rows as JSON on disk."""

from __future__ import annotations

import json
import platform
import time
from pathlib import Path
from typing import Any


def machine_info() -> dict[str, Any]:
    import os

    import torch

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu_count": len(os.sched_getaffinity(0)),
        "cuda": torch.cuda.is_available(),
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def print_table(rows: list[dict[str, Any]], columns: list[str]) -> None:
    def cell(v: Any) -> str:
        return f"{v:.3g}" if isinstance(v, float) else str(v)

    widths = {c: max(len(c), *(len(cell(r.get(c, ""))) for r in rows)) for c in columns}
    print("  ".join(c.rjust(widths[c]) for c in columns))
    for r in rows:
        print("  ".join(cell(r.get(c, "")).rjust(widths[c]) for c in columns))


def write_json(path: str | Path | None, payload: dict[str, Any]) -> None:
    if path is None:
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2))
    print(f"wrote {path}")
