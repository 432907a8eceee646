"""Selection shared by every loader: trace window, order, count, length caps."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import structlog

from loadgen.workload import RequestSpec

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class DatasetOptions:
    num_prompts: int | None = None  # None: every row (synthetic: 1000)
    seed: int = 0
    is_shuffled: bool = False  # False: rows in file order (what trace replay needs)
    # synthetic: lengths drawn uniformly from [len * (1 - ratio), len * (1 + ratio)]
    input_len: int = 1024
    output_len: int = 128
    range_ratio: float = 0.0
    # caps, applied after selection (traces are clipped, ShareGPT rows over the cap are skipped)
    max_input_len: int | None = None
    max_output_len: int | None = None
    fixed_output_len: int | None = None  # replaces every row's output length
    # trace window, seconds after the trace's first row
    trace_start_s: float = 0.0
    trace_duration_s: float | None = None
    burstgpt_model: str | None = None  # keep only this model's rows (None: all)
    # prefix_repetition: num_prefixes shared prefixes of prefix_len tokens, each prompt one of
    # them followed by suffix_len unique tokens (vLLM's defaults)
    prefix_len: int = 256
    suffix_len: int = 256
    num_prefixes: int = 10

    def validate(self) -> None:
        if self.num_prompts is not None and self.num_prompts < 1:
            raise ValueError("num_prompts must be >= 1")
        if self.input_len < 1 or self.output_len < 1:
            raise ValueError("input_len and output_len must be >= 1")
        if not 0.0 <= self.range_ratio < 1.0:
            raise ValueError("range_ratio must be in [0, 1)")
        for name in ("max_input_len", "max_output_len", "fixed_output_len"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be >= 1")
        if self.prefix_len < 0 or self.suffix_len < 0 or self.prefix_len + self.suffix_len < 1 or self.num_prefixes < 1:
            raise ValueError("prefix_repetition needs prefix_len, suffix_len >= 0 (not both 0) and num_prefixes >= 1")
        if self.trace_start_s < 0 or (self.trace_duration_s is not None and self.trace_duration_s <= 0):
            raise ValueError("trace window must start at >= 0 and last > 0 seconds")


def in_window(specs: list[RequestSpec], start_s: float, duration_s: float | None) -> list[RequestSpec]:
    """Rows whose timestamp lies in [start_s, start_s + duration_s)."""
    if start_s == 0.0 and duration_s is None:
        return specs
    if any(s.timestamp_s is None for s in specs):
        raise ValueError("a trace window needs a dataset with timestamps")
    end_s = float("inf") if duration_s is None else start_s + duration_s
    return [s for s in specs if start_s <= s.timestamp_s < end_s]  # type: ignore[operator]


def ordered(specs: list[RequestSpec], options: DatasetOptions) -> list[RequestSpec]:
    """File order, or a seeded permutation."""
    if not options.is_shuffled:
        return specs
    order = np.random.default_rng(options.seed).permutation(len(specs))
    return [specs[i] for i in order]


def capped(spec: RequestSpec, options: DatasetOptions) -> RequestSpec:
    prompt_len, output_len = spec.prompt_len, spec.output_len
    if options.fixed_output_len is not None:
        output_len = options.fixed_output_len
    if options.max_input_len is not None:
        prompt_len = min(prompt_len, options.max_input_len)
    if options.max_output_len is not None:
        output_len = min(output_len, options.max_output_len)
    if (prompt_len, output_len) == (spec.prompt_len, spec.output_len):
        return spec
    hash_ids = spec.hash_ids
    return RequestSpec(
        prompt_len, output_len, spec.timestamp_s, spec.prompt_text, hash_ids, spec.prefix_id, min(spec.prefix_len, prompt_len)
    )


def select_rows(specs: list[RequestSpec], options: DatasetOptions, name: str) -> list[RequestSpec]:
    """Window, order, take num_prompts, cap lengths. Fewer rows than asked is logged, not padded."""
    rows = ordered(in_window(specs, options.trace_start_s, options.trace_duration_s), options)
    if options.num_prompts is not None:
        if len(rows) < options.num_prompts:
            log.warning("dataset_short", dataset=name, num_rows=len(rows), num_prompts=options.num_prompts)
        rows = rows[: options.num_prompts]
    if not rows:
        raise ValueError(f"{name}: no rows selected")
    return [capped(s, options) for s in rows]
