"""Result files (summary JSON + per-request JSON Lines) and the printed table."""

from __future__ import annotations

import json
import math
from datetime import datetime
from pathlib import Path

from loadgen.metrics import LATENCY_METRICS, itls_s, percentile_key
from loadgen.records import RequestRecord, write_jsonl

TITLES = {
    "ttft": "Time to First Token",
    "tpot": "Time per Output Token (excl. 1st token)",
    "itl": "Inter-token Latency",
    "e2el": "End-to-end Latency",
    "e2el_per_token": "End-to-end Latency per Output Token",
}
SHORT = {"ttft": "TTFT", "tpot": "TPOT", "itl": "ITL", "e2el": "E2EL", "e2el_per_token": "E2EL/token"}


def rate_label(request_rate: float | str) -> str:
    if isinstance(request_rate, str):
        return request_rate
    return "inf" if math.isinf(request_rate) else f"{request_rate:g}"


def json_rate(request_rate: float | str) -> float | str:
    """JSON has no infinity: inf is written as "inf"."""
    return "inf" if isinstance(request_rate, float) and math.isinf(request_rate) else request_rate


def default_stem(
    label: str, request_rate: float | str, max_concurrency: int | None, model_id: str, now: datetime
) -> str:
    """`{label}-{rate}qps[-concurrency{n}]-{model}-{YYYYmmdd-HHMMSS}`, as vLLM names results."""
    rate = rate_label(request_rate)
    parts = [label, rate if isinstance(request_rate, str) and rate != "inf" else f"{rate}qps"]
    if max_concurrency is not None:
        parts.append(f"concurrency{max_concurrency}")
    parts += [Path(model_id).name or "model", now.strftime("%Y%m%d-%H%M%S")]
    return "-".join(parts)


def detailed_arrays(records: list[RequestRecord]) -> dict:
    """vLLM's per-request arrays (seconds), for tools that read them from the result file."""
    done = [r for r in records if r.success]
    return {
        "input_lens": [r.prompt_len for r in done],
        "output_lens": [r.num_output_tokens for r in done],
        "ttfts": [r.ttft_s or 0.0 for r in done],
        "itls": [itls_s(r) for r in done],
        "generated_texts": [r.generated_text for r in done],
        "errors": [r.error for r in records if r.error],
    }


def save(result: dict, records: list[RequestRecord], result_dir: str | Path, filename: str) -> tuple[Path, Path]:
    """Writes `filename` (summary JSON) and the records beside it with a .jsonl suffix."""
    directory = Path(result_dir)
    directory.mkdir(parents=True, exist_ok=True)
    summary_path = directory / filename
    records_path = summary_path.with_suffix(".jsonl")
    summary_path.write_text(json.dumps(result, indent=2) + "\n")
    write_jsonl(records, records_path)
    return summary_path, records_path


def format_table(result: dict, percentiles: tuple[float, ...]) -> str:
    width = 50
    rows: list[str] = ["{s:{c}^{n}}".format(s=" Serving Benchmark Result ", n=width, c="=")]

    def row(name: str, value, fmt: str = "<10.2f") -> None:
        rows.append(f"{name:<40} {value:{fmt}}")

    row("Successful requests:", result["completed"], "<10")
    row("Failed requests:", result["failed"], "<10")
    if result.get("num_unsent"):
        row("Requests not sent:", result["num_unsent"], "<10")
    if result.get("num_reconnects"):
        row("Reconnects (server closed keep-alive):", result["num_reconnects"], "<10")
    row("Benchmark duration (s):", result["duration"])
    row("Total input tokens:", result["total_input_tokens"], "<10")
    row("Total generated tokens:", result["total_output_tokens"], "<10")
    row("Request throughput (req/s):", result["request_throughput"])
    if "goodput" in result:
        row("Request goodput (req/s):", result["goodput"])
    row("Output token throughput (tok/s):", result["output_throughput"])
    row("Total token throughput (tok/s):", result["total_token_throughput"])
    for metric in LATENCY_METRICS:
        rows.append("{s:{c}^{n}}".format(s=TITLES[metric], n=width, c="-"))
        row(f"Mean {SHORT[metric]} (ms):", result[f"mean_{metric}_ms"])
        row(f"Median {SHORT[metric]} (ms):", result[f"median_{metric}_ms"])
        for p in percentiles:
            if p == 50:
                continue  # the median row
            key = percentile_key(p)
            row(f"{key.upper()} {SHORT[metric]} (ms):", result[f"{key}_{metric}_ms"])
    if result.get("errors"):
        rows.append("{s:{c}^{n}}".format(s="Errors", n=width, c="-"))
        for text, count in result["errors"].items():
            rows.append(f"{count:>6}  {text[:120]}")
    rows.append("=" * width)
    return "\n".join(rows)
