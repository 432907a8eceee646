import random

import pytest

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
    with pytest.raises(AssertionError, match="owned by"):
        pool.check()
