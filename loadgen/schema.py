"""The result file's required shape, and a check that a result accounts for every request."""

from __future__ import annotations

import msgspec

from loadgen.metrics import LATENCY_METRICS


class ResultCore(msgspec.Struct, forbid_unknown_fields=False):
    """Keys every result file carries (others are allowed)."""

    date: str
    model_id: str
    endpoint: str
    dataset_name: str
    request_rate: float | str  # a number, or "inf", or "trace"
    num_prompts: int
    num_sent: int
    num_unsent: int
    completed: int
    failed: int
    num_reconnects: int
    duration: float
    total_input_tokens: int
    total_output_tokens: int
    request_throughput: float
    output_throughput: float
    total_token_throughput: float
    errors: dict[str, int]


REQUIRED_STATS = tuple(f"{stat}_{m}_ms" for m in LATENCY_METRICS for stat in ("mean", "median", "p90", "p99"))


def check_result(result: dict) -> list[str]:
    """Problems found (empty when the result validates)."""
    try:
        core = msgspec.convert(result, ResultCore)
    except msgspec.ValidationError as e:
        return [f"shape: {e}"]
    problems = []
    for key in REQUIRED_STATS:
        value = result.get(key)
        if not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0:
            problems.append(f"{key} missing or not a number >= 0")
    if core.completed + core.failed + core.num_unsent != core.num_prompts:
        counts = f"completed {core.completed} + failed {core.failed} + unsent {core.num_unsent}"
        problems.append(f"{counts} != {core.num_prompts} prompts")
    if core.num_sent + core.num_unsent != core.num_prompts:
        problems.append("num_sent + num_unsent != num_prompts")
    if core.duration <= 0:
        problems.append("duration must be > 0")
    if "goodput_slos_ms" in result:
        if not isinstance(result.get("goodput"), (int, float)) or result.get("request_goodput") != result.get(
            "goodput"
        ):
            problems.append("SLOs given but no goodput")
        elif result.get("num_good", -1) > core.completed:
            problems.append("more good requests than completed")
    if sum(core.errors.values()) != core.failed + core.num_unsent:
        problems.append("error counts do not add up to failed + unsent requests")
    return problems
