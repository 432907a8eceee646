"""vLLM's `prefix_repetition` workload: `num_prefixes` shared prefixes of `prefix_len` tokens,
each prompt one of them (in turn, then shuffled with the seed) followed by `suffix_len` tokens
of its own; outputs of `output_len` tokens. What prefix caching feeds on: system prompts, tool
lists, few-shot examples sent again and again."""

from __future__ import annotations

import numpy as np

from loadgen.datasets.select import DatasetOptions, capped
from loadgen.workload import RequestSpec

DEFAULT_NUM_PROMPTS = 1000


def load(path, options: DatasetOptions, count_tokens=None) -> list[RequestSpec]:
    n = options.num_prompts or DEFAULT_NUM_PROMPTS
    groups = np.random.default_rng(options.seed).permutation(np.arange(n) % options.num_prefixes)
    return [
        capped(RequestSpec(options.prefix_len + options.suffix_len, options.output_len, prefix_id=int(g), prefix_len=options.prefix_len), options)
        for g in groups
    ]
