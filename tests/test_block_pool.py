import random

import pytest

from neo_async.kv.block_hash import block_key
from neo_async.kv.block_pool import BlockPool


def test_grow_is_all_or_nothing_and_free_returns_every_block():
    pool = BlockPool(num_blocks=5, block_size=16)
    assert pool.grow("a", 33) == [0, 1, 2]  # 33 tokens need 3 blocks
    assert pool.grow("a", 48) == []  # still 3 blocks
    with pytest.raises(MemoryError):
        pool.grow("b", 16 * 3)
    assert pool.num_free == 2 and pool.block_ids("b") == []
    pool.check()
    assert pool.free("a") == 3
    assert pool.num_free == 5
    pool.check()


def test_random_scenarios_keep_the_invariants():
    rng = random.Random(0)
    pool = BlockPool(num_blocks=64, block_size=8)
    lengths: dict[str, int] = {}
    for step in range(2000):
        rid = f"r{rng.randrange(12)}"
        if rng.random() < 0.3:
            pool.free(rid)
            lengths.pop(rid, None)
        else:
            target = lengths.get(rid, 0) + rng.randrange(1, 40)
            if pool.can_grow(rid, target):
                pool.grow(rid, target)
                lengths[rid] = target
        pool.check()
        for r, n in lengths.items():
            assert len(pool.block_ids(r)) == pool.blocks_for_tokens(n)


def test_check_catches_a_double_owned_block():
    pool = BlockPool(num_blocks=4, block_size=16)
    pool.grow("a", 16)
    pool._owned["b"] = [pool.block_ids("a")[0]]  # corrupt on purpose
    with pytest.raises(AssertionError, match="reference counts"):
        pool.check()


# ---- prefix caching ---------------------------------------------------------------------------


def _cached_pool(num_blocks=8, block_size=4) -> BlockPool:
    return BlockPool(num_blocks, block_size, enable_caching=True)


def test_computed_full_blocks_are_reused_by_a_request_with_the_same_prefix():
    pool = _cached_pool()
    tokens = list(range(100, 114))  # 3 full blocks and 2 tokens
    pool.grow("a", len(tokens))
    pool.commit("a", tokens, 10)  # only 2 blocks are full and computed
    assert pool.num_cached == 2
    pool.commit("a", tokens, 14)
    assert pool.num_cached == 3
    hit = pool.match(tokens[:12] + [7, 7], max_blocks=8)
    assert hit == pool.block_ids("a")[:3]
    assert pool.match([1] + tokens[1:], max_blocks=8) == []  # the chain breaks at the first block
    assert pool.match(tokens, max_blocks=2) == hit[:2]
    assert pool.num_blocks_to_hold(14, hit) == 1  # the hit blocks are in use: only the last block is new
    pool.take_prefix("b", hit)
    pool.grow("b", 14)
    pool.check()
    assert pool.num_used == 5 and not pool.is_private(hit[0]) and pool.is_private(pool.block_ids("b")[3])
    pool.free("a")
    pool.free("b")
    pool.check()
    assert pool.num_used == 0 and pool.num_free == 8 and pool.num_cached == 3


def test_cached_unused_blocks_are_evicted_least_recently_freed_first_and_tails_before_heads():
    pool = _cached_pool(num_blocks=4, block_size=2)
    pool.grow("a", 4)
    pool.commit("a", [1, 2, 3, 4], 4)
    pool.grow("b", 4)
    pool.commit("b", [5, 6, 7, 8], 4)
    a_head, a_tail = pool.block_ids("a")
    pool.free("a")
    pool.free("b")
    hit = pool.match([1, 2, 3, 4, 9], 2)
    assert pool.num_blocks_to_hold(5, hit) == 3  # the reused blocks are unused: they count too
    tail_key = pool.cached_key(a_tail)
    assert pool.grow("c", 2) == [a_tail]
    assert pool.take_evictions() == [(tail_key, a_tail)] and pool.take_evictions() == []
    assert pool.match([1, 2, 3, 4, 9], 2) == [a_head]
    assert pool.grow("c", 4) == [a_head]
    pool.check()


