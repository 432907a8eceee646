"""Keys of full KV blocks for prefix caching (pure Python).

A block's key names its content: the hash of the previous block's key (None for the first
block), the block's token ids, and `extra`, anything else that changes the K/V (nothing today;
a LoRA id or a cache salt later). Equal keys mean equal K/V: two prompts share a cached block
only when they agree on every token up to its end. The token ids are part of the key itself, so
a lookup compares them exactly; only the parent link is a 64-bit hash.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterator, Sequence

BlockKey = tuple  # (hash of the parent key or None, token ids of the block, extra)


def block_key(parent: BlockKey | None, token_ids: Sequence[int], extra: Hashable = None) -> BlockKey:
    return (None if parent is None else hash(parent), tuple(token_ids), extra)


def block_keys(
    token_ids: Sequence[int], block_size: int, num_blocks: int, parent: BlockKey | None = None, first: int = 0, extra: Hashable = None
) -> Iterator[BlockKey]:
    """Keys of full blocks first .. num_blocks - 1 of `token_ids`, chained from `parent` (the key of
    block first - 1; None when first is 0)."""
    for index in range(first, num_blocks):
        parent = block_key(parent, token_ids[index * block_size : (index + 1) * block_size], extra)
        yield parent
