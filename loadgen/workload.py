"""`RequestSpec`: one planned request of a workload, before any prompt is built."""

from __future__ import annotations

import msgspec


class RequestSpec(msgspec.Struct, frozen=True):
    """What a workload says about one request.

    Invariants: prompt_len >= 1, output_len >= 1 (output_len is sent as max_tokens).
    """

    prompt_len: int  # tokens the prompt must have
    output_len: int  # tokens to generate (max_tokens)
    timestamp_s: float | None = None  # arrival in the trace, seconds after the trace's first row
    prompt_text: str | None = None  # real prompt text (ShareGPT); None: built to prompt_len
    hash_ids: tuple[int, ...] = ()  # Mooncake block hashes: equal hash, equal block of tokens
    # the prompt's first prefix_len tokens are shared prefix number prefix_id (prefix_repetition)
    prefix_id: int | None = None
    prefix_len: int = 0