def test_a_block_whose_content_is_already_cached_stays_private():
    pool = _cached_pool()
    tokens = [3, 1, 4, 1, 5, 9, 2, 6]
    pool.grow("a", 8)
    pool.grow("b", 8)  # computed the same prefix at the same time, without a hit
    pool.commit("a", tokens, 8)
    pool.commit("b", tokens, 8)
    assert pool.num_cached == 2 and all(pool.is_private(b) for b in pool.block_ids("b"))
    pool.free("b")
    pool.check()
    assert pool.num_free == 6  # b's blocks went back free, not cached


def test_without_caching_nothing_is_cached_or_matched():
    pool = BlockPool(4, 2)
    pool.grow("a", 4)
    pool.commit("a", [1, 2, 3, 4], 4)
    assert pool.num_cached == 0 and pool.match([1, 2, 3, 4, 5], 2) == []
    pool.free("a")
    assert pool.num_free == 4


def test_adopt_takes_only_a_free_block_and_caches_it():
    pool = _cached_pool(num_blocks=2, block_size=2)
    pool.grow("a", 2)
    pool.commit("a", [1, 2], 2)
    key = pool.cached_key(pool.block_ids("a")[0])
    assert pool.adopt("x", key) is None  # already cached
    other = block_key(key, (3, 4))
    block = pool.adopt("x", other)
    assert block is not None and pool.adopt("x", (None, (5, 6), None)) is None  # none free
    pool.free("x")
    pool.check()
    assert pool.match([1, 2, 3, 4, 0], 2) == [pool.block_ids("a")[0], block]


def test_check_catches_a_shared_block_that_is_not_cached():
    pool = _cached_pool()
    pool.grow("a", 4)
    block = pool.block_ids("a")[0]
    pool._owned["b"] = [block]  # corrupt on purpose: a's block is not cached
    pool._refs[block] = 2
    with pytest.raises(AssertionError, match="shared but not cached"):
        pool.check()


def test_random_scenarios_with_caching_keep_the_invariants():
    rng = random.Random(1)
    pool = _cached_pool(num_blocks=24, block_size=4)
    prefixes = [[rng.randrange(50) for _ in range(12)] for _ in range(3)]
    live: dict[str, list[int]] = {}
    for step in range(1500):
        rid = f"r{step}"
        if live and rng.random() < 0.4:
            pool.free(rng.choice(sorted(live)))
            live = {r: t for r, t in live.items() if pool.block_ids(r)}
        else:
            tokens = rng.choice(prefixes)[: rng.randrange(13)] + [rng.randrange(50) for _ in range(rng.randrange(1, 9))]
            hit = pool.match(tokens, (len(tokens) - 1) // 4)
            if pool.num_blocks_to_hold(len(tokens), hit) <= pool.num_free:
                pool.take_prefix(rid, hit)
                pool.grow(rid, len(tokens))
                pool.commit(rid, tokens, len(tokens))
                live[rid] = tokens
        pool.check()
        for r, tokens in live.items():
            assert len(pool.block_ids(r)) == pool.blocks_for_tokens(len(tokens))
    for rid in list(live):
        pool.free(rid)
    pool.check()
    assert pool.num_used == 0


def test_grow_copied_extends_the_cached_chain_and_caches_the_copies_at_once():
    source = BlockPool(8, 2, "host", enable_caching=True)
    source.grow("a", 6)
    source.commit("a", [1, 2, 3, 4, 5, 6], 6)
    keys = [source.cached_key(b) for b in source.block_ids("a")]
    pool = BlockPool(6, 2, enable_caching=True)
    pool.grow("w", 2)
    pool.commit("w", [1, 2], 2)  # the first block is cached here already
    pool.free("w")
    hit = pool.match([1, 2, 3, 4, 5, 6, 7], 3)
    assert len(hit) == 1
    pool.take_prefix("b", hit)
    copies = pool.grow_copied("b", keys[1:])
    assert pool.block_ids("b") == hit + copies and pool.match([1, 2, 3, 4, 5, 6, 7], 3) == hit + copies
    pool.grow("b", 7)  # its own last block, after the copies
    pool.commit("b", [1, 2, 3, 4, 5, 6, 7], 7)  # nothing new to cache: the chain continues past the copies
    pool.check()
    assert pool.is_private(pool.block_ids("b")[-1])
    with pytest.raises(ValueError, match="past its cached chain"):
        pool.grow_copied("b", keys[:1])
    with pytest.raises(MemoryError):
        pool.grow_copied("c", keys * 2)
    pool.check()
