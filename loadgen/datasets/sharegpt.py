"""ShareGPT JSON: `[{"conversations": [{"from", "value"}, ...]}, ...]`.

The first turn is the prompt, the second the reference completion whose token count is
the output length (or `fixed_output_len`). As in `vllm bench serve`, conversations with
fewer than two turns and turns of fewer than 4 tokens are skipped; so are prompts over
`max_input_len` (real text is not truncated).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from loadgen.datasets.select import DatasetOptions, capped, ordered
from loadgen.workload import RequestSpec

MIN_TURN_TOKENS = 4


def read_sharegpt(path: str | Path) -> list[tuple[str, str]]:
    """(prompt, completion) of every conversation with at least two turns, in file order."""
    with open(path) as f:
        rows = json.load(f)
    pairs = []
    for row in rows:
        turns = row.get("conversations") or row.get("conversation") or []
        if len(turns) >= 2:
            pairs.append((str(turns[0]["value"]), str(turns[1]["value"])))
    return pairs


def load(
    path: str | Path, options: DatasetOptions, count_tokens: Callable[[str], int] | None = None
) -> list[RequestSpec]:
    if count_tokens is None:
        raise ValueError("sharegpt needs a tokenizer to measure its prompts")
    wanted = options.num_prompts if options.num_prompts is not None else float("inf")
    specs: list[RequestSpec] = []
    for prompt, completion in ordered(read_sharegpt(path), options):  # type: ignore[arg-type]
        if len(specs) >= wanted:
            break
        prompt_len = count_tokens(prompt)
        output_len = options.fixed_output_len or count_tokens(completion)
        if prompt_len < MIN_TURN_TOKENS or (output_len < MIN_TURN_TOKENS and options.fixed_output_len is None):
            continue
        if options.max_input_len is not None and prompt_len > options.max_input_len:
            continue
        spec = RequestSpec(prompt_len, output_len, prompt_text=prompt)
        specs.append(capped(spec, DatasetOptions(max_output_len=options.max_output_len)))
    if not specs:
        raise ValueError("sharegpt: no rows selected")
    return specs
