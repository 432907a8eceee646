"""What a profile borrows, and gives back: free blocks of the pools,
torch's thread budget, and quiet cores (its pools' background population finished)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator


from neo_async.kv.block_pool import BlockPool
from neo_async.platform.host_memory import HUGE_PAGE_BYTES, allocate_host_bytes

SCRATCH_ID = "__profile__"  # the owner of every block a profile borrows; never a request id


@contextlib.contextmanager
def scratch_blocks(pool: BlockPool) -> Iterator[list[int]]:
    """Every free block of the pool, owned by SCRATCH_ID meanwhile (no request can be given one,
    and `pool.check()` still holds), returned on exit. Their contents are garbage afterwards,
    which is fine for free blocks."""
    ids = list(pool.grow(SCRATCH_ID, pool.num_free * pool.block_size))
    try:
        yield ids
    finally:
        pool.free(SCRATCH_ID)


def wait_host_pools_populated(timeout_s: float = 120.0) -> bool:
    """Returns once the background thread has faulted in every host allocation made so far
    (the engine's pools), so that it neither competes for cores during measurements nor leaves
    first-touch faults in them.

    NOTE: the populator serves allocations in turn, so a tiny allocation queued now is
    populated only after all earlier ones: waiting for it waits for them."""
    return allocate_host_bytes(2 * HUGE_PAGE_BYTES).wait_populated(timeout_s)
