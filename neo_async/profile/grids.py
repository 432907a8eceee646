"""The points a profile measures: each axis from 1 (or its smallest meaningful value) up to the
engine's own limits, geometric so that small batches (where fixed costs dominate) are dense."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Grids:
    linear_tokens: tuple[int, ...]
    decode_requests: tuple[int, ...]
    decode_lengths: tuple[int, ...]  # KV tokens per request
    prefill_chunks: tuple[int, ...]
    prefill_prefixes: tuple[int, ...]  # cached tokens before the chunk
    swap_blocks: tuple[int, ...]
    sampled_rows: tuple[int, ...]
    prefill_tokens: tuple[int, ...]


def geometric(lo: int, hi: int, factor: int) -> tuple[int, ...]:
    """lo, lo*factor, ... below hi, then hi (increasing, no duplicates)."""
    points = []
    x = lo
    while x < hi:
        points.append(x)
        x *= factor
    points.append(hi)
    return tuple(points)


def make_grids(
    max_num_batched_tokens: int,
    max_num_seqs: int,
    max_model_len: int,
    block_size: int,
    num_swap_blocks: int,
    quick: bool,
) -> Grids:
    """quick: coarser axes (factor 4 instead of 2) and prefill contexts up to 4096 tokens.

    The prefill axes are factor 2 in both modes: its attention grows with chunk x context and
    faster than linearly in the context (the scores outgrow the caches), so a coarser grid
    overprices a chunk between prefixes (512 after 500 cached: read between 256 and 1024) and
    underprices a chunk between chunk sizes; prefix 0 (attention over the chunk's own K/V) and
    a cached prefix (attention over the pool) are different code paths, so the first nonzero
    prefix is small."""
    f = 4 if quick else 2
    max_len = max(max_model_len, block_size + 1)
    decode_lengths = geometric(block_size, max_len, f)
    # context = prefix + chunk stays within max_model_len (quick: 4096) for the largest chunk
    max_prefix = max(1, (min(max_len, 4096) if quick else max_len) - max_num_batched_tokens)
    prefixes = (0,) + geometric(min(64, max_prefix), max_prefix, 2)
    return Grids(
        linear_tokens=geometric(1, max_num_batched_tokens, f),
        decode_requests=_at_least_two(geometric(1, max_num_seqs, f)),
        decode_lengths=_at_least_two(decode_lengths),
        prefill_chunks=_at_least_two(geometric(16, max(max_num_batched_tokens, 17), 2)),
        prefill_prefixes=prefixes,
        swap_blocks=_at_least_two(geometric(1, max(num_swap_blocks, 2), 4 if quick else 2)),
        sampled_rows=geometric(1, max_num_seqs, f),
        prefill_tokens=geometric(16, max(max_num_batched_tokens, 17), 4),
    )


def _at_least_two(axis: tuple[int, ...]) -> tuple[int, ...]:
    """A 2-D table needs two points per axis."""
    return axis if len(axis) >= 2 else (axis[0], axis[0] + 1)
