"""Block accounting of one paged KV pool (pure Python: no torch, no clock).

Invariants (checked by `check()`):
- every block id in [0, num_blocks) is either free or owned by exactly one request;
- a request's block list holds no duplicates, and it owns exactly the blocks it lists;
- num_free + sum(len(owned)) == num_blocks.
"""

from __future__ import annotations

from collections import deque


class BlockPool:
    def __init__(self, num_blocks: int, block_size: int, name: str = "device") -> None:
        if num_blocks < 0 or block_size < 1:
            raise ValueError("num_blocks must be >= 0 and block_size >= 1")
        self.name = name
        self.num_blocks = num_blocks
        self.block_size = block_size
        self._free: deque[int] = deque(range(num_blocks))
        self._owned: dict[str, list[int]] = {}

    @property
    def num_free(self) -> int:
        return len(self._free)

    @property
    def num_used(self) -> int:
        return self.num_blocks - len(self._free)

    def blocks_for_tokens(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    def block_ids(self, request_id: str) -> list[int]:
        """The request's blocks in token order (empty if it holds none). Do not mutate."""
        return self._owned.get(request_id, [])

    def num_blocks_needed(self, request_id: str, num_tokens: int) -> int:
        """Extra blocks the request needs to hold `num_tokens` tokens in total."""
        return max(0, self.blocks_for_tokens(num_tokens) - len(self._owned.get(request_id, ())))

    def can_grow(self, request_id: str, num_tokens: int) -> bool:
        return self.num_blocks_needed(request_id, num_tokens) <= len(self._free)

    def grow(self, request_id: str, num_tokens: int) -> list[int]:
        """Make the request hold enough blocks for `num_tokens`; returns the new block ids.

        All-or-nothing: raises MemoryError (and changes nothing) when the pool lacks blocks.
        """
        need = self.num_blocks_needed(request_id, num_tokens)
        if need > len(self._free):
            raise MemoryError(f"{self.name} pool: request {request_id} needs {need} blocks, {len(self._free)} free")
        new = [self._free.popleft() for _ in range(need)]
        self._owned.setdefault(request_id, []).extend(new)
        return new

    def free(self, request_id: str) -> int:
        """Return all of the request's blocks to the pool; returns how many (0 if none)."""
        blocks = self._owned.pop(request_id, [])
        self._free.extend(blocks)
        return len(blocks)

    def owners(self) -> list[str]:
        return list(self._owned)

    def check(self) -> None:
        """Raise AssertionError if any invariant is broken."""
        seen: dict[int, str] = {}
        for block in self._free:
            assert 0 <= block < self.num_blocks, f"{self.name}: free block {block} out of range"
            assert block not in seen, f"{self.name}: block {block} is twice in the free list"
            seen[block] = "<free>"
        for owner, blocks in self._owned.items():
            for block in blocks:
                assert 0 <= block < self.num_blocks, f"{self.name}: block {block} of {owner} out of range"
                assert block not in seen, f"{self.name}: block {block} owned by {owner} and {seen[block]}"
                seen[block] = owner
        assert len(seen) == self.num_blocks, f"{self.name}: {self.num_blocks - len(seen)} blocks leaked"
