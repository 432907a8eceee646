"""Serving metrics from request records, as `vllm bench serve` defines them.

TTFT: send -> first chunk with text. ITL: gaps between successive text chunks (pooled over
requests). TPOT: (E2E - TTFT) / (output tokens - 1), for requests with 2+ output tokens.
E2E (e2el): send -> last chunk. e2el_per_token: E2E / output tokens (the paper's latency).
Throughputs divide by the run's duration. Statistics cover completed requests only; a
statistic with no samples is 0.0, as in vLLM's result files.
"""

from __future__ import annotations

from collections import Counter

import numpy as np

from loadgen.records import RequestRecord
from loadgen.slo import meets_slos

LATENCY_METRICS = ("ttft", "tpot", "itl", "e2el", "e2el_per_token")
DEFAULT_PERCENTILES = (50.0, 90.0, 99.0)
MAX_ERROR_KINDS = 20
OTHER_ERRORS = "(other errors)"


def tpot_s(record: RequestRecord) -> float | None:
    n = record.num_output_tokens
    if record.ttft_s is None or record.e2el_s is None or n < 2:
        return None
    return (record.e2el_s - record.ttft_s) / (n - 1)


def itls_s(record: RequestRecord) -> list[float]:
    times = record.chunk_times_s
    return [b - a for a, b in zip(times[:-1], times[1:], strict=True)]


def e2el_per_token_s(record: RequestRecord) -> float | None:
    if record.e2el_s is None or record.num_output_tokens < 1:
        return None
    return record.e2el_s / record.num_output_tokens


def percentile_key(p: float) -> str:
    return f"p{int(p) if float(p).is_integer() else p}"


def latency_samples_ms(records: list[RequestRecord]) -> dict[str, list[float]]:
    """Metric -> samples in ms over completed requests."""
    samples: dict[str, list[float]] = {m: [] for m in LATENCY_METRICS}
    for r in records:
        if not r.success:
            continue
        per_request = {"ttft": r.ttft_s, "tpot": tpot_s(r), "e2el": r.e2el_s, "e2el_per_token": e2el_per_token_s(r)}
        for name, value in per_request.items():
            if value is not None:
                samples[name].append(value * 1000.0)
        samples["itl"].extend(gap * 1000.0 for gap in itls_s(r))
    return samples


def statistics(name: str, values_ms: list[float], percentiles: tuple[float, ...]) -> dict[str, float]:
    data = np.asarray(values_ms, dtype=np.float64) if values_ms else np.zeros(1)
    stats = {
        f"mean_{name}_ms": float(data.mean()),
        f"median_{name}_ms": float(np.median(data)),
        f"std_{name}_ms": float(data.std()),
    }
    for p in percentiles:
        stats[f"{percentile_key(p)}_{name}_ms"] = float(np.percentile(data, p))
    return stats


def num_good(records: list[RequestRecord], slos: dict[str, float]) -> int:
    count = 0
    for r in records:
        if not r.success:
            continue
        tpot = tpot_s(r)  # None for a single output token: counts as 0, as in vLLM
        values_ms = {
            "ttft": None if r.ttft_s is None else r.ttft_s * 1000.0,
            "tpot": 0.0 if tpot is None else tpot * 1000.0,
            "e2el": None if r.e2el_s is None else r.e2el_s * 1000.0,
        }
        count += meets_slos(slos, values_ms)
    return count


def summarize(
    records: list[RequestRecord],
    duration_s: float,
    percentiles: tuple[float, ...] = DEFAULT_PERCENTILES,
    slos: dict[str, float] | None = None,
) -> dict:
    """The metric half of a result file (the run's settings are added by `report`)."""
    completed = [r for r in records if r.success]
    failed = [r for r in records if r.is_sent and not r.success]
    total_input = sum(r.prompt_len for r in completed)
    total_output = sum(r.num_output_tokens for r in completed)
    duration = max(duration_s, 1e-9)
    summary: dict = {
        "num_prompts": len(records),
        "num_sent": sum(r.is_sent for r in records),
        "num_unsent": sum(not r.is_sent for r in records),
        "completed": len(completed),
        "failed": len(failed),
        "num_reconnects": sum(r.num_reconnects for r in records),
        "duration": duration_s,
        "total_input_tokens": total_input,
        "total_output_tokens": total_output,
        "request_throughput": len(completed) / duration,
        "output_throughput": total_output / duration,
        "total_token_throughput": (total_input + total_output) / duration,
    }
    if slos:
        good = num_good(records, slos)
        summary["goodput_slos_ms"] = dict(slos)
        summary["num_good"] = good
        summary["request_goodput"] = good / duration
        summary["goodput"] = summary["request_goodput"]
    samples = latency_samples_ms(records)
    for name in LATENCY_METRICS:
        summary.update(statistics(name, samples[name], percentiles))
    summary["errors"] = error_counts(records)
    return summary


def error_counts(records: list[RequestRecord]) -> dict[str, int]:
    """Error text -> count, the commonest MAX_ERROR_KINDS kinds; the rest summed under OTHER_ERRORS."""
    counts = Counter(r.error for r in records if r.error)
    top = dict(counts.most_common(MAX_ERROR_KINDS))
    rest = sum(counts.values()) - sum(top.values())
    if rest:
        top[OTHER_ERRORS] = rest
    return top
