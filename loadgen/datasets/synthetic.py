"""Synthetic lengths, as in the paper: uniform in [len * (1 - ratio), len * (1 + ratio)]."""

from __future__ import annotations

import numpy as np

from loadgen.datasets.select import DatasetOptions, capped
from loadgen.workload import RequestSpec

DEFAULT_NUM_PROMPTS = 1000


def uniform_lengths(length: int, ratio: float, n: int, rng: np.random.Generator) -> np.ndarray:
    """[n] integer lengths, inclusive bounds, never below 1."""
    low = max(1, round(length * (1.0 - ratio)))
    high = max(low, round(length * (1.0 + ratio)))
    return rng.integers(low, high + 1, size=n)


def load(path, options: DatasetOptions, count_tokens=None) -> list[RequestSpec]:
    n = options.num_prompts or DEFAULT_NUM_PROMPTS
    rng = np.random.default_rng(options.seed)
    input_lens = uniform_lengths(options.input_len, options.range_ratio, n, rng)
    output_lens = uniform_lengths(options.output_len, options.range_ratio, n, rng)
    return [capped(RequestSpec(int(i), int(o)), options) for i, o in zip(input_lens, output_lens, strict=True)]
