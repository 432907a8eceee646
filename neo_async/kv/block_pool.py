"""Block accounting of one paged KV pool, with automatic prefix caching (pure Python: no torch,
no clock).

Every block is in exactly one state:
- free: in `_free`, no reference, no key;
- cached and unused: in `_evictable`, no reference, a key (its K/V are a computed full block that
  a later request may reuse, until the pool needs the block back: least recently freed first);
- used: listed by `refs[block]` >= 1 requests (each lists it once); it may also have a key.

Invariants (checked by `check()`):
- a request's block list holds no duplicates; refs[block] == how many requests list it;
- `_cached` (key -> block) and `_key_of` (block -> key) are inverse maps;
- a block is shared (refs > 1) or cached only when it is full and computed: it is never written
  again (a request writes only after its computed tokens, in blocks only it holds);
- without caching, no block has a key and none is shared;
- num_free (free + cached-unused) + used blocks == num_blocks.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Hashable, Sequence

from neo_async.kv.block_hash import BlockKey, block_keys


class BlockPool:
    def __init__(self, num_blocks: int, block_size: int, name: str = "device", enable_caching: bool = False) -> None:
        if num_blocks < 0 or block_size < 1:
            raise ValueError("num_blocks must be >= 0 and block_size >= 1")
        self.name = name
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.enable_caching = enable_caching
        self._free: deque[int] = deque(range(num_blocks))
        self._owned: dict[str, list[int]] = {}
        self._refs = [0] * num_blocks
        self._cached: dict[BlockKey, int] = {}
        self._key_of: dict[int, BlockKey] = {}
        # cached blocks without a user; insertion order is the logical time they were freed
        self._evictable: OrderedDict[int, None] = OrderedDict()
        # request id -> (full blocks hashed so far, key of the last of them)
        self._committed: dict[str, tuple[int, BlockKey | None]] = {}
        # (key, block) of cached blocks evicted since the last `take_evictions()`
        self._evictions: list[tuple[BlockKey, int]] = []

    @property
    def num_free(self) -> int:
        """Blocks a request can get: free ones and cached ones nobody uses."""
        return len(self._free) + len(self._evictable)

    @property
    def num_used(self) -> int:
        return self.num_blocks - self.num_free

    @property
    def num_cached(self) -> int:
        return len(self._cached)

    def blocks_for_tokens(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    def block_ids(self, request_id: str) -> list[int]:
        """The request's blocks in token order (empty if it holds none). Do not mutate."""
        return self._owned.get(request_id, [])

    def num_blocks_needed(self, request_id: str, num_tokens: int) -> int:
        """Extra blocks the request needs to hold `num_tokens` tokens in total."""
        return max(0, self.blocks_for_tokens(num_tokens) - len(self._owned.get(request_id, ())))

    def can_grow(self, request_id: str, num_tokens: int) -> bool:
        return self.num_blocks_needed(request_id, num_tokens) <= self.num_free

    def grow(self, request_id: str, num_tokens: int) -> list[int]:
        """Make the request hold enough blocks for `num_tokens`; returns the new block ids.

        All-or-nothing: raises MemoryError (and changes nothing) when the pool lacks blocks.
        Free blocks go first; then cached-unused ones are evicted, least recently freed first.
        """
        need = self.num_blocks_needed(request_id, num_tokens)
        if need > self.num_free:
            raise MemoryError(f"{self.name} pool: request {request_id} needs {need} blocks, {self.num_free} free")
        new = [self._allocate() for _ in range(need)]
        self._owned.setdefault(request_id, []).extend(new)
        return new

    def _allocate(self) -> int:
        if self._free:
            block = self._free.popleft()
        else:
            block, _ = self._evictable.popitem(last=False)
            key = self._key_of.pop(block)
            del self._cached[key]
            self._evictions.append((key, block))
        self._refs[block] = 1
        return block

    def free(self, request_id: str) -> int:
        """Drop the request's hold on its blocks; returns how many it held (0 if none). A block
        nobody else holds becomes cached-unused if it has a key, else free; the request's last
        blocks are evicted first."""
        blocks = self._owned.pop(request_id, [])
        self._committed.pop(request_id, None)
        for block in blocks:
            self._refs[block] -= 1
        self._free.extend(b for b in blocks if self._refs[b] == 0 and b not in self._key_of)  # in order, as taken
        for block in reversed(blocks):
            if self._refs[block] == 0 and block in self._key_of:
                self._evictable[block] = None
        return len(blocks)

    def owners(self) -> list[str]:
        return list(self._owned)

    # ---- prefix caching ---------------------------------------------------------------------

    def match(self, token_ids: Sequence[int], max_blocks: int, extra: Hashable = None) -> list[int]:
        """The longest chain of cached blocks holding token_ids' first full blocks (at most
        max_blocks); empty without caching. Changes nothing."""
        if not self.enable_caching or not self._cached:
            return []
        hit = []
        for key in block_keys(token_ids, self.block_size, min(max_blocks, len(token_ids) // self.block_size), extra=extra):
            block = self._cached.get(key)
            if block is None:
                break
            hit.append(block)
        return hit

    def num_blocks_to_hold(self, num_tokens: int, hit: list[int]) -> int:
        """Blocks taken from num_free by a request that reuses `hit` (from `match`) and holds
        `num_tokens`: its new blocks, and the reused blocks that nobody uses now."""
        return self.blocks_for_tokens(num_tokens) - len(hit) + sum(self._refs[b] == 0 for b in hit)

    def take_prefix(self, request_id: str, hit: list[int]) -> None:
        """Make a request that holds no blocks share `hit` (a chain from `match`, just now)."""
        assert request_id not in self._owned, f"{self.name}: {request_id} already holds blocks"
        if not hit:
            return
        for block in hit:
            if self._refs[block] == 0:
                del self._evictable[block]
            self._refs[block] += 1
        self._owned[request_id] = list(hit)
        self._committed[request_id] = (len(hit), self._key_of[hit[-1]])

    def grow_copied(self, request_id: str, keys: Sequence[BlockKey]) -> list[int]:
        """Extend a request that holds exactly its chain of cached blocks (`take_prefix` just now,
        or nothing) by one block per key, the next blocks of that chain, whose K/V the caller
        copies in from the other pool before anything reads or writes them (the Plan's ordering
        contract). Each is cached under its key at once (a key cached already leaves its block
        private). All-or-nothing: raises MemoryError (and changes nothing) when blocks lack.
        Evictions are recorded as by `grow`."""
        blocks = self._owned.get(request_id, [])
        done, _ = self._committed.get(request_id, (0, None))
        if done != len(blocks):
            raise ValueError(f"{self.name}: {request_id} holds blocks past its cached chain")
        if len(keys) > self.num_free:
            raise MemoryError(f"{self.name} pool: request {request_id} needs {len(keys)} blocks, {self.num_free} free")
        if not keys:
            return []
        new = []
        for key in keys:
            block = self._allocate()
            if key not in self._cached:
                self._cached[key] = block
                self._key_of[block] = key
            new.append(block)
        self._owned.setdefault(request_id, []).extend(new)
        self._committed[request_id] = (done + len(keys), keys[-1])
        return new

    def commit(self, request_id: str, token_ids: Sequence[int], num_computed_tokens: int, extra: Hashable = None) -> None:
        """Cache the request's full blocks whose K/V are now computed (its first num_computed_tokens
        of token_ids). A block whose content is already cached under another block stays private."""
        if not self.enable_caching:
            return
        blocks = self._owned.get(request_id)
        if blocks is None:
            return
        done, parent = self._committed.get(request_id, (0, None))
        num_full = min(num_computed_tokens // self.block_size, len(blocks))
        if num_full <= done:
            return
        for index, key in enumerate(block_keys(token_ids, self.block_size, num_full, parent, done, extra), start=done):
            block = blocks[index]
            if key not in self._cached and block not in self._key_of:
                self._cached[key] = block
                self._key_of[block] = key
            parent = key
        self._committed[request_id] = (num_full, parent)

    def cached_key(self, block: int) -> BlockKey | None:
        return self._key_of.get(block)

    def is_private(self, block: int) -> bool:
        """Whether the block may be written: one user and no key."""
        return self._refs[block] == 1 and block not in self._key_of

    def take_evictions(self) -> list[tuple[BlockKey, int]]:
        """(key, block) of the cached blocks evicted since the last call."""
        evicted, self._evictions = self._evictions, []
        return evicted

    def adopt(self, request_id: str, key: BlockKey) -> int | None:
        """A free block (never an evicted one) given to `request_id` and cached under `key`, for a
        copy of that content from the other pool; None when no block is free or the key is cached."""
        if not self.enable_caching or not self._free or key in self._cached:
            return None
        block = self._allocate()
        self._owned.setdefault(request_id, []).append(block)
        self._cached[key] = block
        self._key_of[block] = key
        return block

    def check(self) -> None:
        """Raise AssertionError if any invariant is broken."""
        refs = [0] * self.num_blocks
        for owner, blocks in self._owned.items():
            assert len(set(blocks)) == len(blocks), f"{self.name}: {owner} lists a block twice"
            for block in blocks:
                assert 0 <= block < self.num_blocks, f"{self.name}: block {block} of {owner} out of range"
                refs[block] += 1
        assert refs == self._refs, f"{self.name}: reference counts disagree with the owners"
        seen: set[int] = set()
        for block in self._free:
            assert 0 <= block < self.num_blocks, f"{self.name}: free block {block} out of range"
            assert block not in seen, f"{self.name}: block {block} is twice in the free list"
            assert refs[block] == 0, f"{self.name}: free block {block} owned by a request"
            assert block not in self._key_of, f"{self.name}: free block {block} is cached"
            seen.add(block)
        for block in self._evictable:
            assert block not in seen, f"{self.name}: block {block} both free and cached-unused"
            assert refs[block] == 0 and block in self._key_of, f"{self.name}: evictable block {block} is used or uncached"
            seen.add(block)
        for block, count in enumerate(refs):
            if count:
                assert block not in seen, f"{self.name}: block {block} owned and free"
                seen.add(block)
            if count > 1:
                assert block in self._key_of, f"{self.name}: block {block} shared but not cached"
        assert len(seen) == self.num_blocks, f"{self.name}: {self.num_blocks - len(seen)} blocks leaked"
        assert len(self._cached) == len(self._key_of), f"{self.name}: cache maps disagree"
        for key, block in self._cached.items():
            assert self._key_of.get(block) == key, f"{self.name}: cached block {block} under two keys"
        if not self.enable_caching:
            assert not self._cached and max(refs, default=0) <= 1, f"{self.name}: caching is off but blocks are shared"
